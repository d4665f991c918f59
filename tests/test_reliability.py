"""Bad input to the scripts gets one line and exit 2 (every size flag bounded, only devices that exist, checkpoints
that are not what they claim, outputs that are folders); the data step; torchrun matches one process."""
import argparse
import shutil
import subprocess
import sys

import pytest
import torch

import p2_factorized
import p3_svd_ste
import p4_denoise
import p5_draw
from benchmarks import p3_svd_step, p4_realtime, rank_forward, train_step
from common import cli
from common.cli import UserError
from common.mnist.data import DATA_DIR, MNIST_FILES, MNIST_MIRROR, fetch_mnist, read_idx
from common.mnist.mlp import MLP, baseline_path, load_baseline
from common.files import save_json
from common.train import load_checkpoint, save_checkpoint
import p1_svd
from conftest import ROOT, UNPRIVILEGED, needs_setpriv, read_json, run_main, run_script

SCRIPTS = [p1_svd, p2_factorized, p3_svd_ste, p4_denoise, p5_draw, rank_forward, p4_realtime, p3_svd_step, train_step]

def test_data_step_copies_from_the_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for f in MNIST_FILES:
        shutil.copy(MNIST_MIRROR / f, mirror / f)
    mnist = fetch_mnist(root=tmp_path / "data", mirror=mirror)
    assert [tuple(t.shape) for t in mnist["train"] + mnist["test"]] == [(60_000, 28, 28), (60_000,), (10_000, 28, 28),
                                                                        (10_000,)]
    assert all((tmp_path / "data" / "MNIST" / "raw" / f).exists() for f in MNIST_FILES)
    # the files are read without torchvision, and as torchvision reads them
    import torchvision
    for split, train in (("train", True), ("test", False)):
        reference = torchvision.datasets.MNIST(tmp_path / "data", train=train)
        assert torch.equal(mnist[split][0], reference.data) and torch.equal(mnist[split][1], reference.targets)


def test_damaged_mnist_file_is_a_clean_error(tmp_path):
    raw = DATA_DIR / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    for damage in (raw.read_bytes()[:-1], b"\x00\x00\x0d\x01" + raw.read_bytes()[4:], b""):
        (tmp_path / "f").write_bytes(damage)
        with pytest.raises(UserError, match="not an MNIST file"):
            read_idx(tmp_path / "f")
    assert read_idx(raw).shape == (10_000,)


def test_missing_mnist_and_no_network_says_what_to_do(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # refused at once
    with pytest.raises(UserError) as error:
        fetch_mnist(root=tmp_path / "data", mirror=tmp_path / "none")
    assert all(word in str(error.value) for word in ("MNIST", "HW3_MNIST_MIRROR", str(tmp_path / "none")))


def test_a_damaged_mirror_file_is_named_and_never_sticks(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # no download to hide it
    mirror, raw = tmp_path / "mirror", tmp_path / "data" / "MNIST" / "raw"
    mirror.mkdir()
    for f in MNIST_FILES:
        shutil.copy(MNIST_MIRROR / f, mirror / f)
    good = (mirror / MNIST_FILES[3]).read_bytes()
    (mirror / MNIST_FILES[3]).write_bytes(good[:2000])  # truncated
    with pytest.raises(UserError, match=f"{mirror / MNIST_FILES[3]} is damaged: its MD5 is not that of MNIST's"):
        fetch_mnist(root=tmp_path / "data", mirror=mirror)
    assert not (raw / MNIST_FILES[3]).exists()  # the bad copy was not kept
    (mirror / MNIST_FILES[3]).write_bytes(good)  # the mirror fixed: the next run copies it
    assert fetch_mnist(root=tmp_path / "data", mirror=mirror)["test"][1].shape == (10_000,)
    # a damaged copy that an earlier run left in raw/ is replaced from the mirror, not read
    (raw / MNIST_FILES[3][:-3]).unlink()
    (raw / MNIST_FILES[3]).write_bytes(good[:2000])
    assert fetch_mnist(root=tmp_path / "data", mirror=mirror)["test"][1].shape == (10_000,)


def test_data_path_problems_are_one_line(tmp_path):
    """HW3_DATA at a file, an extracted file replaced by a folder, labels beyond 9."""
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(UserError, match="cannot create .*a_file/MNIST/raw: Not a directory; set HW3_DATA"):
        fetch_mnist(root=tmp_path / "a_file", mirror=tmp_path / "none")
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_FILES:
        shutil.copy(DATA_DIR / "MNIST" / "raw" / f[:-3], raw / f[:-3])
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:13] + bytes([200]) + labels.read_bytes()[14:])
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte holds the label 200; MNIST's labels are 0 to 9"):
        fetch_mnist(root=tmp_path / "data", mirror=tmp_path / "none")
    images = raw / "train-images-idx3-ubyte"
    images.unlink()
    images.mkdir()
    with pytest.raises(UserError, match="train-images-idx3-ubyte is a folder, not an MNIST file"):
        fetch_mnist(root=tmp_path / "data", mirror=tmp_path / "none")


