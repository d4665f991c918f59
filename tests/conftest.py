"""Shared test helpers, and every MNIST script's --dry-run, run once per test session.

Helpers: `run_script` (a script in a subprocess), `assert_clean_error` (exit 2, one line `error: ...`), `run_main`
(a script's main in-process, the way its __main__ runs it), `read_json`, `copy_checkpoints`.

Session fixtures: each dry run runs once, in a subprocess, in its own temporary folder, and is shared by every test
that asks for it. Tests only read these folders: a test that writes (a re-run, a damaged file) works in its own
tmp_path, with copies (`copy_checkpoints`). All but P1's start together once one of them is asked for (they need
its baseline), and run while the tests go on; a session that needs only some of them stops the others at its end.
A session whose tests need them starts them at its beginning and runs the test files that do not need them first,
so that those files' work overlaps the dry runs' (pytest's order otherwise).

    dry_p1           P1 --dry-run --seeds 1 (5 x 64 units): (output folder, checkpoint folder with
                     p1_baseline_seed0.pt)
    dry_p2           P2 --dry-run --seeds 1 from a copy of dry_p1's baseline: (output folder, checkpoint folder)
    dry_p3           P3 --dry-run --seeds 1, likewise: (output folder, checkpoint folder)
    dry_p5           P5 --dry-run, likewise (its two drawers trained side by side, --jobs 2): (output folder,
                     checkpoint folder)
    dry_p5_ablation  P5 --dry-run --ablation --jobs 1 from a copy of dry_p1's baseline: the two drawers and the
                     ablation's five, trained one after the other: (output folder, checkpoint folder)
    dry_p4           P4 --dry-run on data/hw3 (a handful of files, small models): (output folder, checkpoint folder)
    dry_bench_p3     benchmarks/p3_svd_step.py --dry-run from a copy of dry_p1's baseline: its output folder
    dry_bench_p4     benchmarks/p4_realtime.py --dry-run with dry_p4's denoiser.pt: its output folder
    dry_bench_rank   benchmarks/rank_forward.py --dry-run from a copy of dry_p1's baseline: its output folder
    dry_bench_train  benchmarks/train_step.py --dry-run on copies of every dry run's checkpoints: its output folder
    dry_runs         {"p1": output folder, ..., "p5": ..., "bench_p3": ..., "bench_p4": ..., "bench_rank": ...,
                     "bench_train": ...}: every dry run, e.g. for the report's tests (a report of the dry runs links
                     their files into a folder of its own)

Torch runs on one thread in the tests, here and in every subprocess (OMP_NUM_THREADS, unless set): a run in a
subprocess and its re-run in this process compute the same numbers, small operations are fastest on one thread, and
two dry runs at a time use two cores without their threads waiting for each other.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THREADS = int(os.environ.setdefault("OMP_NUM_THREADS", "1"))  # before torch is imported; subprocesses inherit it
import torch  # noqa: E402

torch.set_num_threads(THREADS)  # also if a plugin imported torch first


def run_script(*args, env=None, timeout=600, cwd=ROOT):
    """Run `python *args` from the repo root; returns the CompletedProcess (text output captured)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def assert_clean_error(proc, *words):
    """Exit code 2 and a one-line `error: ...` on stderr mentioning `words`, with no traceback."""
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def run_main(main, argv, capsys):
    """Call a script's main(argv) in-process the way its __main__ does: (exit code, stderr)."""
    from common.cli import run_cli
    capsys.readouterr()
    try:
        run_cli(lambda: main([str(a) for a in argv]))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def read_json(path):
    return json.loads(Path(path).read_text())


def low_rank(U, S, Vh, rank):
    """The oracle of a rank-`rank` truncation of W = U diag(S) Vh, as one dense matrix: U_D diag(S_D) Vh_D."""
    return (U[:, :rank] * S[:rank]) @ Vh[:rank]


DRY_RUN_FILES = set()  # the collected test files whose tests use the dry runs started together (`started`)


def pytest_collection_modifyitems(items):
    """The files that use the session's dry runs last, in pytest's order otherwise (whole files: module fixtures
    stay set up once)."""
    DRY_RUN_FILES.update(item.path for item in items if "started" in item.fixturenames)
    items.sort(key=lambda item: item.path in DRY_RUN_FILES)  # stable


@pytest.fixture(scope="session", autouse=True)
def dry_runs_started_early(request):
    """Start the dry runs at the session's beginning when some collected test needs them."""
    if DRY_RUN_FILES:
        request.getfixturevalue("started")


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """`p4_denoise.py denoise` sets torch's thread count for the process without restoring it; called in-process by
    a test, that would leak into the next tests (and change their float rounding). Goes once it restores it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def copy_checkpoints(source, target, pattern="*.pt"):
    """A checkpoint folder `target` holding copies of `source`'s files matching `pattern`; returns it."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for path in Path(source).glob(pattern):
        shutil.copy(path, target / path.name)
    return target


