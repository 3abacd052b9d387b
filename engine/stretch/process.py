"""The deck's stretch stage in a process of its own, so Rubber Band never holds the interpreter
lock of the process whose audio callback runs Python every block.

One process per engine (per deck), spawned on the first change of tempo or key off unity and
kept for the engine's life. It attaches to the stretch rings (allocated here, in shared memory)
once, and to each loaded track's blocks (the state, track and stems the separation worker
writes, :class:`engine.backends.SessionMemory`) as the track comes. The parent sends commands
down a pipe (a track, a wake-up, quit); the process answers in plain bytes (ready, loaded, or
a failure's message), so the parent unpickles nothing. A process that dies is restarted
(``StageConfig.max_restarts`` times within ``restart_window_s``): meanwhile the callback plays
the source unstretched from its playhead (no epoch to join), and one line says so.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # noqa: F401 - its exit handler registered before ours (below)
import threading
import time
from dataclasses import dataclass
from signal import SIG_IGN, SIGINT
from signal import signal as handle_signal

import numpy as np

from stemdeck.engine.audio.state import SEEK_SEEN, SEEK_SERIAL
from stemdeck.engine.audio.stretched import DRAINED, FED, RUNNING, TEMPO, StretchBuffers, stretch_active
from stemdeck.engine.runtime import start_deaf_to_ctrl_c
from stemdeck.engine.stretch.stage import (
    StageConfig,
    StageInputs,
    StretchStage,
    backlog_frames,
    raise_priority,
    unpublish,
    warm_up_stage,
)
from stemdeck.engine.worker.process import BlockSpec, SharedBlock

READY, LOADED, FAILED = b"ready", b"loaded", b"failed:"
LOAD_TIMEOUT_S = 5.0  # a running process takes a new track at its next chunk (milliseconds)
QUIT_TIMEOUT_S = 5.0

# Set when the program starts to exit: multiprocessing's exit handler then ends the daemonic
# stage process, which is no death to restart from. It must run before that handler (handlers
# run last registered first, and multiprocessing.util registers its own on import).
_exiting = threading.Event()
atexit.register(_exiting.set)


@dataclass(frozen=True)
class LoadTrack:
    blocks: dict[str, BlockSpec]  # ``state`` (SharedState), ``track``, ``stems``
    crossfade_frames: int  # the loop seam's


@dataclass(frozen=True)
class Wake:
    pass


@dataclass(frozen=True)
class Quit:
    pass


# -- the stage process --------------------------------------------------------------------------------


class _StageServer:
    """The process's state between commands: the rings, the track's blocks, its stage."""

    def __init__(self, stretch: StretchBuffers, samplerate: int, config: StageConfig):
        self.stretch, self.samplerate, self.config = stretch, samplerate, config
        self.blocks: dict[str, SharedBlock] = {}
        self.stage: StretchStage | None = None
        num_stems, channels = stretch.stems.shape[:2]
        self.stretcher = warm_up_stage(num_stems, channels, samplerate, config)

    def load(self, command: LoadTrack) -> None:
        self.close_track()
        try:
            self.blocks = {key: SharedBlock.attach(spec) for key, spec in command.blocks.items()}
        except FileNotFoundError:  # freed already: tracks loaded while this process started
            self.close_track()  # the newest follows in the pipe
            return
        state = self.blocks["state"].arrays
        inputs = StageInputs(
            self.blocks["track"].arrays["track"],
            self.blocks["stems"].arrays["stems"],
            state["audio"],
            state["worker"],
            state["transport"],
        )
        self.stage = StretchStage(
            inputs, self.stretch, self.samplerate, command.crossfade_frames, self.config, self.stretcher
        )

    def close_track(self) -> None:
        self.stage = None
        for block in self.blocks.values():
            block.close()
        self.blocks = {}

    def serve(self, connection) -> None:
        """Step the stage; between steps, take the parent's commands (at once while busy, else
        after a poll: short while stretching, long while idle, a wake-up cutting it short)."""
        while True:
            busy = self.stage is not None and self.stage.step()
            active = stretch_active(self.stretch.controls)
            wait_s = 0.0 if busy else self.config.poll_s if active else self.config.idle_poll_s
            if not connection.poll(wait_s):
                continue
            command = connection.recv()  # our parent's: EOFError when it is gone
            if isinstance(command, Quit):
                return
            if isinstance(command, LoadTrack):
                self.load(command)
                connection.send_bytes(LOADED)


def _stage_main(stretch_spec: BlockSpec, samplerate: int, config: StageConfig, connection) -> None:
    """Entry point of the stage process. Ctrl-C is the program's to handle; a program gone
    (its pipe closed) ends this quietly; a failure is told to the parent in one line."""
    handle_signal(SIGINT, SIG_IGN)
    raise_priority()
    stretch_block, server = SharedBlock.attach(stretch_spec), None
    try:
        server = _StageServer(StretchBuffers.of(stretch_block.arrays), samplerate, config)
        connection.send_bytes(READY)
        server.serve(connection)
    except (EOFError, BrokenPipeError):  # the program is gone
        return
    except Exception as exc:  # noqa: BLE001 - said to the parent, which plays on unstretched
        try:
            connection.send_bytes(FAILED + f"{type(exc).__name__}: {exc}".encode(errors="replace"))
        except OSError:
            pass
        raise SystemExit(1) from None
    finally:
        if server is not None:
            server.close_track()
        stretch_block.close()


# -- the parent's handle ------------------------------------------------------------------------------


class StageProcess:
    """One deck's stretch process, seen from the engine: started on demand, told each track,
    woken by each change, supervised (restarted while the source plays on unstretched)."""

    def __init__(self, num_stems: int, channels: int, samplerate: int, config: StageConfig = StageConfig()):
        self.samplerate, self.config = samplerate, config
        self._block = SharedBlock(StretchBuffers.specs(num_stems, channels, config.ring_frames))
        self.buffers = StretchBuffers.of(self._block.arrays)
        self.buffers.controls[TEMPO] = 1.0
        self.error: str | None = None  # why the deck stays unstretched for good, in one line
        self.notice: str | None = None  # the last restart, in one line
        self._track: LoadTrack | None = None
        self._audio: np.ndarray | None = None  # the loaded track's slots, for the waits
        self._transport: np.ndarray | None = None
        self._process = None
        self._connection = None
        self._ready = threading.Event()
        self._loaded = threading.Event()
        self._failure: str | None = None  # the running process's last word
        self._lock = threading.RLock()  # one writer of the pipe and of the process handle
        self._stopped = False
        self._restart_times: list[float] = []

    # -- lifetime ----------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def ensure_started(self, wait: bool = True) -> None:
        """The process, started if it is not (nor given up on); with ``wait``, until it serves."""
        with self._lock:
            if self.error is not None or _exiting.is_set():
                return
            self._stopped = False
            if self._process is None:
                self._spawn()
        if wait:
            self._ready.wait(self.config.ready_timeout_s)

    def load(self, blocks: dict[str, BlockSpec], crossfade_frames: int, audio: np.ndarray, transport: np.ndarray):
        """A new track: the process stretches from its blocks (at once if it runs; when it
        starts otherwise). Waits until a running process has left the last track's."""
        with self._lock:
            self._track = LoadTrack(blocks, crossfade_frames)
            self._audio, self._transport = audio, transport
            if self._process is None:
                return  # the process takes it when it starts
            serving = self._ready.is_set()  # else it reads the track once it does
            self._loaded.clear()
            self._send(self._track)
        if serving:
            self._loaded.wait(LOAD_TIMEOUT_S)

    def wake(self) -> None:
        """Tempo or key changed: look now rather than at the next idle poll."""
        with self._lock:
            if self._process is not None:
                self._send(Wake())

    def stop(self) -> None:
        """End the process (it is started again by the next change off unity or track)."""
        with self._lock:
            self._stopped = True
            process, connection = self._process, self._connection
            self._process = self._connection = None
        if process is None:
            return
        try:
            connection.send(Quit())
        except OSError:
            pass
        process.join(QUIT_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join(QUIT_TIMEOUT_S)
        connection.close()

    def close(self) -> None:
        """Stop, and free the rings (their views stay readable while anything holds them)."""
        self.stop()
        self._block.close()

    # -- the waits of tests and offline drivers ----------------------------------------------------------

    def backlog_frames(self) -> int:
        return 0 if self._audio is None else backlog_frames(self.buffers.state, self._audio)

    @property
    def fed_frames(self) -> int:
        """Source frames fed into the current epoch's stretcher."""
        return int(self.buffers.state[FED])

    def wait_ahead(self, frames: int, timeout_s: float = 10.0) -> bool:
        """Block (never in the callback) until ``frames`` output frames are ready, or the stage
        idles (unity tempo and key); False on timeout or failure."""
        deadline = time.perf_counter() + timeout_s
        while self.error is None and time.perf_counter() < deadline:
            if not stretch_active(self.buffers.controls) or self._transport[SEEK_SERIAL] != self._audio[SEEK_SEEN]:
                return True  # nothing to wait for, or the callback must apply a seek first
            if self.backlog_frames() >= min(frames, self.config.fill_frames):
                return True
            state = self.buffers.state
            if state[RUNNING] and state[DRAINED]:
                return True  # all there will be is in the ring
            time.sleep(0.0005)
        return False

    # -- the process and its supervision -----------------------------------------------------------------

    def _spawn(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self._ready.clear()
        self._failure = None
        process = context.Process(
            target=_stage_main,
            args=(self._block.spec, self.samplerate, self.config, child_end),
            name="stemdeck-stretch",
            daemon=True,
        )
        unpublish(self.buffers.state)  # no process writes the slots now: the source plays on
        start_deaf_to_ctrl_c(process)
        child_end.close()
        self._process, self._connection = process, parent_end
        if self._track is not None:
            self._send(self._track)  # read once it serves
        threading.Thread(
            target=self._listen, args=(process, parent_end), name="stemdeck-stretch-replies", daemon=True
        ).start()

    def _send(self, command) -> None:
        try:
            self._connection.send(command)
        except OSError:  # it died: its listener restarts it
            pass

    def _listen(self, process, connection) -> None:
        """The only reader of this process's answers; its end (a closed pipe) is its death."""
        while True:
            try:
                reply = connection.recv_bytes()
            except (EOFError, OSError):
                break
            if reply == READY:
                self._ready.set()
            elif reply == LOADED:
                self._loaded.set()
            elif reply.startswith(FAILED):
                self._failure = reply[len(FAILED) :].decode(errors="replace")
        process.join(QUIT_TIMEOUT_S)
        self._died(process)

    def _died(self, process) -> None:
        """Play on unstretched; start a new process unless it died too often."""
        with self._lock:
            if process is not self._process or self._stopped or _exiting.is_set():
                return  # stopped, or replaced meanwhile
            self._process = None
            self._connection.close()
            unpublish(self.buffers.state)  # its writer is gone: the callback plays the source
            last = self._failure or f"it exited with code {process.exitcode}"
            if self._count_restart():
                self.notice = (
                    f"the time-stretch process failed ({last}); playing unstretched while it restarts "
                    f"({len(self._restart_times)} of {self.config.max_restarts})"
                )
                self._spawn()
                return
            count = len(self._restart_times)
            self.error = (
                f"the time-stretch process failed too often ({count} time{'s' if count > 1 else ''} within "
                f"{self.config.restart_window_s:.0f} s; last: {last}); the deck plays on unstretched; "
                "restart stemdeck to stretch again"
            )
            self.notice = self.error
            self._ready.set()  # nobody waits for a process that will not come

    def _count_restart(self) -> bool:
        now = time.monotonic()
        window = self.config.restart_window_s
        self._restart_times = [t for t in self._restart_times if now - t < window] + [now]
        return len(self._restart_times) <= self.config.max_restarts
