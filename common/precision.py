"""Precision and the machine: bf16 autocast where the hardware multiplies bf16, fp32 elsewhere; what every
metrics.json records of where it was made; and the CPU threads of a block."""
import contextlib
import platform
from pathlib import Path

import torch
from torch import nn

from .cli import UserError

PRECISIONS = ("auto", "fp32", "bf16")


def add_precision_flag(train):
    """--precision, a training flag: a model trained in bf16 is reused only by a bf16 run (common.train)."""
    train.add("--precision", choices=("auto", "fp32", "bf16"), default="auto",
              help="arithmetic of the training's forward pass: bf16 autocast (weights and optimizer stay fp32; every "
                   "reported number is computed in fp32) or fp32; auto: bf16 where the CPU or GPU has bf16 matrix "
                   "instructions, else fp32 (default: auto)")


def bf16_in_hardware(device):
    """Whether `device` multiplies bf16 matrices in hardware: AMX or AVX512-BF16 on a CPU, or a bf16 GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    return False


def resolve_precision(name, device):
    """'fp32' or 'bf16' for --precision `name`: 'auto' is bf16 where `device` has bf16 matrix instructions, else
    fp32 (so a machine without them trains exactly as in fp32); 'fp32' and 'bf16' are taken as they are."""
    if name not in PRECISIONS:
        raise UserError(f"unknown precision {name!r}; use one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if bf16_in_hardware(device) else "fp32"
    return name


def autocast(precision, device):
    """The forward pass's context: bf16 autocast for precision 'bf16', nothing for 'fp32'."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def full_precision(device):
    """A block computed in fp32 even inside a bf16 forward pass (an SVD, a subspace iteration)."""
    return torch.autocast(torch.device(device).type, enabled=False)


class Dropout(nn.Dropout):
    """nn.Dropout, whose mask under CPU autocast costs a quarter of the random draws: 16 random bits decide each
    element (four from each 64-bit draw of torch's generator), so p is rounded to a multiple of 1 / 65536 and the
    kept elements are scaled by 1 / (1 - that p). nn.Dropout draws 64 bits per element from a generator that runs
    on one thread. Outside autocast, or on a GPU: nn.Dropout itself, the same numbers."""

    def forward(self, x):
        if not (self.training and self.p and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")):
            return super().forward(x)
        drop = round(self.p * 65536)  # elements with 16-bit values below this (from -32768) are dropped
        n = x.numel()
        bits = torch.randint(-2 ** 63, 2 ** 63 - 1, (-(-n // 4),), dtype=torch.int64, device=x.device)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= drop - 32768
        return x.mul(keep).mul_(65536 / (65536 - drop))


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
    info = {"cpu": cpu_name(), "isa": torch.backends.cpu.get_cpu_capability(),
            "bf16_matmul_in_hardware": bf16_in_hardware("cpu"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["bf16_matmul_in_hardware"] = bf16_in_hardware(device)
    if precision is not None:
        info["precision"] = precision
    return info


@contextlib.contextmanager
def torch_threads(n):
    """Run the block on `n` CPU threads (0 or None: leave torch's count), then restore the count it had."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
