"""The control side of tempo, key and the beat grid for one engine.

:class:`engine.engine.Engine` holds one :class:`PracticeControls`: it writes tempo and key into
the slots the callback and the stage read, has the deck's stretch process
(:class:`engine.stretch.process.StageProcess`) follow each loaded track and, per track, finds
the beat grid in a process of its own, one for the whole program (play never
waits for it, and the beat tracker's Numba compilation and NumPy work never hold this process's
interpreter lock, which the audio callback needs). The answer comes back pickled over a pipe
from that child of ours: nothing from outside is unpickled.
"""

from __future__ import annotations

import atexit
import inspect
import multiprocessing
import multiprocessing.util  # noqa: F401 - its exit handler registered before ours (below)
import sys
import threading
import time
import weakref
from collections.abc import Callable
from signal import SIG_IGN, SIGBUS, SIGILL, SIGINT, SIGSEGV
from signal import signal as handle_signal

import numpy as np

from stemdeck.engine.audio.callbacks import DeckBuffers
from stemdeck.engine.audio.stretched import SEMITONES, TEMPO, UNDERFLOWS, stretch_active
from stemdeck.engine.exit_guard import native_section
from stemdeck.engine.runtime import start_deaf_to_ctrl_c
from stemdeck.engine.stretch.beats import (
    Beats,
    analysis_signal,
    beats_of_signal,
    forget_compiled_tracker,
    import_beat_tracker,
    lower_priority,
)
from stemdeck.engine.stretch.process import StageProcess
from stemdeck.engine.stretch.stage import StageConfig
from stemdeck.engine.stretch.stretcher import check_semitones, check_tempo, require_stretch
from stemdeck.engine.worker.process import BlockSpec

CRASH_EXIT_CODES = (-SIGSEGV, -SIGBUS, -SIGILL)  # multiprocessing's exit code: minus the signal
DEATH_WAIT_S = 2.0  # for a process whose pipe closed to be reaped
BEATS_READY_POLL_S = 0.1  # how often a track's beat search asks whether the separation can spare a core


def _serve_beats(connection) -> None:
    """The beat process: a track's analysis signal in, its :class:`Beats` (or None) out. The
    program may leave at any moment (its window closed mid-search): then the pipe is gone and
    this ends quietly; Ctrl-C is the program's to handle."""
    handle_signal(SIGINT, SIG_IGN)
    lower_priority()
    try:
        import_beat_tracker()  # before the first track comes: its import is most of a first search
    except Exception:  # noqa: BLE001 - said by the search that needs it (no grid)
        pass
    while True:
        try:
            audio = connection.recv()
        except (EOFError, OSError):  # the program is gone
            return
        try:
            beats = beats_of_signal(audio)
        except Exception:  # noqa: BLE001 - a track the tracker cannot read: no grid
            beats = None
        try:
            connection.send(beats)
        except OSError:  # BrokenPipeError: the program left while we searched
            return


