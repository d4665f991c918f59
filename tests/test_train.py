"""The shared training loop: exact resume after SIGKILL and SIGINT, non-finite loss, checkpoint safety,
and train-or-reuse. (Each problem's own training path under bf16 is tested in that problem's test file.)"""
import pytest
import torch
from torch.utils.data import TensorDataset

import tiny_fit
from common.cli import UserError
from common.train import load_checkpoint, save_checkpoint, train_or_reuse
from conftest import run_main, run_script


class Payload:
    """An arbitrary Python object: unpickling it could run code, so weights_only loading must refuse it."""


def final(path):
    return torch.load(path, weights_only=True)


def assert_same_run(a, b):
    assert a["history"] == b["history"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # bit for bit


def fit_in_process(ckpt, out, *args, capsys=None):
    """tiny_fit in this process (everything but SIGKILL can be): (exit code, stderr)."""
    return run_main(tiny_fit.main, [ckpt, out, *args], capsys)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain")
    tiny_fit.main([str(folder / "ckpt.pt"), str(folder / "out.pt")])
    return final(folder / "out.pt")


@pytest.mark.parametrize("kill_at", ["3:0", "4:5"])  # at an epoch boundary and mid-epoch
def test_resume_after_sigkill_is_bit_exact(uninterrupted, tmp_path, capsys, kill_at):
    ckpt, out = tmp_path / "ckpt.pt", tmp_path / "out.pt"
    proc = run_script("tests/tiny_fit.py", ckpt, out, "--kill-at", kill_at)
    assert proc.returncode == -9 and not out.exists()
    assert load_checkpoint(ckpt)["epoch"] == int(kill_at[0]) - 1  # the last finished epoch survived
    assert fit_in_process(ckpt, out, "--resume", capsys=capsys)[0] == 0
    assert_same_run(final(out), uninterrupted)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_saves_mid_epoch_and_resume_is_bit_exact(uninterrupted, tmp_path, capsys, sig):
    ckpt, out = tmp_path / "ckpt.pt", tmp_path / "out.pt"
    code, err = fit_in_process(ckpt, out, "--kill-at", "2:4", "--signal", sig, capsys=capsys)
    assert code == 130 and err.count("\n") == 1 and "--resume" in err, err
    state = load_checkpoint(ckpt)
    assert (state["epoch"], state["step"]) == (1, 5)  # it finished the step it was in, then saved
    assert fit_in_process(ckpt, out, "--resume", capsys=capsys)[0] == 0
    assert_same_run(final(out), uninterrupted)


def test_non_finite_loss_stops_clearly_and_keeps_last_good_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    code, err = fit_in_process(ckpt, tmp_path / "out.pt", "--nan-at-epoch", "3", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "loss became nan" in err and "epoch 3" in err, err
    assert load_checkpoint(ckpt)["epoch"] == 2
    # resuming it with another config names both
    code, err = fit_in_process(ckpt, tmp_path / "out.pt", "--resume", "--lr", "0.1", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "lr=0.003" in err and "lr=0.1" in err, err


def test_checkpoints_are_atomic_and_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, model={"w": torch.ones(2)}, config={"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    assert load_checkpoint(path, config={"a": 1})["model"]["w"].sum() == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "pickled_object", "empty"])
def test_damaged_checkpoint_gives_one_line_error(tmp_path, damage):
    path = tmp_path / "c.pt"
    save_checkpoint(path, model={"w": torch.ones(1000)})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 10)
    elif damage == "pickled_object":  # weights_only=True must refuse arbitrary objects
        torch.save({"model": {}, "payload": Payload()}, path)
    else:
        path.write_bytes(b"")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_train_or_reuse_reuses_only_a_finished_run_with_the_same_config(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 4, generator=g), torch.randint(0, 2, (64,), generator=g))
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    def run(config, warmup):
        calls.clear()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        history = train_or_reuse(model, loss_fn, data, validate=lambda m: {"val_loss": loss_fn(m, data.tensors).item()},
                                 monitor="val_loss", mode="min", warmup=warmup, epochs=3, batch_size=16, lr=0.05,
                                 weight_decay=0.01, seed=0, ckpt_path=tmp_path / "c.pt", config=config, quiet=True)
        return model, history, len(calls)

    model, history, steps = run({"a": 1}, warmup=0.25)
    assert steps == 3 * 4 + 3 and len(history) == 3 and not model.training  # 4 batches an epoch, 1 validation
    capsys.readouterr()
    again, reused, steps = run({"a": 1}, warmup=0.25)
    assert steps == 0 and reused == history and "reusing the finished run" in capsys.readouterr().out
    # it holds the best epoch's weights: its validation loss is the lowest in the history
    assert loss_fn(again, data.tensors).item() == min(h["val_loss"] for h in history)
    _, retrained, steps = run({"a": 2}, warmup=0.0)  # another config: trained, not reused
    assert steps == 3 * 4 + 3 and load_checkpoint(tmp_path / "c.pt")["config"] == {"a": 2}
    assert [h["train_loss"] for h in retrained] != [h["train_loss"] for h in history]  # the other schedule
