"""Problem 3: the straight-through gradient, the subspace tracker, parameter counts, the script and its benchmark."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import p1_svd
import p3_svd_ste as p3
from common.cli import UserError
from common.goals import TARGETS
from common.mnist.mlp import MLP, classification_loss
from common.precision import autocast
from common.train import load_checkpoint, n_params, train_or_reuse
from p1_svd import compress, cost, svd
from conftest import low_rank, read_json, run_main

TRACKER_BOUND = TARGETS["p3.tracking_error_ratio_max"][1]  # 1.01: within 1% of the optimal rank-r error


def orthonormal(n, k, gen):
    return torch.linalg.qr(torch.randn(n, k, dtype=torch.float64, generator=gen))[0]


def with_spectrum(S, out, gen):
    """A random (out, len(S)) matrix with singular values S."""
    return orthonormal(out, len(S), gen) @ torch.diag(S) @ orthonormal(len(S), len(S), gen).T


def error_ratio(tracker, W):
    """||W - W_hat||_F over the optimal rank-r error, the norm of the dropped singular values (1.0 = optimal)."""
    W_hat = (tracker.U * tracker.S) @ tracker.Vh
    return (torch.linalg.norm(W - W_hat) / svd(W)[1][tracker.rank:].norm()).item()


# ----------------------------------------------------------------------------- the straight-through gradient

@pytest.mark.parametrize("rank", [1, 3, 5])  # below full rank (6), where the projection is not the identity
def test_ste_gradient_is_that_of_a_linear_layer_with_weight_w_hat(rank):
    gen = torch.Generator().manual_seed(rank)
    W, b = torch.randn(8, 6, dtype=torch.float64, generator=gen), torch.randn(8, dtype=torch.float64, generator=gen)
    x = torch.randn(5, 6, dtype=torch.float64, generator=gen)
    probe = torch.randn(5, 8, dtype=torch.float64, generator=gen)  # a loss with a non-trivial dL/dy

    layer = p3.SVDSTELinear(W, b, rank, oversample=2, refresh_every=1).train()  # exact SVD at every step
    x1 = x.clone().requires_grad_()
    (layer(x1) * probe).sum().backward()

    W_hat = low_rank(*svd(W), rank).requires_grad_()  # the oracle: a plain linear layer with weight W_hat
    b2, x2 = b.clone().requires_grad_(), x.clone().requires_grad_()
    y = F.linear(x2, W_hat, b2)
    (y * probe).sum().backward()

    torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, W_hat.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, b2.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)

    # not the true derivative of the projection: autograd through torch.linalg.svd gives something else
    W3 = W.clone().requires_grad_()
    (F.linear(x, low_rank(*svd(W3), rank), b) * probe).sum().backward()
    assert not torch.allclose(W3.grad, W_hat.grad, atol=1e-3)


def test_ste_function_alone():
    gen = torch.Generator().manual_seed(0)
    W, b, x = (torch.randn(*s, dtype=torch.float64, generator=gen) for s in [(7, 4), (7,), (3, 4)])
    U, S, Vh = svd(W)
    U, S, Vh = U[:, :2], S[:2], Vh[:2]
    W.requires_grad_()
    torch.autograd.gradcheck(lambda x_, b_: p3.LowRankSTE.apply(x_, W, U, S, Vh, b_),
                             (x.requires_grad_(), b.requires_grad_()))  # exact in x and b
    g = torch.randn(3, 7, dtype=torch.float64, generator=gen)
    (W_grad,) = torch.autograd.grad(p3.LowRankSTE.apply(x, W, U, S, Vh, b), W, g)
    torch.testing.assert_close(W_grad, g.T @ x, rtol=1e-14, atol=1e-14)


def test_ste_function_with_bf16_inputs_or_gradient():
    """Activations of a bf16 forward pass meet fp32 factors; autograd brings a bf16 gradient back outside autocast.
    Either way each gradient comes back in its input's dtype, W's fp32, and equals the fp32 formulas up to bf16."""
    gen = torch.Generator().manual_seed(3)
    W, b = torch.randn(16, 12, generator=gen), torch.randn(16, generator=gen)
    U, S, Vh = (t[..., :4] if i == 0 else t[:4] for i, t in enumerate(svd(W)))
    x = torch.randn(5, 12, generator=gen)
    g = torch.randn(5, 16, generator=gen)
    W_hat = (U * S) @ Vh

    def grads(x_in, g_in):
        x_in, W_in, b_in = x_in.clone().requires_grad_(), W.clone().requires_grad_(), b.clone().requires_grad_()
        y = p3.LowRankSTE.apply(x_in, W_in, U, S, Vh, b_in)
        y.backward(g_in.to(y.dtype))
        return y, x_in.grad, W_in.grad, b_in.grad

    y, gx, gW, gb = grads(x.bfloat16(), g)  # bf16 activations, no autocast: computed in fp32
    assert (y.dtype, gx.dtype, gW.dtype, gb.dtype) == (torch.float32, torch.bfloat16, torch.float32, torch.float32)
    torch.testing.assert_close(gW, g.T @ x.bfloat16().float())
    with autocast("bf16", "cpu"):  # the forward pass in bf16: so is the gradient autograd brings back
        y, gx, gW, gb = grads(x, g)
    assert (y.dtype, gx.dtype, gW.dtype, gb.dtype) == (torch.bfloat16, torch.float32, torch.float32, torch.float32)
    torch.testing.assert_close(y.float(), x @ W_hat.T + b, rtol=0.05, atol=0.1)
    torch.testing.assert_close(gW, g.T @ x, rtol=0.05, atol=0.1)           # straight through to W, in fp32
    torch.testing.assert_close(gx, g @ W_hat, rtol=0.05, atol=0.1)
    torch.testing.assert_close(gb, g.sum(0), rtol=0.05, atol=0.1)


def test_tracker_computes_in_fp32_inside_bf16_autocast():
    """The subspace iteration and the exact refresh inside a bf16 forward pass give exactly what they give outside."""
    gen = torch.Generator().manual_seed(4)
    W = torch.randn(16, 12, generator=gen)
    steps = [W + 0.05 * torch.randn(16, 12, generator=gen) for _ in range(3)]
    plain, under_bf16 = (p3.SubspaceTracker(W, 4, oversample=2, refresh_every=3) for _ in range(2))
    for Wi in steps:  # two subspace iterations, then a refresh
        plain.update(Wi)
        with autocast("bf16", "cpu"):
            under_bf16.update(Wi)
        for name, t in plain.state_dict().items():
            assert torch.equal(t, under_bf16.state_dict()[name]), name


def test_two_bf16_training_steps_of_the_ste_network(tmp_path):
    """Under bf16 autocast the forward pass runs in bf16, but the tracker's subspace iteration and SVD stay fp32
    (a QR or SVD of bf16 fails) and the weights, their tracker and the optimizer stay fp32."""
    torch.manual_seed(0)
    baseline = MLP(width=16, depth=2, n_in=12)
    net = p3.ste_network(baseline, rank=4, oversample=2, refresh_every=2)  # step 2 refreshes: the exact SVD too
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(16, 12, generator=g), torch.randint(0, 10, (16,), generator=g))
    losses = []

    def loss_fn(model, batch):
        losses.append(classification_loss(model, batch))
        return losses[-1]

    before = [layer.weight.detach().clone() for layer in net.hidden]
    train_or_reuse(net, loss_fn, data, validate=None, monitor=None, warmup=0, epochs=1, batch_size=8, lr=1e-2,
                   weight_decay=0.0, seed=0, ckpt_path=tmp_path / "c.pt", config={}, precision="bf16", quiet=True)
    assert len(losses) == 2 and all(torch.isfinite(loss) for loss in losses)
    assert all(t.dtype == torch.float32 for t in net.state_dict().values() if t.is_floating_point())
    for layer, W in zip(net.hidden, before):
        assert not torch.equal(layer.weight, W) and int(layer.tracker.updates) == 2
        Q = layer.tracker.Q  # orthonormal to fp32 precision (bf16 would be off by about 1e-2)
        torch.testing.assert_close(Q.T @ Q, torch.eye(Q.shape[1]), rtol=0, atol=1e-5)


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


def test_the_ste_network_trains_under_bf16_by_its_own_path(tmp_path):
    """P3's own path (train) forced to --precision bf16 (emulated where the CPU lacks bf16: tiny shapes, two steps,
    the second an exact refresh): finite losses, fp32 weights that moved from the baseline's, fp32 trackers."""
    data = tiny_mnist()
    tiny_baseline(tmp_path, data)
    args, train = p3.get_args(["--rank", "4", "--oversample", "2", "--refresh-every", "2", "--epochs", "1",
                               "--batch-size", "16", "--precision", "bf16", "--ckpt-dir", str(tmp_path), "--quiet"])
    model, history, baseline, _ = p3.train(0, data, args, train.values(args), torch.device("cpu"))
    assert len(history) == 1 and torch.isfinite(torch.tensor([history[0]["train_loss"], history[0]["val_loss"]])).all()
    assert load_checkpoint(tmp_path / "p3_ste_seed0.pt")["config"]["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())
    for layer, dense in zip(model.hidden, baseline.hidden):
        assert not torch.equal(layer.weight, dense.weight) and int(layer.tracker.updates) == 2


# ----------------------------------------------------------------------------- the subspace tracker

def test_tracker_stays_within_one_percent_of_optimal_and_refresh_restores_it():
    gen = torch.Generator().manual_seed(0)
    out, n_in, rank = 120, 100, 20
    S = torch.cat([torch.linspace(10, 5, rank), torch.linspace(2, 0.1, n_in - rank)]).double()  # a gap at 20
    W = with_spectrum(S, out, gen)
    tracker = p3.SubspaceTracker(W, rank, oversample=10, refresh_every=0)  # no refresh: the iteration alone
    assert error_ratio(tracker, W) == pytest.approx(1.0, abs=1e-12)  # it starts from the exact SVD
    for _ in range(200):  # random small steps; together they move W by about 10%
        W = W + 2e-3 * torch.randn(out, n_in, dtype=torch.float64, generator=gen)
        tracker.update(W)
        assert error_ratio(tracker, W) <= TRACKER_BOUND

    jumped = with_spectrum(S, out, gen)  # a large jump: a new matrix, unrelated singular vectors
    tracker.update(jumped)
    assert error_ratio(tracker, jumped) > TRACKER_BOUND  # one iteration cannot follow that ...
    tracker.refresh(jumped)
    assert error_ratio(tracker, jumped) == pytest.approx(1.0, abs=1e-12)  # ... an exact refresh can


def test_periodic_refresh_and_no_op_update():
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(30, 20, dtype=torch.float64, generator=gen)
    tracker = p3.SubspaceTracker(W, 4, oversample=3, refresh_every=3)
    exact = svd(W)
    for _ in range(2):  # W does not change: the subspace iteration keeps the exact answer
        tracker.update(W)
        torch.testing.assert_close((tracker.U * tracker.S) @ tracker.Vh, low_rank(*exact, 4), rtol=1e-10, atol=1e-10)
    jumped = torch.randn(30, 20, dtype=torch.float64, generator=gen)
    tracker.update(jumped)  # the 3rd update is an exact SVD
    torch.testing.assert_close(tracker.S, svd(jumped)[1][:4], rtol=1e-12, atol=1e-12)
    assert int(tracker.updates) == 3


def test_tracker_state_survives_a_checkpoint():
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(40, 30, dtype=torch.float64, generator=gen)
    a = p3.SubspaceTracker(W, 5, oversample=5, refresh_every=4)
    steps = [W + 0.1 * torch.randn(40, 30, dtype=torch.float64, generator=gen) for _ in range(6)]
    for Wi in steps[:3]:
        a.update(Wi)
    b = p3.SubspaceTracker(torch.randn(40, 30, dtype=torch.float64, generator=gen), 5, oversample=5, refresh_every=4)
    b.load_state_dict(a.state_dict())  # what fit's checkpoint and --resume do
    for Wi in steps[3:]:
        a.update(Wi)
        b.update(Wi)
    for name, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[name]), name


