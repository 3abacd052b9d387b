"""Inference in its own process, so the audio callback never waits for the interpreter lock.

The worker process loads the model once, then runs one separation session at a time (live
input or a deck) on arrays in shared memory: the rings, the track and its stems, and the
``SharedState`` counters. Commands are dataclasses sent over a queue and dispatched by type;
each gets a :class:`Reply` naming it, with a value or a :class:`Failure`. The audio side never
talks to it.
"""

from __future__ import annotations

import errno
import math
import multiprocessing
import os
import queue
import re
import secrets
import shutil
import threading
import time
import weakref
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from stemdeck.engine.audio.state import SCHEDULING
from stemdeck.engine.runtime import ignore_ctrl_c, pid_alive, start_deaf_to_ctrl_c
from stemdeck.engine.session import LIVE, Failure, SessionSpec, WorkerError
from stemdeck.engine.worker.scheduling import IDLE, IdleGuard, enter_policy, session_policy

READY_TIMEOUT_S = 300.0  # loading and warming a large model on a slow machine
STOP_TIMEOUT_S = 30.0
QUIT_TIMEOUT_S = 10.0
REPLY_POLL_S = 0.1  # how soon a dead process is noticed by whoever waits on it
WORKER_NICENESS = 10
SEGMENT_PREFIX = "stemdeck"
SHM_FOLDER = Path("/dev/shm")
ArraySpecs = dict[str, tuple[tuple[int, ...], str]]


@dataclass(frozen=True)
class BlockSpec:
    """Enough to attach to a :class:`SharedBlock` from another process."""

    name: str
    arrays: ArraySpecs


def segment_name(pid: int | None = None) -> str:
    """``stemdeck-<owner pid>-<random>``: a later start can tell whose segment outlived its owner."""
    return f"{SEGMENT_PREFIX}-{pid or os.getpid()}-{secrets.token_hex(6)}"


def clean_stale_segments(folder: Path = SHM_FOLDER) -> list[str]:
    """Unlink our segments whose owner is gone (a session SIGKILLed with its process group).

    Returns the names removed. Segments of living processes, and anything not named by
    :func:`segment_name`, are left alone.
    """
    pattern = re.compile(rf"{SEGMENT_PREFIX}-(\d+)-[0-9a-f]+")
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:  # no /dev/shm (not Linux): nothing we can list
        return removed
    for path in entries:
        match = pattern.fullmatch(path.name)
        if match and not pid_alive(int(match.group(1))):
            try:
                path.unlink()
                removed.append(path.name)
            except OSError:
                pass
    return removed


class SharedMemoryFull(ValueError):
    """The shared memory (``/dev/shm``: RAM, in a file system of fixed size) cannot hold a block.
    Said in one line: its pages, touched, would have killed the process with SIGBUS."""


def _reserve(memory: shared_memory.SharedMemory, size_bytes: int) -> None:
    """The segment's pages reserved now (``posix_fallocate``), so a full ``/dev/shm`` is an error
    here rather than a SIGBUS when the arrays are first written: a 60-minute mix's stems take
    5 GB, and a laptop with 8 GB of RAM gives /dev/shm half of that."""
    fd = getattr(memory, "_fd", -1)
    if fd < 0 or not hasattr(os, "posix_fallocate"):
        return  # not Linux: the system's shared memory is not a sized file system
    try:
        os.posix_fallocate(fd, 0, size_bytes)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            return  # a file system that cannot reserve (EOPNOTSUPP): written as before
        memory.close()
        memory.unlink()
        raise SharedMemoryFull(shared_memory_full_said(size_bytes)) from None


def shared_memory_full_said(needed_bytes: int, what: str = "a block") -> str:
    """Not enough shared memory for ``what`` (``needed_bytes``): how much is free, what to do."""
    usage = shutil.disk_usage(SHM_FOLDER) if SHM_FOLDER.is_dir() else None
    free_bytes, total_bytes = (usage.free, usage.total) if usage else (0, 0)
    enough_gb = math.ceil((total_bytes + needed_bytes) / 2**30)
    return (
        f"not enough shared memory for {what}: {needed_bytes / 2**20:.0f} MB needed, {free_bytes / 2**20:.0f} MB "
        f"free in {SHM_FOLDER}; load a shorter track, close other programs, or enlarge it "
        f"(sudo mount -o remount,size={enough_gb}G {SHM_FOLDER})"
    )


