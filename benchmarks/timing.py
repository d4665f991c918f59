"""Timing that holds up on a busy machine, for every benchmark in the repository.

The variants compared run in interleaved rounds (A, B, C, then B, C, A, ...: the order rotates so that none
always goes first), so a busy moment slows every variant of that round alike instead of landing on one side of a
comparison. Each figure is the median over the rounds with its interquartile spread; a ratio of two variants is
computed per round (the two ran side by side) and then summarised the same way. A figure whose spread is wide
says so (`noisy`) instead of passing for a clean number.

    times = interleaved({"dense": lambda: dense(x), "rank 20": lambda: low(x)}, rounds=30)
    summary(times["dense"])                  # {"median": seconds, "q1", "q3", "spread", "noisy", ...}
    ratio(times, "dense", "rank 20")         # the speed-up, per round, summarised
"""
import statistics
import time

import torch

NOISY_SPREAD = 0.10  # an interquartile range above 10% of the median marks a figure as noisy


def summary(values, scale=1.0):
    """Median, quartiles, min, max of per-round `values` (times `scale`), their relative spread (q3 - q1) / median,
    and whether that spread is too wide to trust the median (`noisy`)."""
    values = sorted(v * scale for v in values)
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    spread = (q3 - q1) / median if median else float("inf")
    return {"median": median, "q1": q1, "q3": q3, "min": values[0], "max": values[-1], "rounds": len(values),
            "spread": spread, "noisy": spread > NOISY_SPREAD}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def calls_for(fn, min_seconds=0.005, device="cpu"):
    """How many back-to-back calls of `fn` take at least `min_seconds` (timer resolution and call jitter then
    matter little): 1, 2, 4, ..."""
    calls = 1
    while True:
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        if time.perf_counter() - start >= min_seconds or calls >= 1 << 16:
            return calls
        calls *= 2


def interleaved(variants, rounds, warmup=1, min_seconds=0.005, device="cpu", cpu=None):
    """Time every variant (name -> a callable without arguments) in `rounds` interleaved rounds.

    Each variant is first run `warmup` times, then calibrated (`calls_for`) so that one measurement lasts at least
    `min_seconds`; a round times every variant once, in an order rotated by one each round. Returns
    {name: [seconds per call, one per round]}, the rounds aligned across variants (for `ratio`). `cpu`, a dict if
    given, receives the same for this process's CPU time (time.process_time: all its threads).
    """
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    calls = {name: calls_for(variants[name], min_seconds, device) for name in names}
    times = {name: [] for name in names}
    for k in range(rounds):
        for name in names[k % len(names):] + names[:k % len(names)]:
            fn, n = variants[name], calls[name]
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) / n)
            if cpu is not None:
                cpu.setdefault(name, []).append((time.process_time() - start_cpu) / n)
    return times


def ratio(times, numerator, denominator):
    """`summary` of numerator / denominator per round: e.g. the speed-up of `denominator` over `numerator`."""
    return summary([a / b for a, b in zip(times[numerator], times[denominator])])


def describe(stat, unit="ms", scale=1e3, digits=3):
    """'0.123 ms (spread 4%)', or '... (spread 23%: noisy, the machine was busy)' when the spread is too wide."""
    text = f"{stat['median'] * scale:.{digits}g} {unit} (spread {100 * stat['spread']:.0f}%"
    return text + (": noisy, the machine was busy)" if stat["noisy"] else ")")
