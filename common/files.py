"""Files: the repository root, writes that never leave half a file, the JSON results every run writes and reads
back, and the output folders of a run."""
import contextlib
import errno
import json
import math
import os
import stat
import tempfile
from pathlib import Path

from .cli import UserError

ROOT = Path(__file__).resolve().parents[1]  # the repository root
DATA_DIR = Path(os.environ.get("HW3_DATA", ROOT / "data"))  # MNIST/ and hw3/ (HW3_DATA moves it)
_UMASK = os.umask(0)
os.umask(_UMASK)


def file_kind(path):
    """What `path` is: 'file', 'missing', 'a folder', 'a FIFO', 'a device' or 'a socket'. A path that cannot be
    looked at (a folder on the way the user may not search, a symbolic link loop, a name too long) is a UserError
    naming it: `Path.exists()` would raise a PermissionError or say 'not found'."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as e:
        why = {errno.ELOOP: "it is a symbolic link loop", errno.ENAMETOOLONG: "a name in it is too long (at most 255 "
               "bytes)", errno.EACCES: "permission denied (a folder on the way cannot be searched)"}
        raise UserError(f"cannot use {path}: {why.get(e.errno, e.strerror)}") from None
    return ("file" if stat.S_ISREG(mode) else "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device")


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
    for result in ("metrics.json", "config.json"):  # checked now, not after the training
        writable_target(args.out / result)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success move it into place, so readers never see half a file.

    A file it replaces keeps its permissions; a read-only one, or a folder (or FIFO, ...) at `path`, is a one-line
    error before anything is written."""
    path = Path(path)
    mode = writable_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; choose a writable location")
    os.close(fd)
    try:
        yield Path(tmp)
        try:
            os.chmod(tmp, mode)  # mkstemp makes files private (0600); give them the usual mode, or the old file's
            os.replace(tmp, path)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def writable_target(path):
    """The mode a file written to `path` gets (the old file's, if one is there), or a UserError: `path` is a
    folder or another non-file, or a read-only file (which is never replaced)."""
    kind = file_kind(path)
    if kind == "missing":
        return 0o666 & ~_UMASK
    if kind != "file":
        raise UserError(f"cannot write {path}: it is {kind}; remove it or choose another name")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & 0o222:
        raise UserError(f"{path} is read-only, and it is never replaced; make it writable or choose another place")
    return mode


def save_json(path, obj):
    """`obj` as JSON at `path`, atomically. A NaN or an infinity in it is a result gone wrong: a one-line error
    naming its key, and nothing is written (JSON itself has no such numbers)."""
    bad = _non_finite(obj)
    if bad is not None:
        raise UserError(f"{shown_path(path)} would hold a non-finite number at {bad or 'its top'}; nothing was written")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _non_finite(obj, where=""):
    """The key path ('a/b/0') of the first NaN or infinity in `obj`, or None."""
    if isinstance(obj, float):
        return where if not math.isfinite(obj) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite(value, f"{where}/{key}" if where else str(key))
        if found is not None:
            return found
    return None


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
