"""Shared test helpers, and every MNIST script's --dry-run, run once per test session.

Helpers: `run_script` (a script in a subprocess), `assert_clean_error` (exit 2, one line `error: ...`), `run_main`
(a script's main in-process, the way its __main__ runs it), `read_json`, `copy_checkpoints`.

Session fixtures: each dry run runs once, in a subprocess, in its own temporary folder, and is shared by every test
that asks for it. Tests only read these folders: a test that writes (a re-run, a damaged file) works in its own
tmp_path, with copies (`copy_checkpoints`). A session starts, at its beginning, exactly the dry runs its selected
tests need (`pytest tests/test_p2.py`: P1's and P2's), those that need P1's baseline as soon as it exists, and runs
the test files that need none first, so that their work overlaps the dry runs'. A dry run no test waited for (a
failed or interrupted session) is ended with SIGTERM, which the scripts handle, and waited for.

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
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THREADS = int(os.environ.setdefault("OMP_NUM_THREADS", "1"))  # before torch is imported; subprocesses inherit it
import torch  # noqa: E402

torch.set_num_threads(THREADS)  # also if a plugin imported torch first

from common.precision import resolve_precision  # noqa: E402

# what the dry runs' default `--precision auto` trains in on this machine: bf16 where the CPU multiplies bf16 in
# hardware, fp32 elsewhere (each script's forced-bf16 path has tests of its own, on every CPU)
AUTO_PRECISION = resolve_precision("auto", "cpu")


# as root, a folder without permissions is searchable unless the capabilities to override them are dropped
UNPRIVILEGED = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                   reason="needs root and setpriv: as root, a folder without permissions is "
                                          "searchable unless the capabilities to override them are dropped")


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
    the checkpoints in the folders `checkpoints`; result() waits for it: (output folder, checkpoint folder)."""

    def __init__(self, folder, script, *args, checkpoints=(), quiet=True):
        self.script, self.out, self.ckpt = script, folder / "out", folder / "ckpt"
        for source in checkpoints:  # the checkpoint folders of the runs it starts from
            copy_checkpoints(source, self.ckpt)
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

    def stop(self, grace=30):
        """End a run no test waited for the way a user would, with SIGTERM (the scripts stop cleanly on it), and wait
        for it; only one that outlives `grace` seconds is killed."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# The session's dry runs: name -> (script, its flags, the dry runs whose checkpoints it starts from)
DRY_RUNS = {
    "p1": ("p1_svd.py", ["--seeds", "1"], ()),
    "p4": ("p4_denoise.py", [], ()),
    # the longest first: they start together once P1's baseline exists
    "p5_ablation": ("p5_draw.py", ["--ablation", "--jobs", "1"], ("p1",)),
    "p5": ("p5_draw.py", [], ("p1",)),
    "bench_p3": ("benchmarks/p3_svd_step.py", [], ("p1",)),
    "p3": ("p3_svd_ste.py", ["--seeds", "1"], ("p1",)),
    "p2": ("p2_factorized.py", ["--seeds", "1"], ("p1",)),
    "bench_rank": ("benchmarks/rank_forward.py", [], ("p1",)),
    # every checkpoint, as `make all` leaves them in checkpoints/
    "bench_train": ("benchmarks/train_step.py", [], ("p1", "p2", "p3", "p4", "p5")),
}
QUIET = {"bench_p3": False, "bench_rank": False, "bench_train": False}  # tests read what these print


class DryRuns:
    """The session's dry runs, each started at most once, when a test needs it (or at the session's start when a
    collected test will): a run starts once the dry runs it starts from have finished. `start_later` starts one from
    a thread, so that the tests go on while it waits for those."""

    def __init__(self, tmp_path_factory):
        self.folder, self.runs, self.waiting, self.stopped = tmp_path_factory.mktemp, {}, {}, False

    def start(self, name):
        waiting = self.waiting.pop(name, None)
        if waiting is not None:  # started from a thread: that one starts it
            waiting.join()
        return self._start(name)

    def _start(self, name):
        if name not in self.runs:
            script, args, parents = DRY_RUNS[name]
            checkpoints = [self.get(parent)[1] for parent in parents]
            if self.stopped:
                pytest.fail(f"the session ended before the {name} dry run started")
            self.runs[name] = DryRun(self.folder(name), script, *args, checkpoints=checkpoints,
                                     quiet=QUIET.get(name, True))
        return self.runs[name]

    def start_later(self, name):
        def start():
            try:
                self._start(name)
            except BaseException:  # a parent failed or the session ended: the test that asks for it says so
                pass
        self.waiting[name] = threading.Thread(target=start, daemon=True)
        self.waiting[name].start()

    def get(self, name):
        return self.start(name).result()

    def stop(self):
        self.stopped = True
        for run in list(self.runs.values()):
            run.stop()
        for thread in list(self.waiting.values()):  # their parents ended: they start nothing more
            thread.join()
        for run in list(self.runs.values()):
            run.stop()


@pytest.fixture(scope="session")
def dry_runs_scheduler(tmp_path_factory):
    runs = DryRuns(tmp_path_factory)
    yield runs
    runs.stop()


def dry_runs_needed(fixture_names):
    """The DRY_RUNS that tests using `fixture_names` (one list of fixture names per test, their dependencies
    included, as pytest gives them) need, with the runs whose checkpoints those start from."""
    needed = {name for names in fixture_names for name in DRY_RUNS if f"dry_{name}" in names}
    while True:
        more = needed | {parent for name in needed for parent in DRY_RUNS[name][2]}
        if more == needed:
            return needed
        needed = more


@pytest.fixture(scope="session", autouse=True)
def dry_runs_started_early(request, dry_runs_scheduler):
    """Start, at the session's beginning, the dry runs that the selected tests need (only those: `pytest
    tests/test_p2.py` starts P1's and P2's), so that they run while the tests that need none go on."""
    needed = dry_runs_needed(item.fixturenames for item in request.session.items)
    for name in [n for n in DRY_RUNS if n in needed and not DRY_RUNS[n][2]]:  # P1 and P4 first
        dry_runs_scheduler.start(name)
    for name in [n for n in DRY_RUNS if n in needed and len(DRY_RUNS[n][2]) == 1]:
        dry_runs_scheduler.start(name)
    for name in [n for n in DRY_RUNS if n in needed and len(DRY_RUNS[n][2]) > 1]:  # once all of theirs are done
        dry_runs_scheduler.start_later(name)


def pytest_collection_modifyitems(items):
    """The files whose tests use the session's dry runs run last, in pytest's order otherwise (whole files: module
    fixtures stay set up once), so that the other files' work overlaps the dry runs'."""
    uses = {item.path for item in items if any(f"dry_{name}" in item.fixturenames for name in DRY_RUNS)}
    items.sort(key=lambda item: item.path in uses)  # stable


@pytest.fixture(scope="session")
def dry_p1(dry_runs_scheduler):
    return dry_runs_scheduler.get("p1")


@pytest.fixture(scope="session")
def dry_p2(dry_runs_scheduler):
    return dry_runs_scheduler.get("p2")


@pytest.fixture(scope="session")
def dry_p3(dry_runs_scheduler):
    return dry_runs_scheduler.get("p3")


@pytest.fixture(scope="session")
def dry_p4(dry_runs_scheduler):
    return dry_runs_scheduler.get("p4")


@pytest.fixture(scope="session")
def dry_p5(dry_runs_scheduler):
    return dry_runs_scheduler.get("p5")


@pytest.fixture(scope="session")
def dry_p5_ablation(dry_runs_scheduler):
    return dry_runs_scheduler.get("p5_ablation")


@pytest.fixture(scope="session")
def dry_bench_p3(dry_runs_scheduler):
    return dry_runs_scheduler.get("bench_p3")[0]


@pytest.fixture(scope="session")
def dry_bench_rank(dry_runs_scheduler):
    return dry_runs_scheduler.get("bench_rank")[0]


@pytest.fixture(scope="session")
def dry_bench_p4(tmp_path_factory, dry_p4):
    out = tmp_path_factory.mktemp("bench_p4")
    proc = run_script("benchmarks/p4_realtime.py", "--dry-run", "--model", dry_p4[0] / "denoiser.pt", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def dry_bench_train(dry_runs_scheduler):
    return dry_runs_scheduler.get("bench_train")[0]


@pytest.fixture(scope="session")
def dry_runs(dry_p1, dry_p2, dry_p3, dry_p4, dry_p5, dry_bench_p3, dry_bench_p4, dry_bench_rank, dry_bench_train):
    return {"p1": dry_p1[0], "p2": dry_p2[0], "p3": dry_p3[0], "p4": dry_p4[0], "p5": dry_p5[0],
            "bench_p3": dry_bench_p3, "bench_p4": dry_bench_p4, "bench_rank": dry_bench_rank,
            "bench_train": dry_bench_train}