# ----------------------------------------------------------------------------- the network and the script

def test_rank_network_parameter_count_and_logits():
    model = MLP(width=64)  # P1's tests check cost at the homework's width
    net, factors = p3.rank_network(model, 20)
    assert n_params(net, buffers=True) == cost(model, 20)[0]

    torch.manual_seed(0)
    small = MLP(width=16, depth=3).double()
    ste = p3.ste_network(small, rank=4, oversample=2, refresh_every=0).double().eval()
    x = torch.rand(8, 784, dtype=torch.float64)
    reference = compress(small, [svd(layer.weight.detach()) for layer in small.hidden], 4).double()
    torch.testing.assert_close(ste(x), reference(x), rtol=1e-10, atol=1e-10)  # the forward pass is rank 4
    torch.testing.assert_close(p3.dense_network(ste).double()(x), small(x), rtol=1e-12, atol=1e-12)


def test_tracking_errors_of_an_exact_tracker():
    torch.manual_seed(0)
    small = MLP(width=16, depth=3).double()
    ste = p3.ste_network(small, rank=4, oversample=3, refresh_every=0).double()
    with torch.no_grad():
        ste.hidden[1].weight.add_(1.0 * torch.randn_like(ste.hidden[1].weight))  # a jump the tracker has not seen
    ratios, distances = p3.tracking_errors(ste, p3.rank_network(ste, 4)[1])
    assert ratios[0] == pytest.approx(1.0, abs=1e-10) and distances[0] == pytest.approx(0.0, abs=1e-10)
    assert ratios[1] > 1.0 + 1e-6 and distances[1] > 1e-3  # after a jump one iteration is not exact


