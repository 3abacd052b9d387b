"""Inference in its own process, so the audio callback never waits for the interpreter lock.

The worker process loads the model once, then runs one separation session at a time (live
input or a deck) on arrays in shared memory: the rings, the track and its stems, and the
``SharedState`` counters. Commands go over a queue; the audio side never talks to it.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import re
import secrets
import threading
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

READY_TIMEOUT_S = 300.0  # loading and warming a large model on a slow machine
STOP_TIMEOUT_S = 30.0
QUIT_TIMEOUT_S = 10.0
REPLY_POLL_S = 0.1  # how soon a dead process is noticed by whoever waits on it
WORKER_NICENESS = 10
SEGMENT_PREFIX = "stemdeck"
SHM_FOLDER = Path("/dev/shm")
ArraySpecs = dict[str, tuple[tuple[int, ...], str]]


class WorkerError(RuntimeError):
    """The separation process refused a request or failed; the message says why."""


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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class SharedBlock:
    """Several numpy arrays in one shared-memory segment."""

    def __init__(self, arrays: ArraySpecs, name: str | None = None):
        offsets, total = {}, 0
        for key, (shape, dtype) in arrays.items():
            total = -(-total // 64) * 64  # 64-byte alignment
            offsets[key] = total
            total += int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.owner = name is None
        self.memory = shared_memory.SharedMemory(
            name=name or segment_name(), create=self.owner, size=max(total, 1))
        self.spec = BlockSpec(self.memory.name, arrays)
        self.arrays = {key: np.ndarray(shape, dtype, buffer=self.memory.buf, offset=offsets[key])
                       for key, (shape, dtype) in arrays.items()}
        if self.owner:
            for array in self.arrays.values():
                array.fill(0)

    @classmethod
    def attach(cls, spec: BlockSpec) -> "SharedBlock":
        return cls(spec.arrays, spec.name)

    def close(self) -> None:
        """Unlink the segment; the mapping itself stays valid while any array still views it."""
        self.arrays = {}
        if self.owner:
            try:
                self.memory.unlink()
            except FileNotFoundError:
                pass
        try:
            self.memory.close()
        except BufferError:  # views remain (e.g. a stream's last block): unmapped when they go
            pass


class WorkerProcess:
    """The parent's handle on the inference process.

    Only small arguments go through the spawn pipe; the model follows on the command queue,
    whose feeder thread does the writing. (Written by ``Process.start`` itself, a large model
    blocked the caller for ever when the child died before reading it.) One reader thread takes
    every reply, so a wait notices within ``REPLY_POLL_S`` that the process is gone, and every
    wait has a deadline.
    """

    def __init__(self, model, state_spec: BlockSpec, precision: str, threads: int, stream_rate: int,
                 ready_timeout_s: float = READY_TIMEOUT_S):
        context = multiprocessing.get_context("spawn")
        self.commands, self.replies = context.Queue(), context.Queue()
        self.commands.cancel_join_thread()  # a dead child must not hold the parent at exit
        self.error: str | None = None
        self._inbox: queue.Queue = queue.Queue()
        self._requests = threading.Lock()
        self.process = context.Process(target=_worker_main, name="stemdeck-worker", daemon=True,
                                       args=(state_spec, precision, threads, stream_rate, self.commands,
                                             self.replies))
        self.process.start()
        threading.Thread(target=self._read_replies, name="stemdeck-worker-replies", daemon=True).start()
        self.commands.put(("model", model))
        try:
            self._expect("ready", ready_timeout_s, "loading the model")
        except WorkerError:
            self.kill()
            raise

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def calibrate(self, window, headroom: float, timeout_s: float = READY_TIMEOUT_S):
        return self._request(("calibrate", window, headroom), "calibrated", timeout_s, "calibrating")

    def start(self, kind: str, plan, blocks: dict[str, BlockSpec], cue_frames: int = 0, cache_path=None,
              resume: bool = False, timeout_s: float = READY_TIMEOUT_S) -> None:
        """``resume``: take over a session whose process died, keeping the stems it finished."""
        self._request(("start", kind, plan, blocks, cue_frames, cache_path, resume), "started", timeout_s,
                      f"starting the {kind} session")

    def stop_session(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the session; a process that does not answer in time is ended (the next start
        needs a new one)."""
        if not self.alive:
            return
        try:
            self._request(("stop",), "stopped", timeout_s, "stopping the session")
        except WorkerError:
            self.kill()

    def poll_error(self) -> str | None:
        """The running session's failure, if it reported one (a dead process is the caller's to
        notice); a refused command raises :class:`WorkerError` instead."""
        return self.error

    def kill(self) -> None:
        """End the process at once (the parent is about to exit without cleaning up)."""
        if self.process.is_alive():
            self.process.kill()
            self.process.join(QUIT_TIMEOUT_S)

    def close(self) -> None:
        if self.process.is_alive():
            self.commands.put(("quit",))
            self.process.join(QUIT_TIMEOUT_S)
        self.kill()

    def _request(self, command: tuple, expected: str, timeout_s: float, doing: str):
        with self._requests:
            while True:  # replies left from an earlier request that gave up waiting
                try:
                    self._inbox.get_nowait()
                except queue.Empty:
                    break
            if not self.alive:
                raise WorkerError(f"the separation process is not running (exit code {self.exitcode}) "
                                  f"for {doing}")
            self.commands.put(command)
            return self._expect(expected, timeout_s, doing)

    def _expect(self, expected: str, timeout_s: float, doing: str):
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                kind, payload = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise WorkerError(f"the separation process did not answer within {timeout_s:.0f} s "
                                  f"({doing}); the machine may be overloaded") from None
            if kind == expected:
                return payload
            if kind == "exited":
                raise WorkerError(f"the separation process exited (code {payload}) while {doing}; "
                                  "check the model, free memory, or try --model tiny")
            if kind == "error":
                raise WorkerError(payload.split(": ", 1)[-1] if payload.startswith("ValueError") else payload)

    def _read_replies(self) -> None:
        """The only reader of ``replies``: session errors are kept, the rest go to the waiter."""
        while True:
            try:
                kind, payload = self.replies.get(timeout=REPLY_POLL_S)
            except queue.Empty:
                if not self.process.is_alive():
                    self._inbox.put(("exited", self.process.exitcode))
                    return
                continue
            except (EOFError, OSError, ValueError):  # the queue was closed under us
                self._inbox.put(("exited", self.process.exitcode))
                return
            if kind == "session-error":
                self.error = payload
            else:
                self._inbox.put((kind, payload))


