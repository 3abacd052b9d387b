"""``stemdeck separate --ray ADDRESS|auto``: the same jobs on a Ray cluster.

One actor per worker loads the model once and separates file after file; each file is one task.
The actors write the stems themselves, atomically (temporaries renamed into place), so OUTDIR
(and the inputs) must be storage every node sees at the same path: NFS, a cluster file system.
The driver (this process) keeps the manifest and the progress. An actor that dies (killed, out
of memory, its node lost) is restarted and its file retried, up to ``MAX_RETRIES`` times; a
file that fails in the ordinary way (a damaged file) is one line and is not retried.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable

from stemdeck.models.library import Job, JobOptions
from stemdeck.models.library_queue import Batch, FileBars, Outcome, Plan, separate_job
from stemdeck.models.precision_choice import PIN_ENV

MAX_RETRIES = 3
POLL_S = 0.2
# Tests only: the first actor task to see this file name creates it and exits mid-separation.
TEST_EXIT_ONCE = "STEMDECK_TEST_RAY_EXIT_ONCE"


def require_ray():
    """The ray module, or a one-line error saying how to get it."""
    from stemdeck.models.track_job import CommandError

    try:
        import ray
    except ImportError:
        raise CommandError("--ray needs the ray package: pip install 'stemdeck[cluster]'") from None
    return ray


class Separator:
    """A Ray actor: a model loaded once, separating the files it is given, one at a time."""

    def __init__(self, model_spec: str, torch_threads: int, device: str, options: JobOptions):
        import torch

        from stemdeck.models.loading import load_or_fetch

        torch.set_num_threads(torch_threads)
        self.model, self.device = load_or_fetch(model_spec).model, device
        self.notes = settle_precision_on_node(self.model, options, device)

    def separate(self, job: Job, options: JobOptions) -> tuple[Outcome, list[str]]:
        """The file's outcome, and the lines this actor has for the driver (its node's precision)."""
        bars = FileBars(job.index, _exit_once_for_tests())
        notes, self.notes = self.notes, []
        return separate_job(self.model, job, options, self.device, bars), notes


def settle_precision_on_node(model, options: JobOptions, device: str) -> list[str]:
    """``--precision auto`` decided on this actor's node, as a local run decides it on its machine:
    measured once per node (the node's other actors wait for the record), then committed (int8
    made in place). The driver's machine may be another CPU, or none of the cluster's. A
    measurement that fails is a line, and the node runs float32."""
    import socket

    from stemdeck.models.track_job import settle_precision

    lines: list[str] = []
    try:
        settle_precision(model, options, device, lines.append)
    except Exception as exc:  # noqa: BLE001 (the files still separate, in float32)
        lines.append(f"precision auto could not be decided here ({exc}); float32")
    return [f"{socket.gethostname()}: {line}" for line in lines]


def _exit_once_for_tests() -> Callable[[str, int, object], None]:
    """Progress goes nowhere on a worker; with ``TEST_EXIT_ONCE`` set, the first progress
    report (stems already being written) of the first task kills the worker process."""
    marker = os.environ.get(TEST_EXIT_ONCE)

    def report(kind: str, index: int, value) -> None:
        if marker and kind == "progress":
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os._exit(1)

    return report


def run_on_ray(
    address: str, model_spec: str, plan: Plan, options: JobOptions, device: str | None, batch: Batch, workers=None
) -> None:
    """Every job of ``plan`` on the cluster at ``address`` (joined here unless Ray already is)."""
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        connect(ray, address)
    try:
        actors, device = start_actors(ray, model_spec, device, workers, len(plan.jobs), options)
        dispatch(ray, actors, plan, options, batch)
    finally:
        if started:
            ray.shutdown()


def connect(ray, address: str) -> None:
    from stemdeck.models.track_job import CommandError

    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CommandError(
            f"--ray {address}: cannot join a Ray cluster ({str(exc).splitlines()[0]}); start one with "
            "`ray start --head` or give its address (HOST:6379)"
        ) from None


def start_actors(ray, model_spec: str, device: str | None, workers: int | None, files: int, options: JobOptions):
    """``workers`` actors (default: one per GPU, else one per two CPUs; never more than files),
    each on a GPU where the cluster has them and ``--device`` does not say cpu; torch threads
    share the CPUs out. A fleet-wide ``$STEMDECK_AUTO_PRECISION`` goes with them."""
    from stemdeck.models.track_job import CommandError

    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    use_gpu = gpus > 0 and (device is None or device.startswith("cuda"))
    if device is not None and device.startswith("cuda") and not gpus:
        raise CommandError(f"--device {device}: the Ray cluster has no GPUs; leave --device out or use cpu")
    count = min(workers or (gpus if use_gpu else max(1, cpus // 2)), max(1, files))
    threads = max(1, cpus // count)
    env = {name: value for name, value in os.environ.items() if name.startswith("STEMDECK_TEST_") or name == PIN_ENV}
    actor = ray.remote(Separator).options(
        num_cpus=1,
        num_gpus=1 if use_gpu else 0,
        max_restarts=MAX_RETRIES,
        max_task_retries=MAX_RETRIES,
        runtime_env={"env_vars": env} if env else None,
    )
    run_device = (device or "cuda") if use_gpu else (device or "cpu")
    return [actor.remote(model_spec, threads, run_device, options) for _ in range(count)], run_device


def dispatch(ray, actors: list, plan: Plan, options: JobOptions, batch: Batch) -> None:
    """One file at a time per actor, the next as soon as it is free; outcomes to ``batch``."""
    waiting, running = deque(plan.jobs), {}

    def give(actor) -> None:
        job = waiting.popleft()
        batch.claim(job)
        batch.report("start", job.index, (os.fsdecode(job.path), job.seconds))
        running[actor.separate.remote(job, options)] = (actor, job)

    for actor in actors:
        if waiting:
            give(actor)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
        for ref in ready:
            actor, job = running.pop(ref)
            try:
                outcome, notes = ray.get(ref)
            except ray.exceptions.RayError as exc:
                (outcome, notes), actor = (lost(job, exc), []), None  # that actor is gone for good
            for line in notes:
                batch.report("say", job.index, line)
            batch.finish(outcome)
            if actor is not None and waiting:
                give(actor)
    for job in waiting:  # every actor was lost
        batch.finish(Outcome(job.index, error=f"{job.path}: no Ray worker left to separate it; run again"))


def lost(job: Job, exc: Exception) -> Outcome:
    return Outcome(
        job.index,
        error=f"{job.path}: its Ray worker died or could not start, {MAX_RETRIES} restarts included "
        f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}); "
        "check the cluster's memory and logs (is stemdeck and its model on every node?), then run again",
    )
