"""Problem 2: the factorized layer, P2 at initialisation == P1 at rank D, parameter counts, the script itself."""
import pytest
import torch

import p1_svd
import p2_factorized as p2
from common.cli import UserError
from common.mnist.mlp import MLP, classification_loss
from common.train import load_checkpoint, n_params
from p1_svd import compress, cost, svd
from conftest import AUTO_PRECISION, copy_checkpoints, low_rank, read_json, run_main


def tiny_mlp(seed=0, width=24, depth=3):
    torch.manual_seed(seed)
    return MLP(width=width, depth=depth).double().eval()


def test_factorized_layer_is_the_rank_d_truncation_with_s_folded_into_v():
    W = torch.randn(9, 7, dtype=torch.float64)
    b = torch.randn(9, dtype=torch.float64)
    U, S, Vh = svd(W)
    layer = p2.FactorizedLinear.from_svd(U, S, Vh, b, rank=3)
    x = torch.randn(5, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ low_rank(U, S, Vh, 3).T + b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.U @ layer.V.T, low_rank(U, S, Vh, 3), rtol=1e-12, atol=1e-12)
    # the defect to avoid: dropping S gives a different layer
    assert not torch.allclose(layer.U @ Vh[:3], layer.U @ layer.V.T)


@pytest.mark.parametrize("rank", [1, 5, 20])
def test_initial_network_has_p1_rank_d_logits(rank):
    model = tiny_mlp()
    factors = [svd(layer.weight.detach()) for layer in model.hidden]
    x = torch.rand(64, 784, dtype=torch.float64)
    p2_logits = p2.factorize(model, factors, rank).double().eval()(x)
    p1_logits = compress(model, factors, rank).double()(x)
    torch.testing.assert_close(p2_logits, p1_logits, rtol=1e-10, atol=1e-10)


def test_homework_parameter_counts():
    model = MLP()  # 784 -> 5 x 1024 -> 10; counting needs the shapes only, not a real SVD
    factors = [(torch.zeros(layer.out_features, 20), torch.zeros(20), torch.zeros(20, layer.in_features))
               for layer in model.hidden]
    net = p2.factorize(model, factors, 20)
    assert n_params(net, buffers=True) == 215_370
    assert n_params(net, buffers=True) + 5 * 20 == cost(model, 20)[0]  # P1 stores S apart: 20 more per layer


def test_fine_tuning_reaches_every_factor_bias_and_the_head():
    model = tiny_mlp()
    net = p2.factorize(model, [svd(layer.weight.detach()) for layer in model.hidden], 4).double().train()
    x, y = torch.rand(16, 784, dtype=torch.float64), torch.randint(0, 10, (16,))
    classification_loss(net, (x, y)).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert {n.split(".")[-1] for n, _ in net.hidden.named_parameters()} == {"U", "V", "bias"}