def _receive_model(commands, replies):
    """The model, sent after start (see :class:`WorkerProcess`); None if the parent is gone."""
    parent = multiprocessing.parent_process()
    while True:
        try:
            kind, model = commands.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None
            continue
        except Exception as exc:  # a model that cannot be rebuilt here
            replies.put(("error", f"cannot load the model in the separation process: {type(exc).__name__}: {exc}"))
            return None
        if kind == "model":
            return model


def _worker_main(state_spec, precision, threads, stream_rate, commands, replies) -> None:
    """Entry point of the inference process."""
    from .calibrate import calibrate
    from .separator import WindowSeparator
    from .state import SharedState
    from .windows import WindowPlan
    from .worker import DeckWorker, LiveWorker, warm_up_worker_kernels

    model = _receive_model(commands, replies)
    if model is None:
        return
    os.nice(WORKER_NICENESS)  # the audio path (and the GUI) go first when the CPU is short
    warm_up_worker_kernels(len(model.sources), int(getattr(model, "audio_channels", 2)))
    state_block = SharedBlock.attach(state_spec)
    shared = SharedState(**state_block.arrays)
    session, blocks, separators = None, [], {}

    def separator_for(plan):
        key = (plan.window_frames, plan.hop_frames, plan.lookahead_frames, plan.span_frames, plan.pad_to_segment)
        if key not in separators:
            separators.clear()
            separators[key] = WindowSeparator(model, plan, precision, threads=threads, stream_rate=stream_rate)
        return separators[key]

    def stop_session():
        nonlocal session, blocks
        if session is not None:
            session.stop()
            session = None
        for block in blocks:
            block.close()
        blocks = []

    replies.put(("ready", None))
    parent = multiprocessing.parent_process()
    while True:
        try:
            command = commands.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                command = ("quit",)  # the parent died without saying so
            else:
                continue
        try:
            if command[0] == "calibrate":
                _, window, headroom = command
                samplerate, segment = stream_rate, float(model.segment)
                result = calibrate(lambda w: separator_for(WindowPlan.from_config(w, samplerate, segment)),
                                   window, headroom)
                replies.put(("calibrated", result))
            elif command[0] == "start":
                stop_session()
                _, kind, plan, specs, cue, cache_path, resume = command
                blocks = [SharedBlock.attach(spec) for spec in specs.values()]
                arrays = {key: block.arrays[key] for key, block in zip(specs, blocks)}
                separator = separator_for(plan)
                if kind == "live":
                    session = LiveWorker(separator, plan, shared, arrays["stems"], arrays["input"])
                else:
                    session = DeckWorker(separator, plan, shared, arrays["stems"], arrays["track"], cue, cache_path,
                                         resume)
                session.on_error = lambda message: replies.put(("session-error", message))
                session.start()
                replies.put(("started", None))
            elif command[0] == "stop":
                stop_session()
                replies.put(("stopped", None))
            elif command[0] == "quit":
                stop_session()
                break
        except Exception as exc:  # reported to the parent, the process keeps serving
            replies.put(("error", f"{type(exc).__name__}: {exc}"))
    state_block.close()