class _BeatProcess:
    """One daemon process for the program's beat searches (its librosa import costs seconds, so
    it is started once, on the first track), niced; one search at a time. Daemonic, so the
    program's exit ends it at once, a search under way or not."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve_beats, args=(child,), name="stemdeck-beats", daemon=True)
        start_deaf_to_ctrl_c(self._process)
        child.close()

    def search(self, signal: np.ndarray) -> Beats | None:
        self._connection.send(signal)
        return self._connection.recv()  # our own child's answer: a Beats or None

    def crashed(self) -> bool:
        """Whether it died of a crash (not killed, not out of memory): a fault in native code."""
        self._process.join(DEATH_WAIT_S)
        return self._process.exitcode in CRASH_EXIT_CODES


_beat_process: _BeatProcess | None = None
_beat_lock = threading.Lock()  # one search at a time; a newer track's waits for the one under way
# Set when the program starts to exit: a search cut short then is not a dead process to replace
# (a child spawned by an exiting program finds no parent to read from: a traceback). It must run
# before multiprocessing's own exit handler, which ends the beat process; handlers run last
# registered first, and multiprocessing.util registers its handler on import, so import it first.
_exiting = threading.Event()
atexit.register(_exiting.set)


def start_beat_process() -> None:
    """The beat process started now, if it is not running: it imports the tracker (seconds)
    before the first track comes. Never waits (a search under way holds the lock: it runs)."""
    global _beat_process
    if not _beat_lock.acquire(blocking=False):
        return
    try:
        if _beat_process is None and not _exiting.is_set():
            _beat_process = _BeatProcess()
    finally:
        _beat_lock.release()


def search_beats(signal: np.ndarray) -> Beats | None:
    """The beat grid of :func:`analysis_signal`'s output, found in the beat process (started
    on first use, and again if it died); None once the program is exiting."""
    global _beat_process
    with _beat_lock:
        for _ in range(2):
            if _exiting.is_set():
                return None
            if _beat_process is None:
                _beat_process = _BeatProcess()
            try:
                return _beat_process.search(signal)
            except (EOFError, OSError):  # it died (killed, out of memory): a new one, once
                if _beat_process.crashed():
                    _forget_compiled_tracker()
                _beat_process = None
        return None


def _forget_compiled_tracker() -> None:
    """A crashed beat process most likely loaded a damaged Numba cache of the tracker: the next
    one compiles it afresh (seconds), which a damaged cache would never let it do."""
    removed = forget_compiled_tracker()
    print(
        f"stemdeck: the beat tracker crashed; its compiled cache ({removed} files) was cleared and is being rebuilt",
        file=sys.stderr,
        flush=True,
    )


def _weakly(callback: Callable) -> Callable[[], Callable | None]:
    """``callback`` held weakly where it is an object's method (the engine's): the beat thread must
    not keep the engine alive. Its last reference dropped on that daemon thread, as the program
    exits, would free the model's tensors there, and torch's lock guard aborts the process then
    (:mod:`engine.exit_guard`)."""
    if inspect.ismethod(callback):
        return weakref.WeakMethod(callback)
    return lambda: callback


class PracticeControls:
    """Tempo and key (shared slots and the stage process) and the search for each track's beats."""

    def __init__(self, num_stems: int, channels: int, samplerate: int, config: StageConfig = StageConfig()):
        self.samplerate, self.config = samplerate, config
        self.stage = StageProcess(num_stems, channels, samplerate, config)
        self.buffers = self.stage.buffers
        self.beats: Beats | None = None
        self._track_serial = 0  # a beat grid found for an older track is dropped
        self._beat_thread: threading.Thread | None = None

    @property
    def tempo(self) -> float:
        return float(self.buffers.controls[TEMPO])

    @property
    def semitones(self) -> float:
        return float(self.buffers.controls[SEMITONES])

    @property
    def underflows(self) -> int:
        """Blocks the stage's ring could not fill in time (the rest played as silence)."""
        return int(self.buffers.state[UNDERFLOWS])

    @property
    def error(self) -> str | None:
        """Why the deck plays unstretched for good (its stage process failed too often)."""
        return self.stage.error

    @property
    def notice(self) -> str | None:
        """The stage process's last failure and what became of it, in one line."""
        return self.stage.notice

    def set_tempo(self, tempo: float, lock: threading.Lock) -> None:
        """The first change off unity starts the stage process and waits until it serves."""
        tempo = check_tempo(tempo)
        require_stretch(tempo, 0.0)
        self._set(TEMPO, tempo, lock, tempo != 1.0)

    def set_semitones(self, semitones: float, lock: threading.Lock) -> None:
        semitones = check_semitones(semitones)
        require_stretch(1.0, semitones)
        self._set(SEMITONES, semitones, lock, semitones != 0.0)

    def _set(self, slot: int, value: float, lock: threading.Lock, off_unity: bool) -> None:
        if off_unity:
            self.stage.ensure_started()
        with lock:
            self.buffers.controls[slot] = value
        self.stage.wake()

    def track_loaded(
        self,
        deck: DeckBuffers,
        crossfade_frames: int,
        on_beats: Callable[[Beats], None] | None = None,
        blocks: dict[str, BlockSpec] | None = None,
        ready: Callable[[], bool] | None = None,
        ready_wait_max_s: float = 60.0,
    ) -> None:
        """A new track, its shared ``blocks`` (``state``, ``track``, ``stems``) for the stage
        process to stretch from; with ``on_beats``, its beats looked for once ``ready()`` says
        the CPU can be spared (the deck's separation comes first), or ``ready_wait_max_s`` on."""
        if blocks is not None:
            self.stage.load(blocks, crossfade_frames, deck.audio, deck.transport)
            if stretch_active(self.buffers.controls):
                self.stage.ensure_started(wait=False)
        self._track_serial += 1
        self.beats = None
        if on_beats is not None:
            self._beat_thread = threading.Thread(
                target=self._search_beats,
                args=(deck.track, self._track_serial, _weakly(on_beats), ready and _weakly(ready), ready_wait_max_s),
                name="stemdeck-beats",
                daemon=True,
            )
            self._beat_thread.start()

    def _search_beats(
        self,
        track: np.ndarray,
        serial: int,
        on_beats: Callable[[], Callable | None],
        ready: Callable[[], Callable[[], bool] | None] | None = None,
        ready_wait_max_s: float = 60.0,
    ) -> None:
        """On its own thread: the track handed to the beat process, its answer awaited. No grid is
        a usable answer (loops are then set by hand), so any failure is just no grid."""
        try:
            if ready is not None and not self._wait_until_ready(ready, serial, ready_wait_max_s):
                return
            with native_section():  # soxr's resampler: the exit waits for it (engine/exit_guard.py)
                signal = analysis_signal(track, self.samplerate)
            if serial != self._track_serial:
                return
            beats = search_beats(signal)
        except Exception:  # noqa: BLE001 - a broken beat process, a damaged track: no grid
            return
        if beats is not None and serial == self._track_serial:
            self.beats = beats
            receiver = on_beats()
            if receiver is not None:
                receiver(beats)

    def _wait_until_ready(self, ready: Callable[[], Callable[[], bool] | None], serial: int, wait_max_s: float) -> bool:
        """Once the predicate ``ready()`` gives holds, or ``wait_max_s`` on: True; False
        once another track is loaded, its engine is gone or the program exits (nothing to search
        for)."""
        deadline = time.monotonic() + wait_max_s
        while serial == self._track_serial and not _exiting.is_set():
            predicate = ready()
            if predicate is None:
                return False
            if predicate() or time.monotonic() >= deadline:
                return True
            del predicate  # not held across the sleep: the engine may be dropped meanwhile
            time.sleep(BEATS_READY_POLL_S)
        return False

    def warm_beats(self) -> None:
        """Start the program's beat process ahead of the first track (see :func:`start_beat_process`)."""
        start_beat_process()

    def wait_beats(self, timeout_s: float = 60.0) -> Beats | None:
        """Block (tests, scripts) until this track's beat search ends; its grid, or None."""
        if self._beat_thread is not None:
            self._beat_thread.join(timeout_s)
        return self.beats

    def stop_stage(self) -> None:
        self.stage.stop()

    def stop(self) -> None:
        """The stage process ends and its rings are freed; this engine's beat search is dropped
        (the shared beat process stays)."""
        self.stage.close()
        self._track_serial += 1