class SharedBlock:
    """Several numpy arrays in one shared-memory segment."""

    def __init__(self, arrays: ArraySpecs, name: str | None = None):
        offsets, total = {}, 0
        for key, (shape, dtype) in arrays.items():
            total = -(-total // 64) * 64  # 64-byte alignment
            offsets[key] = total
            total += int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.owner = name is None
        self.memory = shared_memory.SharedMemory(name=name or segment_name(), create=self.owner, size=max(total, 1))
        if self.owner:
            _reserve(self.memory, max(total, 1))
        self.spec = BlockSpec(self.memory.name, arrays)
        self.arrays = {
            key: np.ndarray(shape, dtype, buffer=self.memory.buf, offset=offsets[key])
            for key, (shape, dtype) in arrays.items()
        }
        if self.owner:
            for array in self.arrays.values():
                array.fill(0)
        _keep_mapped(self)

    @classmethod
    def attach(cls, spec: BlockSpec) -> SharedBlock:
        return cls(spec.arrays, spec.name)

    def close(self) -> None:
        """Unlink the segment; the mapping itself stays valid while any array still views it.

        numpy does not hold a buffer export on the mapping (an array keeps only a reference to
        the memoryview, which ``SharedMemory.close`` releases), so closing it at once would
        unmap memory an array, a stream's block or the compiled callback still reads. The
        mapping is closed once no array made here is alive (:func:`close_unused_mappings`)."""
        self.arrays = {}
        if self.owner:
            try:
                self.memory.unlink()
            except FileNotFoundError:
                pass
        close_unused_mappings()


# Every block's mapping, the block and the arrays made on it (views of an array keep it alive).
# Held here so that ``SharedMemory.__del__`` never unmaps it: a block dropped without close()
# and collected by the garbage collector, on whatever thread, while another thread still read
# its arrays, unmapped them under that thread (a segfault in a GUI test, once in five full runs).
_mappings: list[tuple[shared_memory.SharedMemory, weakref.ref, list[weakref.ref]]] = []
_mappings_lock = threading.Lock()


def _keep_mapped(block: SharedBlock) -> None:
    arrays = [weakref.ref(array) for array in block.arrays.values()]
    with _mappings_lock:
        _mappings.append((block.memory, weakref.ref(block), arrays))
    close_unused_mappings()


def close_unused_mappings() -> None:
    """Unmap every block's mapping once the block is closed or gone and its arrays are all gone."""
    with _mappings_lock:
        kept = []
        for memory, block_ref, arrays in _mappings:
            block = block_ref()
            in_use = (block is not None and block.arrays) or any(array() is not None for array in arrays)
            del block
            if not in_use:
                try:
                    memory.close()
                    continue
                except BufferError:  # a buffer export after all: next time
                    pass
            kept.append((memory, block_ref, arrays))
        _mappings[:] = kept


# -- commands (parent to process) and replies ---------------------------------------------------------


@dataclass(frozen=True)
class LoadModel:
    model: object  # an nn.Module; sent on the queue, not through the spawn pipe (see WorkerProcess)


@dataclass(frozen=True)
class Calibrate:
    window: object  # a WindowConfig
    headroom: float


@dataclass(frozen=True)
class StartSession:
    spec: SessionSpec
    blocks: dict[str, BlockSpec]  # the session's arrays, by name (``stems``, ``input``/``track``)


@dataclass(frozen=True)
class StopSession:
    pass


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Reply:
    command: str  # the command's class name
    value: object = None
    failure: Failure | None = None


@dataclass(frozen=True)
class SessionFailed:
    """The running session's worker failed (the process carries on serving)."""

    failure: Failure


@dataclass(frozen=True)
class _Exited:  # the reader thread's own note: the process is gone
    code: int | None


class WorkerProcess:
    """The parent's handle on the inference process.

    Only small arguments go through the spawn pipe; the model follows on the command queue,
    whose feeder thread does the writing. (Written by ``Process.start`` itself, a large model
    blocked the caller for ever when the child died before reading it.) One reader thread takes
    every reply, so a wait notices within ``REPLY_POLL_S`` that the process is gone, and every
    wait has a deadline.
    """

    def __init__(
        self,
        model,
        state_spec: BlockSpec,
        precision: str,
        threads: int,
        stream_rate: int,
        ready_timeout_s: float = READY_TIMEOUT_S,
        scheduling: str = "nice",
        backend: str = "torch",
    ):
        context = multiprocessing.get_context("spawn")
        self.commands, self.replies = context.Queue(), context.Queue()
        self.commands.cancel_join_thread()  # a dead child must not hold the parent at exit
        self.failure: Failure | None = None  # the running session's, once it reports one
        self._inbox: queue.Queue = queue.Queue()
        self._requests = threading.Lock()
        self.process = context.Process(
            target=_worker_main,
            name="stemdeck-worker",
            daemon=True,
            args=(state_spec, precision, threads, stream_rate, scheduling, backend, self.commands, self.replies),
        )
        start_deaf_to_ctrl_c(self.process)
        threading.Thread(target=self._read_replies, name="stemdeck-worker-replies", daemon=True).start()
        try:
            self._send(LoadModel(model), ready_timeout_s, "loading the model")
        except WorkerError:
            self.kill()
            raise

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def calibrate(self, window, headroom: float, timeout_s: float = READY_TIMEOUT_S):
        return self._request(Calibrate(window, headroom), timeout_s, "calibrating")

    def start(self, spec: SessionSpec, blocks: dict[str, BlockSpec], timeout_s: float = READY_TIMEOUT_S) -> None:
        self._request(StartSession(spec, blocks), timeout_s, f"starting the {spec.kind} session")

    def stop_session(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the session; a process that does not answer in time is ended (the next start
        needs a new one)."""
        if not self.alive:
            return
        try:
            self._request(StopSession(), timeout_s, "stopping the session")
        except WorkerError:
            self.kill()

    def kill(self) -> None:
        """End the process at once (the parent is about to exit without cleaning up)."""
        if self.process.is_alive():
            self.process.kill()
            self.process.join(QUIT_TIMEOUT_S)

    def close(self) -> None:
        if self.process.is_alive():
            self.commands.put(Quit())
            self.process.join(QUIT_TIMEOUT_S)
        self.kill()

    def _request(self, command, timeout_s: float, doing: str):
        with self._requests:
            while True:  # replies left from an earlier request that gave up waiting
                try:
                    self._inbox.get_nowait()
                except queue.Empty:
                    break
            if not self.alive:
                raise WorkerError(
                    f"the separation process is not running (exit code {self.exitcode}) for {doing}", "exited"
                )
            return self._send(command, timeout_s, doing)

    def _send(self, command, timeout_s: float, doing: str):
        self.commands.put(command)
        name, deadline = type(command).__name__, time.monotonic() + timeout_s
        while True:
            try:
                reply = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise WorkerError(
                    f"the separation process did not answer within {timeout_s:.0f} s "
                    f"({doing}); the machine may be overloaded",
                    "timeout",
                ) from None
            if isinstance(reply, _Exited):
                raise WorkerError(
                    f"the separation process exited (code {reply.code}) while {doing}; "
                    "check the model, free memory, or try --model tiny",
                    "exited",
                )
            if reply.command != name:
                continue  # a late answer to an earlier request
            if reply.failure is None:
                return reply.value
            if isinstance(command, LoadModel):
                raise WorkerError(
                    f"cannot load the model in the separation process: {reply.failure}", reply.failure.kind
                )
            raise WorkerError.refused(reply.failure)

    def _read_replies(self) -> None:
        """The only reader of ``replies``: session failures are kept, the rest go to the waiter."""
        while True:
            try:
                reply = self.replies.get(timeout=REPLY_POLL_S)
            except queue.Empty:
                if not self.process.is_alive():
                    self._inbox.put(_Exited(self.process.exitcode))
                    return
                continue
            except (EOFError, OSError, ValueError):  # the queue was closed under us
                self._inbox.put(_Exited(self.process.exitcode))
                return
            if isinstance(reply, SessionFailed):
                self.failure = reply.failure
            else:
                self._inbox.put(reply)


# -- the separation process ---------------------------------------------------------------------------


def _receive_model(commands, replies):
    """The model, sent after start (see :class:`WorkerProcess`); None if the parent is gone."""
    parent = multiprocessing.parent_process()
    while True:
        try:
            command = commands.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None
            continue
        except Exception as exc:  # a model that cannot be rebuilt here
            replies.put(Reply(LoadModel.__name__, failure=Failure.of(exc)))
            return None
        if isinstance(command, LoadModel):
            return command.model


def _load_exported_network(model, precision: str, backend: str) -> None:
    """An exported network compiled with the model, not at the first track's first window, whose
    stems it delayed (1-2 s for htdemucs on one thread). Its backend keeps it for the separators;
    where it cannot load, a session's separator says why."""
    import torch

    from stemdeck.engine.worker.separator import backend_network

    try:
        backend_network(model, precision, torch.device("cpu"), backend)
    except ValueError:
        pass


class _Server:
    """The process's state between commands: the model, its separators, the running session."""

    def __init__(
        self, model, shared, precision: str, stream_rate: int, replies, scheduling: str = "nice", backend: str = "torch"
    ):
        self.model, self.shared, self.precision, self.stream_rate = model, shared, precision, stream_rate
        self.backend = backend
        self.replies = replies
        self.policy = session_policy(scheduling)  # what each session's separation thread runs at
        self.session = None
        self.guard = None  # the IdleGuard of a session at idle
        self.blocks: list[SharedBlock] = []
        self.separators: dict = {}

    def separator_for(self, plan):
        from stemdeck.engine.worker.separator import WindowSeparator

        key = (plan.window_frames, plan.hop_frames, plan.lookahead_frames, plan.span_frames, plan.pad_to_segment)
        if key not in self.separators:
            self.separators.clear()
            self.separators[key] = WindowSeparator(
                self.model, plan, self.precision, stream_rate=self.stream_rate, backend=self.backend
            )
        return self.separators[key]

    def calibrate(self, command: Calibrate):
        from stemdeck.engine.worker.calibrate import calibrate
        from stemdeck.engine.worker.windows import WindowPlan

        segment = float(self.model.segment)
        return calibrate(
            lambda w: self.separator_for(WindowPlan.from_config(w, self.stream_rate, segment)),
            command.window,
            command.headroom,
            longest_window_s=segment,
        )

    def start(self, command: StartSession) -> None:
        from stemdeck.engine.worker.worker import build_worker

        self.stop()
        self.blocks = [SharedBlock.attach(spec) for spec in command.blocks.values()]
        arrays = {key: block.arrays[key] for key, block in zip(command.blocks, self.blocks, strict=True)}
        self.session = build_worker(command.spec, self.separator_for(command.spec.plan), self.shared, arrays)
        self.session.on_failure = lambda failure: self.replies.put(SessionFailed(failure))
        self.session.thread_setup = self._enter_policy
        if self.policy == IDLE:
            self.guard = IdleGuard(self.shared.audio, self.shared.worker, deck=command.spec.kind != LIVE)
            self.guard.start()
        self.session.start()

    def _enter_policy(self) -> None:
        enter_policy(self.policy)
        self.shared.worker[SCHEDULING] = self.policy

    def stop(self, command: StopSession | None = None) -> None:
        if self.guard is not None:
            self.guard.stop()
            self.guard = None
        if self.session is not None:
            self.session.stop()
            self.session = None
        for block in self.blocks:
            block.close()
        self.blocks = []


HANDLERS = {Calibrate: _Server.calibrate, StartSession: _Server.start, StopSession: _Server.stop}


def _next_command(commands):
    """The next command; Quit when the parent died without saying so."""
    parent = multiprocessing.parent_process()
    while True:
        try:
            return commands.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return Quit()


def _worker_main(state_spec, precision, threads, stream_rate, scheduling, backend, commands, replies) -> None:
    """Entry point of the inference process."""
    ignore_ctrl_c()
    from stemdeck.engine.audio.state import SharedState
    from stemdeck.engine.runtime import configure_separation_process
    from stemdeck.engine.worker.worker import warm_up_worker_kernels

    model = _receive_model(commands, replies)
    if model is None:
        return
    configure_separation_process(threads, WORKER_NICENESS)  # a session may go to idle later
    warm_up_worker_kernels(len(model.sources), int(getattr(model, "audio_channels", 2)))
    _load_exported_network(model, precision, backend)
    state_block = SharedBlock.attach(state_spec)
    server = _Server(model, SharedState(**state_block.arrays), precision, stream_rate, replies, scheduling, backend)
    replies.put(Reply(LoadModel.__name__))
    while not isinstance(command := _next_command(commands), Quit):
        name = type(command).__name__
        try:
            replies.put(Reply(name, HANDLERS[type(command)](server, command)))
        except Exception as exc:  # reported to the parent, the process keeps serving
            replies.put(Reply(name, failure=Failure.of(exc)))
    server.stop()
    state_block.close()
