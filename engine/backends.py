"""Where separation runs: a thread of this process, or a process of its own.

Both implement :class:`WorkerBackend`; the engine picks one by ``EngineConfig.worker`` once
and never asks again. The process backend also supervises: a separation process that dies
mid-session is restarted (a bounded number of times) while the audio plays the dry signal.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Protocol

import numpy as np
from torch import nn

from stemdeck.engine.audio.state import SharedState, playhead_frames
from stemdeck.engine.config import EngineConfig, WindowConfig
from stemdeck.engine.runtime import inference_threads
from stemdeck.engine.session import DECK, SessionSpec, WorkerError
from stemdeck.engine.worker.calibrate import Calibration, calibrate
from stemdeck.engine.worker.process import (
    ArraySpecs,
    BlockSpec,
    SharedBlock,
    SharedMemoryFull,
    WorkerProcess,
    clean_stale_segments,
)
from stemdeck.engine.worker.separator import WindowSeparator
from stemdeck.engine.worker.windows import WindowPlan
from stemdeck.engine.worker.worker import SeparationWorker, build_worker, warm_up_worker_kernels

# A separation process that dies (killed for memory, say) is restarted while the audio plays
# dry; more deaths than this within the window means something is wrong with it: give up.
MAX_WORKER_RESTARTS = 3
WORKER_RESTART_WINDOW_S = 60.0
SUPERVISE_POLL_S = 0.1
SUPERVISOR_JOIN_TIMEOUT_S = 30.0  # a restart under way (a process starting) ends first


class WorkerBackend(Protocol):
    """What the engine asks of whatever runs the separation."""

    shared: SharedState  # the counters and controls, where the worker can reach them
    memory: SessionMemory  # where they live: shared memory another process can attach to

    def calibrate(self, window: WindowConfig, headroom: float) -> Calibration: ...

    def allocate(self, arrays: ArraySpecs) -> dict[str, np.ndarray]:
        """Zeroed buffers for the next session, where the worker can reach them."""

    def start(self, spec: SessionSpec, arrays: dict[str, np.ndarray]) -> None: ...

    def stop_session(self) -> None: ...

    def failure(self) -> str | None:
        """Why separation stopped for good in this session, in one line; None while it runs."""

    def notice(self) -> str | None:
        """A failure it recovered from (a restart), in one line."""

    def abort(self) -> None:
        """End the worker at once: the program is leaving without cleaning up."""

    def close(self) -> SharedState:
        """Stop and free everything; returns the last state, still readable."""


def make_backend(model: nn.Module, config: EngineConfig) -> WorkerBackend:
    backends = {"thread": ThreadBackend, "process": ProcessBackend}
    if config.worker not in backends:
        raise ValueError(f"worker must be 'process' or 'thread', got {config.worker!r}")
    return backends[config.worker](model, config)


def _separator(model: nn.Module, config: EngineConfig, plan: WindowPlan) -> WindowSeparator:
    return WindowSeparator(model, plan, config.precision, stream_rate=config.samplerate, backend=config.network_backend)


def _plan(model: nn.Module, config: EngineConfig, window: WindowConfig) -> WindowPlan:
    return WindowPlan.from_config(window, config.samplerate, float(model.segment))


class SessionMemory:
    """The shared state and each session's arrays (track, stems, rings) in shared memory, so a
    process can attach to them: the separation process, and the deck's stretch process whichever
    backend separates. A session's arrays are freed one session later: a running stream may
    still read them for one more block."""

    def __init__(self, num_stems: int):
        clean_stale_segments()
        self.state_block = SharedBlock(SharedState.specs(num_stems))
        self.shared = SharedState.create(num_stems, self.state_block.arrays)
        self.blocks: list[SharedBlock] = []
        self.retired: list[SharedBlock] = []
        self.keys: tuple[str, ...] = ()

    def allocate(self, arrays: ArraySpecs) -> dict[str, np.ndarray]:
        blocks: list[SharedBlock] = []
        try:
            for key, spec in arrays.items():
                blocks.append(SharedBlock({key: spec}))
        except SharedMemoryFull:
            for block in blocks:  # the track's block made, its stems' refused: none is kept
                block.close()
            raise
        self.blocks, self.keys = blocks, tuple(arrays)
        return {key: block.arrays[key] for key, block in zip(arrays, self.blocks, strict=True)}

    def specs(self) -> dict[str, BlockSpec]:
        """The state's block (``state``) and the session's, by array name, to attach to."""
        return {"state": self.state_block.spec, **{k: b.spec for k, b in zip(self.keys, self.blocks, strict=True)}}

    def retire(self) -> None:
        for block in self.retired:
            block.close()
        self.retired, self.blocks = self.blocks, []

    def close(self) -> SharedState:
        """Free every segment; returns a copy of the last state, still readable."""
        for block in self.retired + self.blocks:
            block.close()
        self.retired, self.blocks = [], []
        if self.state_block.arrays:
            self.shared = SharedState(**{key: array.copy() for key, array in self.state_block.arrays.items()})
            self.state_block.close()
        return self.shared


class ThreadBackend:
    """Separation in a thread of this process. Inference then shares the interpreter lock with
    the audio callback, and torch's thread count is this process's (its entry point's choice).
    The arrays are in shared memory all the same, for the deck's stretch process."""

    def __init__(self, model: nn.Module, config: EngineConfig):
        self.model, self.config = model, config
        self.memory = SessionMemory(len(model.sources))
        self.shared = self.memory.shared
        self.worker: SeparationWorker | None = None

    def calibrate(self, window: WindowConfig, headroom: float) -> Calibration:
        return calibrate(
            lambda w: _separator(self.model, self.config, _plan(self.model, self.config, w)),
            window,
            headroom,
            longest_window_s=float(self.model.segment),
        )

    def allocate(self, arrays: ArraySpecs) -> dict[str, np.ndarray]:
        return self.memory.allocate(arrays)

    def start(self, spec: SessionSpec, arrays: dict[str, np.ndarray]) -> None:
        separator = _separator(self.model, self.config, spec.plan)
        separator.warm_up(1)
        warm_up_worker_kernels(len(self.model.sources), self.config.channels)
        self.worker = build_worker(spec, separator, self.shared, arrays)
        self.worker.start()

    def stop_session(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self.memory.retire()

    def failure(self) -> str | None:
        worker = self.worker
        return str(worker.failure) if worker is not None and worker.failure is not None else None

    def notice(self) -> str | None:
        return None

    def abort(self) -> None:
        if self.worker is not None:
            self.worker.stop_event.set()  # a daemon thread: it ends with the program

    def close(self) -> SharedState:
        self.stop_session()
        self.shared = self.memory.close()
        return self.shared


class ProcessBackend:
    """Separation in its own process, on shared memory: inference never holds this process's
    interpreter lock, so the audio callback never waits on it."""

    def __init__(self, model: nn.Module, config: EngineConfig):
        self.model, self.config = model, config
        self.memory = SessionMemory(len(model.sources))
        self.shared = self.memory.shared
        self.process: WorkerProcess | None = None
        self._session: tuple[SessionSpec, dict[str, BlockSpec]] | None = None  # to restart a dead worker
        self._lock = threading.RLock()
        self._supervisor: threading.Thread | None = None
        self._closing = threading.Event()
        self._restart_times: list[float] = []
        self._notice: str | None = None
        self._fatal: str | None = None
        self.restart_s: float | None = None  # how long the last restart took

    def calibrate(self, window: WindowConfig, headroom: float) -> Calibration:
        return self._worker_process().calibrate(window, headroom)

    def allocate(self, arrays: ArraySpecs) -> dict[str, np.ndarray]:
        return self.memory.allocate(arrays)

    def start(self, spec: SessionSpec, arrays: dict[str, np.ndarray]) -> None:
        blocks = {key: block.spec for key, block in zip(arrays, self.memory.blocks, strict=True)}
        with self._lock:
            self._worker_process().start(spec, blocks)
            self._session = (spec, blocks)
            self._fatal = self._notice = None  # a new session starts afresh
        self._supervise()

    def stop_session(self) -> None:
        with self._lock:
            self._session = None  # nothing for the supervisor to restart
            if self.process is not None:
                self.process.stop_session()
        self.memory.retire()

    def failure(self) -> str | None:
        return self._fatal  # failures short of the restart limit are notices

    def notice(self) -> str | None:
        return self._notice

    def abort(self) -> None:
        if self.process is not None:
            self.process.kill()

    def close(self) -> SharedState:
        """Keep the last counters readable (status after stop), then free the segments."""
        self._closing.set()
        self._join_supervisor()
        self.stop_session()
        with self._lock:
            if self.process is not None:
                self.process.close()
                self.process = None
        self.shared = self.memory.close()
        return self.shared

    def _worker_process(self) -> WorkerProcess:
        with self._lock:
            if self.process is not None and not self.process.alive:
                self.process.close()
                self.process = None
            if self.process is None:
                self.process = WorkerProcess(
                    self.model,
                    self.memory.state_block.spec,
                    self.config.precision,
                    inference_threads(self.config.inference_threads),
                    self.config.samplerate,
                    scheduling=self.config.worker_scheduling,
                    backend=self.config.network_backend,
                )
            return self.process

    # -- the supervisor ------------------------------------------------------------------------------

    def _supervise(self) -> None:
        """Start (once) the thread that restarts a separation process that died mid-session."""
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise_loop, name="stemdeck-supervisor", daemon=True)
            self._supervisor.start()

    def _join_supervisor(self) -> None:
        """The supervisor ends here, not later on its own: a daemon thread still running when the
        interpreter exits, dropping the last reference to the model (its tensors release the
        interpreter lock as they go), is ended inside torch's C++ frames: "terminate called
        without an active exception" and an abort at exit."""
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(SUPERVISOR_JOIN_TIMEOUT_S)

    def _supervise_loop(self) -> None:
        while not self._closing.wait(SUPERVISE_POLL_S):
            process = self.process
            failed = process is not None and (not process.alive or process.failure is not None)
            if failed and self._session is not None:
                self._restart(process)

    def _restart(self, dead: WorkerProcess) -> None:
        """A new process takes the session over from the playhead; until it delivers, the
        callback plays the latency-aligned dry signal, as for a late window."""
        with self._lock:
            if self.process is not dead or self._session is None or self._closing.is_set():
                return  # stopped or replaced meanwhile
            dead.close()  # a session that failed leaves its process running: end it
            began = time.monotonic()
            last = str(dead.failure) if dead.failure is not None else f"it exited with code {dead.exitcode}"
            while self._count_restart():
                self._notice = (
                    f"the separation process failed ({last}); playing the dry signal "
                    f"while it restarts ({len(self._restart_times)} of {MAX_WORKER_RESTARTS})"
                )
                spec, blocks = self._session
                cue = playhead_frames(self.shared) if spec.kind == DECK else 0
                try:
                    self._worker_process().start(dataclasses.replace(spec, cue_frames=cue, resume=True), blocks)
                except WorkerError as exc:
                    last = str(exc)
                    continue
                self.restart_s = time.monotonic() - began
                self._notice = (
                    f"the separation process failed ({last}); restarted it in "
                    f"{self.restart_s:.1f} s, the dry signal played meanwhile"
                )
                return
            self._session = None
            self._fatal = (
                f"the separation process failed {len(self._restart_times)} times within "
                f"{WORKER_RESTART_WINDOW_S:.0f} s (last: {last}); the dry signal plays on; "
                "restart stemdeck or try a smaller model (--model tiny)"
            )

    def _count_restart(self) -> bool:
        """Record one more restart; False once the recent ones exceed the limit."""
        now = time.monotonic()
        self._restart_times = [t for t in self._restart_times if now - t < WORKER_RESTART_WINDOW_S] + [now]
        return len(self._restart_times) <= MAX_WORKER_RESTARTS
