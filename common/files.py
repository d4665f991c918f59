"""Files: the repository root, writes that never leave half a file, the JSON results every run writes and reads
back, and the output folders of a run."""
import contextlib
import json
import os
import tempfile
from pathlib import Path

from .cli import UserError

ROOT = Path(__file__).resolve().parents[1]  # the repository root
_UMASK = os.umask(0)
os.umask(_UMASK)


def resolve_dirs(args, name):
    """Fill in --out and --ckpt-dir; a dry run never touches the committed results or real checkpoints."""
    if args.out is None:
        args.out = ROOT / ("runs/dry-run" if args.dry_run else "results") / name
    if args.ckpt_dir is None:
        args.ckpt_dir = ROOT / ("runs/dry-run/checkpoints" if args.dry_run else "checkpoints")
    for d in (args.out, args.ckpt_dir):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create output folder {d}: {e.strerror}; pass a writable --out/--ckpt-dir")
        if not os.access(d, os.W_OK):
            raise UserError(f"output folder {d} is not writable; pass a writable --out/--ckpt-dir")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success move it into place, so readers never see half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; choose a writable location")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private (0600); give them the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_json(path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def shown_path(path):
    """A path as results and configs record it: relative to the repo when inside it, so they hold on any machine."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def save_config(path, args, **extra):
    """The run's flags (and `extra`) as JSON, paths shown by `shown_path`."""
    save_json(path, {**{k: shown_path(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **extra})


def read_result(path, rerun):
    """The JSON object at `path`, or None where there is no such file.

    A file that cannot be read, is not JSON or holds no JSON object is a one-line error (UserError) that says to
    delete it or to run `rerun`, the command that writes it, again; nothing is overwritten.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{shown_path(path)} is not readable ({type(e).__name__}); delete it or rerun {rerun}")
    if not isinstance(value, dict):
        raise UserError(f"{shown_path(path)} holds a JSON {type(value).__name__}, not an object; delete it or "
                        f"rerun {rerun}")
    return value