LOCKED = """
import os, sys
sys.path.insert(0, os.getcwd())
from common.cli import run_cli
from common.mnist.data import fetch_mnist
import p2_factorized
p2 = ["--dry-run", "--seeds", "1", "--ckpt-dir", sys.argv[2], "--out", sys.argv[3]]
for call in (lambda: fetch_mnist(root=sys.argv[1]), lambda: p2_factorized.main(p2)):
    try:
        run_cli(call)
    except SystemExit as e:
        print("exit", e.code, file=sys.stderr, flush=True)
"""


@needs_setpriv
@pytest.mark.slow  # a subprocess as an unprivileged user
def test_folders_the_user_may_not_write_or_search_are_one_line(tmp_path):
    """HW3_DATA at a folder that is not writable; a checkpoint folder without search permission."""
    (tmp_path / "readonly").mkdir(mode=0o555)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt").chmod(0o600)  # readable and writable, not searchable
    try:
        proc = subprocess.run([*UNPRIVILEGED, sys.executable, "-c", LOCKED, tmp_path / "readonly", tmp_path / "ckpt",
                               tmp_path / "out"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        (tmp_path / "ckpt").chmod(0o755)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and len(lines) == 4, proc.stderr
    assert "cannot create" in lines[0] and "readonly/MNIST/raw: Permission denied" in lines[0] and lines[1] == "exit 2"
    assert "cannot use" in lines[2] and "ckpt/p1_baseline_seed0.pt: permission denied" in lines[2], lines
    assert lines[3] == "exit 2"


def test_another_scripts_checkpoint_in_the_baselines_place(tmp_path):
    save_checkpoint(baseline_path(tmp_path, 0), config={"kind": "mse", "hidden": 8}, model={}, done=True)
    with pytest.raises(UserError, match="is not a P1 baseline .*another script's checkpoint.*--overwrite"):
        load_baseline(tmp_path, 0)
    weights = {k: torch.zeros(2) for k in MLP(width=8).state_dict()}  # a baseline's config, other tensors
    save_checkpoint(baseline_path(tmp_path, 0), config={"depth": 5, "width": 8}, model=weights, done=True)
    with pytest.raises(UserError, match="is not a P1 baseline of width 8: its weights do not fit"):
        load_baseline(tmp_path, 0)


@pytest.mark.parametrize("args, words", [
    (["--ranks", "0"], ["--ranks"]),
    (["--ranks", "900"], ["at most the width (64)"]),
    (["--ranks", "ten"], ["--ranks"]),
    (["--epochs", "-1"], ["--epochs", "-1"]),
    (["--seeds", "0"], ["--seeds"]),
    (["--lr", "nan"], ["--lr"]),
    (["--dropout", "1.5"], ["--dropout"]),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], ["device"]),
])
def test_nonsense_cli_values(tmp_path, capsys, args, words):
    code, err = run_main(p1_svd.main, ["--dry-run", "--out", tmp_path / "o", "--ckpt-dir", tmp_path / "c", *args],
                         capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.parametrize("script, flag, value", [
    (p1_svd, "--width", "100000"), (p1_svd, "--shift", "100000"), (p1_svd, "--batch-size", "99999999999999999999"),
    (p1_svd, "--seeds", "1000"), (p2_factorized, "--batch-size", "100000"), (p3_svd_ste, "--oversample", "100000"),
    (p4_denoise, "--fc-layers", "100000"), (p4_denoise, "--hidden", "100000"), (p4_denoise, "--crop", "100000"),
    (p5_draw, "--hidden", "100000"), (p5_draw, "--threads", "100000"), (p5_draw, "--components", "100000"),
    (p5_draw, "--samples", "99999999999999999999"), (rank_forward, "--threads", "100000"),
    (rank_forward, "--batches", "1e9"), (p3_svd_step, "--rounds", "100000000"), (train_step, "--steps", "100000"),
    (p4_realtime, "--seconds", "1e-9"), (p4_realtime, "--seconds", "1e9")])
def test_every_size_flag_has_an_upper_bound(tmp_path, capsys, script, flag, value):
    code, err = run_main(script.main, ["--dry-run", flag, value, "--out", tmp_path / "o"], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and flag in err and " to " in err, err
    assert not (tmp_path / "o").exists()


def test_every_integer_flag_says_its_range_in_help(monkeypatch):
    parsers = []

    def capture(parser, argv=None, namespace=None):
        parsers.append(parser)
        raise SystemExit(0)

    monkeypatch.setattr(cli.ArgumentParser, "parse_args", capture)
    for script in SCRIPTS:
        with pytest.raises(SystemExit):
            script.get_args([])
    assert len(parsers) == len(SCRIPTS)
    for parser in parsers:
        for action in parser._actions:
            if isinstance(action.default, int) and not isinstance(action.default, bool) or action.dest == "check_steps":
                assert getattr(action.type, "bounds", None) or action.type is cli.seed_int, (parser.prog, action.dest)
        help_text = parser.format_help()
        assert all(f"[{action.type.bounds}]" in " ".join(help_text.split()) for action in parser._actions
                   if getattr(action.type, "bounds", None) and action.help is not argparse.SUPPRESS), parser.prog


@pytest.mark.parametrize("device", ["meta", "mps", "xla", "hpu", "cpu:1", "cuda:99", "cuda"])
def test_only_devices_that_exist_here(tmp_path, capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    for script in (p1_svd, p5_draw, rank_forward):
        code, err = run_main(script.main, ["--dry-run", "--device", device, "--out", tmp_path / "o"], capsys)
        assert code == 2 and err.startswith("error: --device") and err.count("\n") == 1, (script.__name__, err)
    assert cli.pick_device("cpu") == torch.device("cpu")


def test_a_nan_or_infinity_never_reaches_a_results_file(tmp_path):
    save_json(tmp_path / "metrics.json", {"kept": 1})
    for bad, where in (({"v": {"systems": {"gru": [1.0, float("nan")]}}}, "v/systems/gru/1"),
                       ({"gain": float("-inf")}, "gain")):
        with pytest.raises(UserError, match=f"would hold a non-finite number at {where}; nothing was written"):
            save_json(tmp_path / "metrics.json", bad)
        assert read_json(tmp_path / "metrics.json") == {"kept": 1}


def test_output_paths_that_are_folders_are_one_line_before_any_work(tmp_path, capsys):
    """metrics.json (and any file the run writes) at a folder: refused at the start, not after the training."""
    (tmp_path / "o" / "metrics.json").mkdir(parents=True)
    code, err = run_main(p1_svd.main, ["--dry-run", "--seeds", "1", "--out", tmp_path / "o", "--ckpt-dir",
                                       tmp_path / "c"], capsys)
    assert code == 2 and err.count("\n") == 1 and "metrics.json: it is a folder" in err, err
    assert not (tmp_path / "c" / "p1_baseline_seed0.pt").exists()  # nothing trained
    with pytest.raises(UserError, match="cannot write .*metrics.json: it is a folder"):
        save_json(tmp_path / "o" / "metrics.json", {})


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    code, err = run_main(p1_svd.main, ["--dry-run", "--out", blocker / "out", "--ckpt-dir", tmp_path / "c"], capsys)
    assert code == 2 and err.count("\n") == 1 and str(blocker / "out") in err, err
    assert blocker.read_text() == "keep me"


def test_corrupt_baseline_checkpoint_is_reported_not_overwritten(tmp_path, capsys):
    path = baseline_path(tmp_path, 0)
    path.write_bytes(b"\x80\x02garbage")
    code, err = run_main(p1_svd.main, ["--dry-run", "--seeds", "1", "--out", tmp_path / "o", "--ckpt-dir", tmp_path],
                         capsys)
    assert code == 2 and err.count("\n") == 1 and str(path) in err and "not a readable checkpoint" in err, err
    assert path.read_bytes() == b"\x80\x02garbage"


@pytest.mark.slow  # 13 s on 2 idle cores: three interpreters, two of them in a gloo process group
def test_torchrun_two_processes_match_one(tmp_path):
    """A tiny P1 training with 2 gloo processes equals the single-process run with the same global batch (no dropout
    and no shifts: each rank draws its own; the tail decay is in, and its SVDs agree across ranks)."""
    common = ["--dry-run", "--quiet", "--seeds", "1", "--dropout", "0", "--shift", "0", "--ranks", "20", "full",
              "--precision", "fp32"]  # bf16 autocast would round the two ways apart
    p1_svd.main(common + ["--out", str(tmp_path / "one"), "--ckpt-dir", str(tmp_path / "one")])
    two = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "p1_svd.py", *common,
                     "--out", tmp_path / "two", "--ckpt-dir", tmp_path / "two", env={"OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (load_checkpoint(baseline_path(tmp_path / d, 0))["model"] for d in ("one", "two"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    m1, m2 = read_json(tmp_path / "one" / "metrics.json"), read_json(tmp_path / "two" / "metrics.json")
    h1, h2 = m1["seeds"][0]["history"][0], m2["seeds"][0]["history"][0]
    assert h1["val_loss"] == pytest.approx(h2["val_loss"], rel=1e-4)  # evaluate() reduced over both ranks
    assert abs(m1["baseline_test_acc"]["mean"] - m2["baseline_test_acc"]["mean"]) <= 2e-3
