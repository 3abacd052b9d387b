"""Inference in its own process, so the audio callback never waits for the interpreter lock.

The worker process loads the model once, then runs one separation session at a time (live
input or a deck) on arrays in shared memory: the rings, the track and its stems, and the
``SharedState`` counters. Commands go over a queue; the audio side never talks to it.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import secrets
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

READY_TIMEOUT_S = 300.0
WORKER_NICENESS = 10
ArraySpecs = dict[str, tuple[tuple[int, ...], str]]


class WorkerError(RuntimeError):
    """The separation process refused a request or failed; the message says why."""


@dataclass(frozen=True)
class BlockSpec:
    """Enough to attach to a :class:`SharedBlock` from another process."""

    name: str
    arrays: ArraySpecs


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
            name=name or f"stemdeck-{secrets.token_hex(6)}", create=self.owner, size=max(total, 1))
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
    """The parent's handle on the inference process."""

    def __init__(self, model, state_spec: BlockSpec, precision: str, threads: int, stream_rate: int):
        context = multiprocessing.get_context("spawn")
        self.commands, self.replies = context.Queue(), context.Queue()
        self.process = context.Process(target=_worker_main, name="stemdeck-worker", daemon=True,
                                       args=(model, state_spec, precision, threads, stream_rate, self.commands,
                                             self.replies))
        self.process.start()
        self._expect("ready", READY_TIMEOUT_S)
        self.error: str | None = None

    def calibrate(self, window, headroom: float):
        self.commands.put(("calibrate", window, headroom))
        return self._expect("calibrated", READY_TIMEOUT_S)

    def start(self, kind: str, plan, blocks: dict[str, BlockSpec], cue_frames: int = 0, cache_path=None) -> None:
        self.commands.put(("start", kind, plan, blocks, cue_frames, cache_path))
        self._expect("started", READY_TIMEOUT_S)

    def stop_session(self) -> None:
        if self.process.is_alive():
            self.commands.put(("stop",))
            self._expect("stopped", 30.0)

    def poll_error(self) -> str | None:
        try:
            while True:
                kind, payload = self.replies.get_nowait()
                if kind == "error":
                    self.error = payload
        except queue.Empty:
            pass
        if self.error is None and not self.process.is_alive():
            self.error = f"the separation process exited (code {self.process.exitcode})"
        return self.error

    def kill(self) -> None:
        """End the process at once (the parent is about to exit without cleaning up)."""
        if self.process.is_alive():
            self.process.kill()

    def close(self) -> None:
        if self.process.is_alive():
            self.commands.put(("quit",))
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()

    def _expect(self, expected: str, timeout_s: float):
        while True:
            try:
                kind, payload = self.replies.get(timeout=timeout_s)
            except queue.Empty:
                raise WorkerError(f"the separation process did not answer ({expected})") from None
            if kind == expected:
                return payload
            if kind == "error":
                raise WorkerError(payload.split(": ", 1)[-1] if payload.startswith("ValueError") else payload)


def _worker_main(model, state_spec, precision, threads, stream_rate, commands, replies) -> None:
    """Entry point of the inference process."""
    from .calibrate import calibrate
    from .separator import WindowSeparator
    from .state import SharedState
    from .windows import WindowPlan
    from .worker import DeckWorker, LiveWorker, warm_up_worker_kernels

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
                _, kind, plan, specs, cue, cache_path = command
                blocks = [SharedBlock.attach(spec) for spec in specs.values()]
                arrays = {key: block.arrays[key] for key, block in zip(specs, blocks)}
                separator = separator_for(plan)
                if kind == "live":
                    session = LiveWorker(separator, plan, shared, arrays["stems"], arrays["input"])
                else:
                    session = DeckWorker(separator, plan, shared, arrays["stems"], arrays["track"], cue, cache_path)
                session.on_error = lambda message: replies.put(("error", message))
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
