"""The command line every script shares: one-line errors, flags and their types, the training flags that define a
model, the device, and stopping on SIGINT / SIGTERM."""
import argparse
import os
import signal
import sys
import threading
from pathlib import Path

import torch


class UserError(Exception):
    """A problem the user can fix (bad input, missing data). Printed as one line, exit code 2."""

    exit_code = 2


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """SIGINT or SIGTERM: the job stops, with its own one-line message and the shell's exit code (130 for SIGINT,
    143 for SIGTERM). A BaseException, so that no `except Exception` can take a stop for a bad file."""

    def __init__(self, signum, message=None):
        self.signum, self.exit_code = signum, 128 + signum
        super().__init__(message or f"stopped by {signal.Signals(signum).name}; nothing half-written was left behind")

    def __reduce__(self):  # a job in another process sends its stop back whole (common/processes.py)
        return type(self), (self.signum, str(self))


# How a signal stops the job: outside a deferred scope its handler raises Stopped at once (every file being written
# to a temporary name is then removed on the way out, see `atomic_path`); inside one (a training step, a
# validation, a checkpoint write) it is only recorded, and the stop is raised at the scope's end or where the code
# asks for it (`stop_requested`). Once a stop is under way, further signals change nothing.
_stop = {"deferred": 0, "pending": None, "under_way": False}


def _on_signal(signum, frame):
    if _stop["under_way"] or _stop["pending"] is not None:
        return
    if _stop["deferred"]:
        _stop["pending"] = signum
    else:
        _stop["under_way"] = True
        raise Stopped(signum)


def install_stop_handlers():
    """SIGINT and SIGTERM stop the job (see above); returns the handlers they had, for `restore_handlers`."""
    _stop.update(deferred=0, pending=None, under_way=False)
    return {sig: signal.signal(sig, _on_signal) for sig in STOP_SIGNALS}


def restore_handlers(before):
    for sig, handler in before.items():
        signal.signal(sig, handler)


def stop_requested():
    """The signal a deferred scope recorded (its number), or None."""
    return _stop["pending"]


class stops_deferred:
    """A block in which SIGINT / SIGTERM are only recorded, so that a unit of work finishes whole; at the end of the
    outermost such block a recorded signal raises Stopped (a Stopped raised inside, such as fit's Interrupted,
    goes on as it is). Outside `run_cli` (a library call in the main thread) it installs the handlers for the
    block, so a training stopped there checkpoints too."""

    def __enter__(self):
        ours = signal.getsignal(signal.SIGINT) is _on_signal
        main = threading.current_thread() is threading.main_thread()
        self.before = install_stop_handlers() if main and not ours and not _stop["deferred"] else None
        _stop["deferred"] += 1
        return self

    def __exit__(self, exc_type, exc, tb):
        _stop["deferred"] -= 1
        signum = None
        if not _stop["deferred"]:
            signum, _stop["pending"] = _stop["pending"], None
        if exc_type is not None and issubclass(exc_type, Stopped):
            _stop["under_way"], signum = True, None
        if self.before is not None:
            restore_handlers(self.before)
        if signum is not None:
            _stop["under_way"] = True
            raise Stopped(signum) from exc
        return False


def run_cli(main):
    """Run `main()` and turn a UserError into `error: ...` on stderr and exit code 2, never a traceback.

    SIGINT and SIGTERM end the program with their own one line (Stopped) and the shell's codes 130 and 143.
    """
    before = install_stop_handlers()
    try:
        main()
    except (UserError, Stopped) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    finally:
        restore_handlers(before)  # called in-process (a test), the caller gets its handlers back
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (not the usage block) and exit code 2, and --help shows the range of
    every bounded flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=_RangesInHelp, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


class _RangesInHelp(argparse.HelpFormatter):
    def _get_help_string(self, action):
        bounds = getattr(action.type, "bounds", None)
        return f"{action.help} [{bounds}]" if bounds and action.help else action.help


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
    """The argparse type of an integer flag from `low` to `high`: every count and size has an upper bound that a
    machine can hold, said in --help."""
    parse = _number(int, low, f"an integer from {low} to {high}", high)
    parse.bounds = f"{low} to {high}"
    return parse


def bounded_float(low, high):
    parse = _number(float, low, f"a number from {low:g} to {high:g}", high)
    parse.bounds = f"{low:g} to {high:g}"
    return parse


def thread_count(low=0):
    """The argparse type of a --threads flag: `low` (0: torch's own choice) to 4 threads per CPU core here."""
    return bounded_int(low, 4 * (os.cpu_count() or 1))


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
        train.add("--epochs", type=bounded_int(1, 1000), default=12, help="training epochs")
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


def add_common_args(parser, out):
    """The flags every script shares: output folder, checkpoints, device, resume or overwrite, dry run."""
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where metrics.json and figures go (default: {out}, or runs/dry-run/... with --dry-run)")
    parser.add_argument("--ckpt-dir", type=Path, default=None,
                        help="where checkpoints go (default: checkpoints/, or runs/dry-run/checkpoints with --dry-run)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    again = parser.add_mutually_exclusive_group()  # what a run does with a checkpoint it would otherwise refuse
    again.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    again.add_argument("--overwrite", action="store_true",
                       help="train anew and replace the checkpoints this run writes (never a read-only one); without "
                            "it, a checkpoint of other settings or an unfinished one is refused, not replaced")
    parser.add_argument("--dry-run", action="store_true", help="a tiny run in seconds, to check that everything works")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def pick_device(name=None):
    """cuda when present, else cpu; `name` overrides (e.g. from --device): cpu, or cuda / cuda:N where that GPU
    exists here (a device this project cannot train on, such as meta or mps, is refused)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        raise UserError(f"--device {name} is not supported; use cpu, or cuda / cuda:N on a machine with a CUDA GPU")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but no CUDA GPU is available; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"--device {name} asked for, but this machine has {count} CUDA GPU{'s' * (count > 1)} "
                        f"(cuda:0 to cuda:{count - 1})")
    return device