class DryRun:
    """`script --dry-run [--quiet] *args` started in a subprocess, in `folder` whose checkpoint folder holds copies of
    the checkpoints in `checkpoints` (if given); result() waits for it: (output folder, checkpoint folder)."""

    def __init__(self, folder, script, *args, checkpoints=None, quiet=True):
        self.script, self.out, self.ckpt = script, folder / "out", folder / "ckpt"
        if checkpoints is not None:
            copy_checkpoints(checkpoints, self.ckpt)
        self.log = folder / "stderr.txt"  # and what it prints in stdout.txt
        with open(self.log, "w") as stderr, open(folder / "stdout.txt", "w") as stdout:
            self.proc = subprocess.Popen(
                [sys.executable, script, "--dry-run", *["--quiet"] * quiet, *map(str, args), "--out", str(self.out),
                 "--ckpt-dir", str(self.ckpt)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=stdout, stderr=stderr)

    def result(self, timeout=600):
        code = self.proc.wait(timeout)
        assert code == 0, (self.script, self.log.read_text()[-3000:])
        return self.out, self.ckpt

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def dry_p1(tmp_path_factory):
    return DryRun(tmp_path_factory.mktemp("p1"), "p1_svd.py", "--seeds", "1").result()


@pytest.fixture(scope="session")
def started(tmp_path_factory, dry_p1):
    """Every dry run but P1's, started together (the longest first): {name: DryRun}."""
    folder = tmp_path_factory.mktemp
    runs = {"p5_ablation": DryRun(folder("p5_ablation"), "p5_draw.py", "--ablation", "--jobs", "1",
                                  checkpoints=dry_p1[1]),
            "p5": DryRun(folder("p5"), "p5_draw.py", checkpoints=dry_p1[1]),
            "bench_p3": DryRun(folder("bench_p3"), "benchmarks/p3_svd_step.py", checkpoints=dry_p1[1], quiet=False),
            "p3": DryRun(folder("p3"), "p3_svd_ste.py", "--seeds", "1", checkpoints=dry_p1[1]),
            "p2": DryRun(folder("p2"), "p2_factorized.py", "--seeds", "1", checkpoints=dry_p1[1]),
            "p4": DryRun(folder("p4"), "p4_denoise.py"),
            "bench_rank": DryRun(folder("bench_rank"), "benchmarks/rank_forward.py", checkpoints=dry_p1[1],
                                 quiet=False)}
    yield runs
    for run in runs.values():
        run.stop()


@pytest.fixture(scope="session")
def dry_p2(started):
    return started["p2"].result()


@pytest.fixture(scope="session")
def dry_p3(started):
    return started["p3"].result()


@pytest.fixture(scope="session")
def dry_p5(started):
    return started["p5"].result()


@pytest.fixture(scope="session")
def dry_p5_ablation(started):
    return started["p5_ablation"].result()


@pytest.fixture(scope="session")
def dry_bench_p3(started):
    return started["bench_p3"].result()[0]


@pytest.fixture(scope="session")
def dry_p4(started):
    return started["p4"].result()


@pytest.fixture(scope="session")
def dry_bench_rank(started):
    return started["bench_rank"].result()[0]


@pytest.fixture(scope="session")
def dry_bench_p4(tmp_path_factory, dry_p4):
    out = tmp_path_factory.mktemp("bench_p4")
    proc = run_script("benchmarks/p4_realtime.py", "--dry-run", "--model", dry_p4[0] / "denoiser.pt", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def dry_bench_train(tmp_path_factory, dry_p1, dry_p2, dry_p3, dry_p4, dry_p5):
    folder = tmp_path_factory.mktemp("bench_train")
    every = folder / "every"  # the checkpoints of every dry run, as `make all` leaves them in checkpoints/
    for _, ckpt in (dry_p1, dry_p2, dry_p3, dry_p4, dry_p5):
        copy_checkpoints(ckpt, every)
    return DryRun(folder, "benchmarks/train_step.py", checkpoints=every, quiet=False).result()[0]


@pytest.fixture(scope="session")
def dry_runs(dry_p1, dry_p2, dry_p3, dry_p4, dry_p5, dry_bench_p3, dry_bench_p4, dry_bench_rank, dry_bench_train):
    return {"p1": dry_p1[0], "p2": dry_p2[0], "p3": dry_p3[0], "p4": dry_p4[0], "p5": dry_p5[0],
            "bench_p3": dry_bench_p3, "bench_p4": dry_bench_p4, "bench_rank": dry_bench_rank,
            "bench_train": dry_bench_train}
