"""The command line every script shares: one-line errors, flags and their types, the training flags that define a
model, the device, and stopping on SIGINT / SIGTERM."""
import argparse
import signal
import sys
from pathlib import Path

import torch


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
