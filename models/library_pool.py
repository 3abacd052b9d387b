"""``stemdeck separate --jobs N``: N separations at once, each in its own process with its own
model and ``cores // N`` torch threads (processes, not threads: torch's pool and Python's GIL
would make threads share one core's worth of work).

Workers are spawned (never forked from a process whose torch pool is running), die with the
parent (a killed queue leaves no orphan writing stems), and send their progress to the parent
on a queue; the parent alone writes the manifest.
"""

from __future__ import annotations

import multiprocessing
import queue
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from stemdeck.models.library import Job, JobOptions
from stemdeck.models.library_queue import Batch, FileBars, Outcome, Plan, separate_job
from stemdeck.models.track_job import CommandError

POLL_S = 0.1

_worker: dict = {}  # in a worker process: its model and the queue to the parent


class WorkerLost(CommandError):
    """A worker process died (killed, out of memory): the batch stops, a rerun resumes it."""


class WorkerStopped(BaseException):
    """The parent stopped this worker (Ctrl-C): raised in its job, so that the job's stem
    writer removes its temporaries on the way out, then the worker exits."""


def _stop_now(signum, frame) -> None:
    """SIGTERM from the parent: unwind the running job (its files), or exit between jobs."""
    import os

    if _worker.get("in_job"):
        raise WorkerStopped
    os._exit(128 + signum)


def init_worker(model_spec: str, torch_threads: int, niceness: int, events) -> None:
    """In each worker, once: die with the parent, set threads and priority, load the model."""
    import ctypes
    import os
    import signal

    import torch

    from stemdeck.models.loading import load_or_fetch

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops us
    signal.signal(signal.SIGTERM, _stop_now)
    torch.set_num_threads(torch_threads)
    if niceness:
        os.nice(niceness)
    _worker["model"] = load_or_fetch(model_spec).model
    _worker["events"] = events


def run_job(job: Job, options: JobOptions, device: str) -> Outcome:
    import os
    import signal

    try:
        _worker["in_job"] = True
        if not _worker.get("precision_committed"):  # the first job: the options arrive with it
            from stemdeck.models.track_job import commit_backend, commit_precision

            commit_precision(_worker["model"], options.precision, device, options.backend)
            commit_backend(_worker["model"], options, device, note=lambda line: None)  # exported before the workers
            _worker["precision_committed"] = True
        events = _worker["events"]
        bars = FileBars(job.index, lambda kind, index, value: events.put((kind, index, value)))
        return separate_job(_worker["model"], job, options, device, bars)
    except WorkerStopped:
        os._exit(128 + signal.SIGTERM)  # its temporaries removed; no result, no next job
    finally:
        _worker["in_job"] = False


def run_pool(
    model_spec: str, plan: Plan, options: JobOptions, device: str, batch: Batch, jobs: int, threads: int, niceness=0
) -> None:
    """Every job of ``plan`` on ``jobs`` worker processes; outcomes reach ``batch`` as they come."""
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    pool = ProcessPoolExecutor(
        jobs, mp_context=context, initializer=init_worker, initargs=(model_spec, threads, niceness, events)
    )
    try:
        futures = {}
        for job in plan.jobs:
            batch.claim(job)
            futures[pool.submit(run_job, job, options, device)] = job
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            _drain(events, batch)
            for future in finished:
                batch.finish(_outcome(future, futures[future]))
    except BaseException:
        _stop_workers(pool)  # Ctrl-C or a lost worker: no one waits for the files in flight
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        events.close()


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the workers: each removes its job's temporaries and exits (within one forward
    of the model). The executor has no public way; its ``_processes`` has been there since
    Python 3.2."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def _outcome(future, job: Job) -> Outcome:
    try:
        return future.result()
    except BrokenProcessPool:
        raise WorkerLost(
            f"a worker process died while separating {job.path} (killed, or out of memory); "
            "run the same command again to resume, or use fewer --jobs"
        ) from None


def _drain(events, batch: Batch) -> None:
    while True:
        try:
            kind, index, value = events.get_nowait()
        except queue.Empty:
            return
        batch.report(kind, index, value)
