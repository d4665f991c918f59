"""The shared training loop: exact resume after SIGKILL, SIGINT and SIGTERM (in a step or a validation), non-finite
loss, checkpoint safety (a stop while loading, a FIFO, never replaced silently), and train-or-reuse. (Each problem's
own training path under bf16 is tested in that problem's test file.)"""
import os
import signal
import stat

import pytest
import torch
from torch.utils.data import TensorDataset

import tiny_fit
from common.cli import UserError
from common.train import load_checkpoint, prior_run, save_checkpoint, train_or_reuse
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


@pytest.mark.parametrize("kill_at", ["3:0", pytest.param("4:5", marks=pytest.mark.slow)])  # at an epoch boundary, mid-epoch
def test_resume_after_sigkill_is_bit_exact(uninterrupted, tmp_path, capsys, kill_at):
    ckpt, out = tmp_path / "ckpt.pt", tmp_path / "out.pt"
    proc = run_script("tests/tiny_fit.py", ckpt, out, "--kill-at", kill_at)
    assert proc.returncode == -9 and not out.exists()
    assert load_checkpoint(ckpt)["epoch"] == int(kill_at[0]) - 1  # the last finished epoch survived
    assert fit_in_process(ckpt, out, "--resume", capsys=capsys)[0] == 0
    assert_same_run(final(out), uninterrupted)


