"""Several trainings side by side on a CPU, each in its own process, that Ctrl-C and SIGTERM stop cleanly.

A small model (P5's LSTMs) runs fastest on one thread: its matrix products are too small to share out. On a CPU
with cores to spare, independent trainings then run best side by side, one process each.
"""
import contextlib
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor

from ..precision import torch_threads


def run_jobs(function, jobs, workers=1, threads=0):
    """[function(*job) for job in jobs], each on `threads` CPU threads (0: torch's count), in order.

    workers > 1: up to that many jobs at once, each in a fresh process (spawned: no forked thread pools; `function`
    and the jobs must pickle). A job that seeds itself gives the same result either way. Ctrl-C or SIGTERM reaches
    every running job (a training checkpoints and stops; --resume continues it).
    """
    if workers == 1 or len(jobs) < 2:
        return [_on_threads(function, threads, job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_ignore_signals) as pool, \
            _forward_signals():
        futures = [pool.submit(_on_threads, function, threads, job) for job in jobs]
        return [f.result() for f in futures]


def _on_threads(function, threads, job):
    with torch_threads(threads):
        return function(*job)


def _ignore_signals():
    """In a pool worker: SIGINT and SIGTERM stop a training (fit checkpoints, then stops), never an idle worker,
    whose death would break the pool."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def _forward_signals():
    """While the block runs, pass SIGINT and SIGTERM on to the child processes (they checkpoint and stop)."""
    def forward(signum, frame):
        for child in multiprocessing.active_children():
            os.kill(child.pid, signum)

    before = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
