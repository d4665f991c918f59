"""Shared test helpers: run a script in a subprocess, and a tiny P1 baseline that P2, P3 and P5 start from."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_script(*args, env=None, timeout=600, cwd=ROOT):
    """Run `python *args` from the repo root; returns the CompletedProcess (text output captured)."""
    import os
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
    from common.utils import run_cli
    capsys.readouterr()
    try:
        run_cli(lambda: main([str(a) for a in argv]))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def read_json(path):
    return json.loads(Path(path).read_text())


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Commands such as `p4_denoise.py denoise` set torch's thread count for the process; called in-process
    by a test, that would leak into the next tests (and change their float rounding)."""
    import torch
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def dry_p1(tmp_path_factory):
    """P1 --dry-run with one seed, in a temporary folder: (output folder, checkpoint folder)."""
    base = tmp_path_factory.mktemp("p1")
    proc = run_script("p1_svd.py", "--dry-run", "--quiet", "--seeds", "1", "--out", base / "out",
                      "--ckpt-dir", base / "ckpt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "out", base / "ckpt"
