"""Small helpers every script uses: device and seeds, clean CLI errors, atomic file writes."""
import argparse
import contextlib
import json
import os
import platform
import random
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]  # the repository root
_UMASK = os.umask(0)
os.umask(_UMASK)


class UserError(Exception):
    """A problem the user can fix (bad input, missing data). Printed as one line, exit code 2."""

    exit_code = 2


class Stopped(UserError):
    """SIGINT or SIGTERM outside a training loop (which checkpoints and raises its own Interrupted instead)."""

    def __init__(self, signum):
        super().__init__(f"stopped by {signal.Signals(signum).name}; nothing half-written was left behind")
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def run_cli(main):
    """Run `main()` and turn a UserError into `error: ...` on stderr and exit code 2, never a traceback.

    SIGINT and SIGTERM end the program the same way, with the shell's codes 130 and 143: they raise an exception,
    so every file being written to a temporary name is removed on the way out (see `atomic_path`).
    """
    before = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    finally:
        for sig, handler in before.items():  # called in-process (a test), the caller gets its handlers back
            signal.signal(sig, handler)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (not the usage block) and exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def _number(kind, low, name, high=None):
    def parse(text):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}")
        # `not >=` also rejects nan; inf is never a sensible size, rate or count
        if not value >= low or (high is not None and not value <= high) or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}")
        return value
    return parse


def bounded_int(low, high):
    return _number(int, low, f"an integer from {low} to {high}", high)


def bounded_float(low, high):
    return _number(float, low, f"a number from {low:g} to {high:g}", high)


positive_int = _number(int, 1, "an integer >= 1")
nonnegative_int = _number(int, 0, "an integer >= 0")
positive_float = _number(float, 1e-300, "a number > 0")
nonnegative_float = _number(float, 0.0, "a number >= 0")
seed_int = _number(int, 0, f"a seed from 0 to {2**32 - 1}", 2**32 - 1)  # numpy's seeds are 32-bit


def dropout_rate(text):
    """The argparse type of a dropout probability: >= 0 and below 1 (1 would zero every activation)."""
    value = nonnegative_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"expected a dropout rate, >= 0 and < 1, got {text!r}")
    return value


class TrainingFlags:
    """The flags that define a trained model, declared once: each is an argparse flag (in its own --help group),
    and `values(args)` gives them as the dict that decides whether a finished checkpoint may be reused and that
    goes into config.json. A flag added here can never be left out of the reuse decision.

        train = TrainingFlags(parser)
        train.add("--epochs", type=positive_int, default=12, help="training epochs")
        args = parser.parse_args()
        config = {**train.values(args), "seed": seed}    # + what no flag sets (the data, the seed of this run)
    """

    def __init__(self, parser, title="training (a finished checkpoint is reused only if all of these match)"):
        self.group = parser.add_argument_group(title)
        self.names = []

    def add(self, *flags, **kwargs):
        action = self.group.add_argument(*flags, **kwargs)
        self.names.append(action.dest)
        return action

    def values(self, args):
        return {name: getattr(args, name) for name in self.names}


def add_precision_flag(train):
    """--precision, a training flag: a model trained in bf16 is reused only by a bf16 run (common.train)."""
    train.add("--precision", choices=("auto", "fp32", "bf16"), default="auto",
              help="arithmetic of the training's forward pass: bf16 autocast (weights and optimizer stay fp32; every "
                   "reported number is computed in fp32) or fp32; auto: bf16 where the CPU or GPU has bf16 matrix "
                   "instructions, else fp32 (default: auto)")


def cpu_name():
    """The CPU's model name, family and model (CPUs of one cloud machine kind differ, and so does float rounding)."""
    info = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    name = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info:
        name += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    return name


def machine(device, precision=None):
    """Where a result was made, for every metrics.json: fp32 results reproduce bit for bit on the same CPU and
    torch, and differ at the level of a change of seed on another CPU."""
    device = torch.device(device)
    from .train import bf16_in_hardware  # (train imports this module)
    info = {"cpu": cpu_name(), "isa": torch.backends.cpu.get_cpu_capability(),
            "bf16_matmul_in_hardware": bf16_in_hardware("cpu"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["bf16_matmul_in_hardware"] = bf16_in_hardware(device)
    if precision is not None:
        info["precision"] = precision
    return info


def add_common_args(parser, out):
    """The flags every script shares: output folder, checkpoints, device, seeds, resume, dry run."""
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where metrics.json and figures go (default: {out}, or runs/dry-run/... with --dry-run)")
    parser.add_argument("--ckpt-dir", type=Path, default=None,
                        help="where checkpoints go (default: checkpoints/, or runs/dry-run/checkpoints with --dry-run)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="a tiny run in seconds, to check that everything works")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


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


def pick_device(name=None):
    """cuda when present, else cpu; `name` overrides (e.g. from --device)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA GPU is available; use --device cpu")
    return device


def seed_everything(seed):
    """Seed Python, NumPy and torch (CPU and every GPU) so that a run is repeatable."""
    if not 0 <= seed < 2**32:
        raise UserError(f"seed {seed} is out of range: seeds go from 0 to {2**32 - 1} (NumPy's are 32-bit)")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def mean_std(values, keep_values=True):
    """{'mean', 'std', 'sem', 'median', 'n'} of a list of numbers, and the 'values' themselves unless keep_values is
    False (hundreds of per-file numbers); std is the sample std (0 for a single value), sem = std / sqrt(n)."""
    t = torch.tensor(values, dtype=torch.float64)
    std = t.std().item() if len(values) > 1 else 0.0
    stats = {"mean": t.mean().item(), "std": std, "sem": std / len(values) ** 0.5, "median": t.quantile(0.5).item(),
             "n": len(values)}
    return {**stats, "values": list(values)} if keep_values else stats


def n_params(module, buffers=False):
    """The numbers `module` trains (with buffers=True: every number it stores, its buffers too)."""
    return sum(p.numel() for p in module.parameters()) + (sum(b.numel() for b in module.buffers()) if buffers else 0)


@contextlib.contextmanager
def torch_threads(n):
    """Run the block on `n` CPU threads (0 or None: leave torch's count), then restore the count it had."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def goal(measured, *, at_least=None, above=None, at_most=None, below=None, **about):
    """A bar or goal as metrics.json records it: the value judged, its bound and the verdict, plus `about` (what
    was measured, where). make_report.py shows these and recomputes nothing, so each verdict is defined once, here."""
    (kind, bound), = [(k, v) for k, v in (("at_least", at_least), ("above", above), ("at_most", at_most),
                                          ("below", below)) if v is not None]
    met = {"at_least": measured >= bound, "above": measured > bound, "at_most": measured <= bound,
           "below": measured < bound}[kind]
    return {"measured": float(measured), kind: float(bound), "met": bool(met), **about}