@pytest.mark.parametrize("sig, exit_code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_saves_mid_epoch_and_resume_is_bit_exact(uninterrupted, tmp_path, capsys, sig, exit_code):
    ckpt, out = tmp_path / "ckpt.pt", tmp_path / "out.pt"
    code, err = fit_in_process(ckpt, out, "--kill-at", "2:4", "--signal", sig, capsys=capsys)
    assert code == exit_code and err.count("\n") == 1 and f"{sig} at epoch 2 step 5" in err and "--resume" in err, err
    state = load_checkpoint(ckpt)
    assert (state["epoch"], state["step"]) == (1, 5)  # it finished the step it was in, then saved
    assert fit_in_process(ckpt, out, "--resume", capsys=capsys)[0] == 0
    assert_same_run(final(out), uninterrupted)


@pytest.mark.parametrize("epoch", [3, 6])  # in the middle, and in the last epoch (the run is then finished)
def test_sigterm_during_validation_stops_the_job_after_saving_that_epoch(uninterrupted, tmp_path, capsys, epoch):
    ckpt, out = tmp_path / "ckpt.pt", tmp_path / "out.pt"
    code, err = fit_in_process(ckpt, out, "--kill-in-validation", str(epoch), "--signal", "SIGTERM", capsys=capsys)
    assert code == 143 and err.count("\n") == 1 and f"SIGTERM after epoch {epoch}" in err and "--resume" in err, err
    assert not out.exists()  # the job stopped: nothing after fit ran
    state = load_checkpoint(ckpt)
    assert (state["epoch"], state["step"], state["done"]) == (epoch, 0, epoch == 6)
    assert fit_in_process(ckpt, out, "--resume", capsys=capsys)[0] == 0
    assert_same_run(final(out), uninterrupted)


def test_a_stop_while_a_checkpoint_loads_is_a_stop_not_a_bad_file(tmp_path, capsys, monkeypatch):
    """The stop's own message and code, never "delete it": the file is good."""
    save_checkpoint(tmp_path / "c.pt", model={"w": torch.ones(3)})
    load = torch.load

    def interrupted_load(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C would, in the middle of the load
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", interrupted_load)
    code, err = run_main(lambda argv: load_checkpoint(tmp_path / "c.pt"), [], capsys)
    assert code == 130 and err == "error: stopped by SIGINT; nothing half-written was left behind\n", err
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "c.pt")["model"]["w"].sum() == 3


def test_a_fifo_or_a_folder_at_a_checkpoint_path_is_one_line_never_a_hang(tmp_path):
    os.mkfifo(tmp_path / "fifo.pt")
    (tmp_path / "folder.pt").mkdir()
    for name, kind in (("fifo.pt", "a FIFO"), ("folder.pt", "a folder")):
        for check in (lambda path: load_checkpoint(path), lambda path: prior_run(path, {})):
            with pytest.raises(UserError, match=f"{name} is {kind}, not a file"):
                check(tmp_path / name)


def test_a_trained_model_is_never_replaced_silently(tmp_path):
    """A checkpoint of other settings, or an unfinished one without --resume, is refused with the ways on; a
    read-only one is never replaced, not even with --overwrite."""
    path = tmp_path / "c.pt"
    save_checkpoint(path, config={"lr": 1}, model={}, done=True)
    assert prior_run(path, {"lr": 1})[0] == "reuse" and prior_run(path, {"lr": 1}, overwrite=True)[0] == "train"
    with pytest.raises(UserError, match=r"holds a finished run with other settings: lr=1 but this run asks for "
                                        r"lr=2; pass --overwrite to replace it"):
        prior_run(path, {"lr": 2}, resume=True)
    save_checkpoint(path, config={"lr": 1}, model={}, done=False, epoch=2)
    with pytest.raises(UserError, match=r"unfinished \(2 epochs done\) run of these settings; continue it with "
                                        r"--resume, or start it over with --overwrite"):
        prior_run(path, {"lr": 1})
    assert prior_run(path, {"lr": 1}, resume=True)[0] == "resume"
    before = path.read_bytes()
    path.chmod(0o444)
    with pytest.raises(UserError, match="read-only, so it is kept: use another --ckpt-dir"):
        prior_run(path, {"lr": 2})
    for flags in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(UserError, match="read-only"):
            prior_run(path, {"lr": 1}, **flags)
    with pytest.raises(UserError, match="is read-only, and it is never replaced"):
        save_checkpoint(path, model={})
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o444


def test_non_finite_loss_before_any_checkpoint_says_there_is_none(tmp_path, capsys):
    code, err = fit_in_process(tmp_path / "ckpt.pt", tmp_path / "out.pt", "--nan-at-epoch", "1", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "no checkpoint was written" in err and "kept" not in err, err
    assert not (tmp_path / "ckpt.pt").exists()


def test_non_finite_loss_stops_clearly_and_keeps_last_good_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    code, err = fit_in_process(ckpt, tmp_path / "out.pt", "--nan-at-epoch", "3", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "loss became nan" in err and "epoch 3" in err, err
    assert f"the last good checkpoint is kept: {ckpt}" in err and load_checkpoint(ckpt)["epoch"] == 2
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

    def run(config, warmup, overwrite=False):
        calls.clear()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        history = train_or_reuse(model, loss_fn, data, validate=lambda m: {"val_loss": loss_fn(m, data.tensors).item()},
                                 monitor="val_loss", mode="min", warmup=warmup, epochs=3, batch_size=16, lr=0.05,
                                 weight_decay=0.01, seed=0, ckpt_path=tmp_path / "c.pt", config=config,
                                 overwrite=overwrite, quiet=True)
        return model, history, len(calls)

    model, history, steps = run({"a": 1}, warmup=0.25)
    assert steps == 3 * 4 + 3 and len(history) == 3 and not model.training  # 4 batches an epoch, 1 validation
    capsys.readouterr()
    again, reused, steps = run({"a": 1}, warmup=0.25)
    assert steps == 0 and reused == history and "reusing the finished run" in capsys.readouterr().out
    # it holds the best epoch's weights: its validation loss is the lowest in the history
    assert loss_fn(again, data.tensors).item() == min(h["val_loss"] for h in history)
    # another config: refused (the finished model is kept), or with overwrite trained and replaced
    before = (tmp_path / "c.pt").read_bytes()
    with pytest.raises(UserError, match="finished run with other settings: a=1 but this run asks for a=2; pass "
                                        "--overwrite"):
        run({"a": 2}, warmup=0.0)
    assert not calls and (tmp_path / "c.pt").read_bytes() == before
    _, retrained, steps = run({"a": 2}, warmup=0.0, overwrite=True)
    assert steps == 3 * 4 + 3 and load_checkpoint(tmp_path / "c.pt")["config"] == {"a": 2}
    assert [h["train_loss"] for h in retrained] != [h["train_loss"] for h in history]  # the other schedule
