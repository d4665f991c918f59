"""The real scripts on the full MNIST data, at fewer epochs than the full run, against real accuracy bars.

Marked slow (minutes on 2 cores): `make test-slow` runs them, `make test` does not. Each trains from scratch in a
temporary folder, never reusing checkpoints/. The bars sit below what these settings reached when measured (in the
comments) and above what a broken network, SVD, gradient or drawing loop would give.
"""
import pytest

from common.goals import TARGETS
from conftest import read_json, run_script

pytestmark = pytest.mark.slow


def run(script, *args):
    proc = run_script(script, "--quiet", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def p1(tmp_path_factory):
    """P1 with one seed and 3 epochs: (metrics, checkpoint folder)."""
    base = tmp_path_factory.mktemp("p1_slow")
    run("p1_svd.py", "--seeds", "1", "--epochs", "3", "--out", base / "out", "--ckpt-dir", base / "ckpt")
    return read_json(base / "out" / "metrics.json"), base / "ckpt"


def test_p1_baseline_and_rank_d_networks(p1):
    metrics, _ = p1
    base = metrics["baseline_test_acc"]["mean"]
    acc = {d: row["test_acc"]["mean"] for d, row in metrics["ranks"].items() if d != "dense"}
    assert base >= 0.97
    # full rank is the trained baseline itself: at most 3 of 10,000 test images change (float32 rounding)
    assert abs(acc["full"] - base) <= 3e-4
    assert acc["200"] >= base - 0.003  # rank 200 keeps the accuracy ...
    assert acc["10"] < acc["50"] - 0.02  # ... rank 10 does not
    assert metrics["ranks"]["20"]["params"] == 215_470


def test_p2_fine_tuning_recovers_rank_20_accuracy(p1, tmp_path):
    _, ckpt = p1
    run("p2_factorized.py", "--seeds", "1", "--epochs", "1", "--out", tmp_path / "out", "--ckpt-dir", ckpt)
    run_ = read_json(tmp_path / "out" / "metrics.json")["seeds"][0]
    assert run_["test_acc"] >= run_["initial_test_acc"] + 0.003  # one epoch helps
    assert run_["test_acc"] >= 0.96
    # and it keeps what the SVD initialisation gave: no warm-up to a peak that undoes it
    assert run_["history"][0]["val_acc"] >= run_["initial_val_acc"] - 0.003


def test_p3_straight_through_training(p1, tmp_path):
    _, ckpt = p1
    run("p3_svd_ste.py", "--seeds", "1", "--epochs", "1", "--out", tmp_path / "out", "--ckpt-dir", ckpt)
    metrics = read_json(tmp_path / "out" / "metrics.json")
    run_ = metrics["seeds"][0]
    # the tracker stays within 1% of the exact rank-20 SVD
    assert metrics["tracking_error_ratio_max"] <= TARGETS["p3.tracking_error_ratio_max"][1]
    assert run_["test_acc"] >= run_["initial_test_acc"] + 0.003
    assert run_["test_acc"] >= 0.96


def test_p5_drawers_draw_better_than_the_references(p1, tmp_path):
    _, ckpt = p1
    run("p5_draw.py", "--epochs", "3", "--sampler-epochs", "1", "--out", tmp_path / "out", "--ckpt-dir", ckpt)
    m = read_json(tmp_path / "out" / "metrics.json")
    assert m["teacher_forced_mse"]["test"] <= 0.035
    test = m["drawing"]["test"]
    assert test["mse"]["bottom_mse"] < min(test["nearest_neighbour"]["bottom_mse"], test["mean_bottom"]["bottom_mse"])
    assert test["mse"]["class_kept"] >= 0.85
    # the closest of 10 samples beats the single average completion
    assert test["sampler"]["best_of_k_bottom_mse"] < test["mse"]["bottom_mse"]
