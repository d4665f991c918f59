"""Bad input to the MNIST scripts gets one line and exit 2; the data step; torchrun matches one process."""
import shutil

import pytest
import torch

from common.data import MNIST_FILES, MNIST_MIRROR, fetch_mnist
from common.mnist_mlp import baseline_path
from common.train import load_checkpoint
import p1_svd
from conftest import assert_clean_error, read_json, run_main, run_script

NO_NETWORK = "import torchvision.datasets as d; d.MNIST.mirrors = ['http://127.0.0.1:9/']; "  # refused at once


def run_offline(script, *args, env=None):
    """Run a script with torchvision's download pointed at a closed local port (CI has no internet)."""
    argv = [script, *map(str, args)]
    code = NO_NETWORK + f"import runpy, sys; sys.argv = {argv!r}; runpy.run_path({script!r}, run_name='__main__')"
    return run_script("-c", code, env=env)


def test_data_step_copies_from_the_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for f in MNIST_FILES:
        shutil.copy(MNIST_MIRROR / f, mirror / f)
    train, test = fetch_mnist(root=tmp_path / "data", mirror=mirror)
    assert (len(train), len(test)) == (60_000, 10_000)
    assert all((tmp_path / "data" / "MNIST" / "raw" / f).exists() for f in MNIST_FILES)


def test_missing_mnist_and_no_network_says_what_to_do(tmp_path):
    proc = run_offline("p1_svd.py", "--dry-run", "--out", tmp_path / "o", "--ckpt-dir", tmp_path / "c",
                       env={"HW3_DATA": str(tmp_path / "data"), "HW3_MNIST_MIRROR": str(tmp_path / "none")})
    assert_clean_error(proc, "MNIST", "HW3_MNIST_MIRROR", str(tmp_path / "none"))


@pytest.mark.parametrize("args, words", [
    (["--ranks", "0"], ["--ranks"]),
    (["--ranks", "900"], ["at most 784"]),
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


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    proc = run_script("p1_svd.py", "--dry-run", "--out", blocker / "out", "--ckpt-dir", tmp_path / "c")
    assert_clean_error(proc, str(blocker / "out"))
    assert blocker.read_text() == "keep me"


def test_corrupt_baseline_checkpoint_is_reported_not_overwritten(tmp_path):
    path = baseline_path(tmp_path, 0)
    path.write_bytes(b"\x80\x02garbage")
    proc = run_script("p1_svd.py", "--dry-run", "--seeds", "1", "--out", tmp_path / "o", "--ckpt-dir", tmp_path)
    assert_clean_error(proc, str(path), "not a readable checkpoint")
    assert path.read_bytes() == b"\x80\x02garbage"


def test_torchrun_two_processes_match_one(tmp_path):
    """A tiny P1 training with 2 gloo processes equals the single-process run with the same global batch."""
    common = ["--dry-run", "--quiet", "--seeds", "1", "--dropout", "0", "--ranks", "20", "full"]
    one = run_script("p1_svd.py", *common, "--out", tmp_path / "one", "--ckpt-dir", tmp_path / "one")
    two = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "p1_svd.py", *common,
                     "--out", tmp_path / "two", "--ckpt-dir", tmp_path / "two", env={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (load_checkpoint(baseline_path(tmp_path / d, 0))["model"] for d in ("one", "two"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    m1, m2 = read_json(tmp_path / "one" / "metrics.json"), read_json(tmp_path / "two" / "metrics.json")
    h1, h2 = m1["seeds"][0]["history"][0], m2["seeds"][0]["history"][0]
    assert h1["val_loss"] == pytest.approx(h2["val_loss"], rel=1e-4)  # evaluate() reduced over both ranks
    assert abs(m1["baseline_test_acc"]["mean"] - m2["baseline_test_acc"]["mean"]) <= 2e-3