def test_dry_run(dry_p1, dry_p3):
    out, ckpt = dry_p3
    metrics = read_json(out / "metrics.json")
    assert metrics["dry_run"] is True and metrics["params"] == cost(MLP(width=64), 20)[0]
    for name in ("finetune_curve.png", "tracking_error.png", "singular_values.png", "config.json"):
        assert (out / name).stat().st_size > 0
    run = metrics["seeds"][0]
    # it starts from P1's rank-20 network, built the same way from the same baseline
    assert run["initial_test_acc"] == read_json(dry_p1[0] / "metrics.json")["seeds"][0]["rank_test_acc"]["20"]
    assert metrics["tracking_error_ratio_max"] <= TRACKER_BOUND and metrics["tracking_distance_max"] < 0.5
    assert metrics["goals"]["tracking_error_ratio_max"]["met"] and "tracking_error_ratio_max" not in metrics["required"]
    # the flags that define the run are in its checkpoint's config and in config.json
    config = load_checkpoint(ckpt / "p3_ste_seed0.pt")["config"]
    flags = {k: v for k, v in config.items() if k not in ("seed", "train_size", "baseline")}
    assert set(flags) == set(p3.DEFAULTS) | {"precision"} and flags["precision"] == metrics["machine"]["precision"]
    assert flags == {k: read_json(out / "config.json")[k] for k in flags}