def tiny_mnist(n=32, seed=0):
    """MNIST-shaped random digits, n per split: enough for two steps of batch 16."""
    g = torch.Generator().manual_seed(seed)
    return {split: (torch.rand(n, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
            for split in ("train", "val", "test")}


def tiny_baseline(ckpt_dir, data):
    """A P1 baseline of 16-unit layers, trained in fp32 for one epoch by P1's own path into `ckpt_dir`."""
    args, train = p1_svd.get_args(["--width", "16", "--epochs", "1", "--batch-size", "16", "--precision", "fp32",
                                   "--ckpt-dir", str(ckpt_dir), "--quiet"])
    p1_svd.train_baseline(0, data, train.values(args), args, torch.device("cpu"))


def test_fine_tuning_trains_under_bf16_with_fp32_master_weights(tmp_path):
    """P2's own path (finetune) forced to --precision bf16 (emulated where the CPU lacks bf16: tiny shapes, two
    steps): finite losses, fp32 factors and optimizer state that moved from P1's rank-D network."""
    data = tiny_mnist()
    tiny_baseline(tmp_path, data)
    args, train = p2.get_args(["--rank", "4", "--epochs", "1", "--batch-size", "16", "--precision", "bf16",
                               "--ckpt-dir", str(tmp_path), "--quiet"])
    model, history, initial, _ = p2.finetune(0, data, args, train.values(args), torch.device("cpu"))
    assert len(history) == 1 and torch.isfinite(torch.tensor([history[0]["train_loss"], history[0]["val_loss"]])).all()
    ckpt = load_checkpoint(tmp_path / "p2_factorized_seed0.pt")
    assert ckpt["config"]["precision"] == "bf16"
    start = initial.state_dict()
    for name, t in model.state_dict().items():
        assert t.dtype == torch.float32 and torch.isfinite(t).all(), name
        assert not torch.equal(t, start[name]), name  # every factor, bias and the head moved
    assert all(v.dtype == torch.float32 for s in ckpt["optimizer"]["state"].values() for k, v in s.items()
               if k != "step")


def test_dry_run(dry_p1, dry_p2, tmp_path, capsys):
    out, ckpt = dry_p2
    metrics = read_json(out / "metrics.json")
    baseline = MLP(width=read_json(dry_p1[0] / "metrics.json")["width"])
    factorized = p2.factorize(baseline, [svd(layer.weight.detach()) for layer in baseline.hidden], 20)
    assert metrics["dry_run"] is True and metrics["params"] == n_params(factorized)
    assert metrics["params_p1"] == cost(baseline, 20)[0] and metrics["machine"]["precision"] == AUTO_PRECISION
    for name in ("finetune_curve.png", "config.json"):
        assert (out / name).stat().st_size > 0
    run = metrics["seeds"][0]
    # before fine-tuning it is P1's rank-20 network (float32: the two factorizations may round differently)
    p1_rank_20 = read_json(dry_p1[0] / "metrics.json")["seeds"][0]["rank_test_acc"]["20"]
    assert abs(run["initial_test_acc"] - p1_rank_20) <= 2e-3
    # the flags that define the fine-tune are in its checkpoint's config and in config.json
    config = load_checkpoint(ckpt / "p2_factorized_seed0.pt")["config"]
    flags = {k: v for k, v in config.items() if k not in ("seed", "train_size", "baseline")}
    assert set(flags) == {"rank", "epochs", "batch_size", "lr", "warmup", "weight_decay", "dropout", "shift",
                          "precision"}
    assert flags == {k: read_json(out / "config.json")[k] for k in flags} and flags["precision"] == AUTO_PRECISION

    # same seed, same numbers: a fresh run in another folder retrains to the same history ...
    other = copy_checkpoints(ckpt, tmp_path / "ckpt", "p1_baseline_seed0.pt")
    args = ["--dry-run", "--quiet", "--seeds", "1", "--out", str(tmp_path / "out"), "--ckpt-dir", str(other)]
    p2.main(args)
    again = read_json(tmp_path / "out" / "metrics.json")["seeds"][0]
    untimed = [[{k: v for k, v in h.items() if k != "train_seconds"} for h in r["history"]] for r in (again, run)]
    assert untimed[0] == untimed[1] and again["test_acc"] == run["test_acc"]
    # ... and a re-run with the same config reuses the finished checkpoint instead of training
    capsys.readouterr()
    p2.main(args)
    assert "reusing the finished run" in capsys.readouterr().out
    assert read_json(tmp_path / "out" / "metrics.json")["seeds"][0]["test_acc"] == run["test_acc"]


def test_missing_baseline_and_bad_rank(tmp_path, capsys):
    with pytest.raises(UserError, match="p1_svd.py"):
        p2.main(["--dry-run", "--quiet", "--out", str(tmp_path / "o"), "--ckpt-dir", str(tmp_path / "empty")])
    code, err = run_main(p2.main, ["--dry-run", "--rank", "900", "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and "--rank" in err, err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_a_replaced_baseline_makes_p2_refuse_its_old_fine_tune(dry_p2, tmp_path, capsys):
    """P2's config pins its baseline's: after P1 is retrained with other flags (--overwrite), P2 does not build on
    the new baseline silently with its old fine-tune, nor replace that without --overwrite."""
    ckpt = copy_checkpoints(dry_p2[1], tmp_path / "ckpt")  # P1's baseline and P2's fine-tune
    p1_svd.main(["--dry-run", "--quiet", "--seeds", "1", "--lr", "0.001", "--overwrite", "--out", str(tmp_path / "p1"),
                 "--ckpt-dir", str(ckpt)])
    argv = ["--dry-run", "--quiet", "--seeds", "1", "--out", tmp_path / "p2", "--ckpt-dir", ckpt]
    code, err = run_main(p2.main, argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "p2_factorized_seed0.pt holds a finished run with other settings: " \
        "baseline=" in err and "--overwrite" in err, err
