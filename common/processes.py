"""Jobs side by side on a CPU, each in a process of its own, that a signal or the parent's death stops cleanly.

A small model (P5's LSTMs) runs fastest on one thread: its matrix products are too small to share out. On a CPU
with cores to spare, independent trainings then run best side by side, one process each; P4's PESQ scores likewise.
"""
import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import traceback
from multiprocessing import resource_tracker
from multiprocessing.connection import wait

from .cli import STOP_SIGNALS, Stopped, UserError, install_stop_handlers, stops_deferred
from .precision import torch_threads

GRACE_SECONDS = 120  # how long a stopped job may take to finish its step and write its checkpoint


def run_jobs(function, jobs, workers=1, threads=0):
    """[function(*job) for job in jobs], each on `threads` CPU threads (0: torch's count), in order.

    workers > 1: up to that many jobs at once, each in a fresh process (spawned: no forked thread pools; `function`
    and the jobs must pickle). A job that seeds itself gives the same result either way. SIGINT or SIGTERM at any
    moment reaches every running job (a training checkpoints and stops; --resume continues it) and ends this call
    with the stop; on Linux a job whose parent dies (even by SIGKILL) stops the same way, so no process outlives
    the call.
    """
    if workers == 1 or len(jobs) < 2:
        return [_on_threads(function, threads, job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    waiting, running, results, failed = list(enumerate(jobs)), {}, {}, None
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                i, job = waiting.pop(0)
                reader, writer = context.Pipe(duplex=False)
                process = context.Process(target=_job, args=(writer, os.getpid(), function, threads, job), daemon=True)
                # the job starts with the stop signals blocked, until its own handlers are in place (`_job`); here,
                # one that comes meanwhile is handled once the job is in `running`, to be stopped with the rest.
                # (multiprocessing's resource tracker, started by the first start, would unblock them: it runs first)
                resource_tracker.ensure_running()
                mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
                try:
                    process.start()
                    running[i] = process, reader
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                writer.close()
            ready = wait([reader for _, reader in running.values()])
            for i in [i for i, (_, reader) in running.items() if reader in ready]:
                done, results[i] = _outcome(*running.pop(i))
                if not done:
                    failed = results[i]
                    raise failed
    except BaseException as error:
        with stops_deferred():  # every job is stopped and waited for, whatever comes meanwhile
            signum = error.signum if isinstance(error, Stopped) else signal.SIGTERM
            for process, _ in running.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)
            stopped = [_outcome(process, reader, GRACE_SECONDS)[1] for process, reader in running.values()]
        # a stop ends with what each stopped job says it saved (the stop of this process says nothing of them)
        stops = [str(e) for e in [error] * (error is failed) + stopped if isinstance(e, Stopped)]
        if isinstance(error, Stopped) and stops:
            raise Stopped(error.signum, "; ".join(dict.fromkeys(stops))) from None
        raise
    return [results[i] for i in range(len(jobs))]


def _on_threads(function, threads, job):
    with torch_threads(threads):
        return function(*job)


def _outcome(process, reader, timeout=None):
    """(True, its result) or (False, the exception that ended it): what a job's process sent back, once it has
    exited."""
    try:
        if timeout is not None and not reader.poll(timeout):
            process.kill()
        outcome = pickle.loads(reader.recv_bytes())
    except (EOFError, OSError):
        outcome = None
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
    reader.close()
    if outcome is None:
        return False, UserError(f"a job's process ended without a result (exit code {process.exitcode}); "
                                f"run again (a training continues with --resume)")
    return outcome


def _job(conn, parent, function, threads, job):
    """A job's process: SIGINT and SIGTERM stop it as they stop its parent, and SIGTERM comes when its parent dies.
    Sends back (True, result) or (False, the exception that ended it)."""
    try:
        install_stop_handlers()
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the parent's death stops this job
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # one that came while it started is handled now
        if os.getppid() != parent:  # the parent died before this process could ask to be told
            raise Stopped(signal.SIGTERM, "stopped: the process that started this job is gone")
        outcome = True, _on_threads(function, threads, job)
    except (UserError, Stopped) as e:
        outcome = False, e
    except BaseException as e:  # a bug: its traceback here, and the parent fails too
        traceback.print_exc()
        outcome = False, RuntimeError(f"a job's process failed: {type(e).__name__}: {e}")
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # nothing may cut the answer short
    with contextlib.suppress(OSError):  # plain pickle: tensors go by value (torch's would need this process alive)
        conn.send_bytes(pickle.dumps(outcome))