def test_defaults_are_the_flags_defaults():
    args, _ = p3.get_args([])
    assert {k: getattr(args, k) for k in p3.DEFAULTS} == p3.DEFAULTS


def test_bad_input(tmp_path, capsys):
    with pytest.raises(UserError, match="p1_svd.py"):
        p3.main(["--dry-run", "--quiet", "--out", str(tmp_path / "o"), "--ckpt-dir", str(tmp_path / "empty")])
    code, err = run_main(p3.main, ["--dry-run", "--rank", "900", "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and "--rank" in err, err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_benchmark_dry_run(dry_bench_p3):
    result = read_json(dry_bench_p3 / "benchmark.json")  # its checkpoint folder holds no P3 run: from the baseline
    assert list(result["methods"]) == ["plain", "exact", "lowrank", "tracker", "no_oversampling"]
    assert result["methods"]["plain"]["ratio_to_plain"] == 1.0 and result["check_starts_from"] == "baseline"
    assert result["methods"]["exact"]["error_ratio_max"] == pytest.approx(1.0, abs=1e-4)  # float32 rounding
    assert result["methods"]["tracker"]["error_ratio_max"] <= TRACKER_BOUND
    assert "P3, subspace tracker" in (dry_bench_p3.parent / "stdout.txt").read_text()
