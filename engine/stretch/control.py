"""The control side of tempo, key and the beat grid for one engine.

:class:`engine.engine.Engine` holds one :class:`PracticeControls`: it writes tempo and key into
the slots the callback and the stage read, runs one :class:`StretchStage` per loaded track and,
per track, finds the beat grid in a process of its own, one for the whole program (play never
waits for it, and the beat tracker's Numba compilation and NumPy work never hold this process's
interpreter lock, which the audio callback needs).
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from stemdeck.engine.audio.callbacks import DeckBuffers
from stemdeck.engine.audio.stretched import SEMITONES, TEMPO, UNDERFLOWS, StretchBuffers
from stemdeck.engine.stretch.beats import Beats, analysis_signal, beats_of_signal, lower_priority
from stemdeck.engine.stretch.stage import StageConfig, StretchStage
from stemdeck.engine.stretch.stretcher import check_semitones, check_tempo

_beat_pool: ProcessPoolExecutor | None = None
_beat_pool_lock = threading.Lock()


def beat_pool() -> ProcessPoolExecutor:
    """One beat-tracking process for the whole program (its librosa import costs seconds), niced,
    started on the first track; it ends with the program."""
    global _beat_pool
    with _beat_pool_lock:
        if _beat_pool is None:
            context = multiprocessing.get_context("spawn")
            _beat_pool = ProcessPoolExecutor(1, mp_context=context, initializer=lower_priority)
        return _beat_pool


def _submit(signal: np.ndarray) -> Future:
    """The beat search on the shared process; a process that died is replaced once."""
    global _beat_pool
    try:
        return beat_pool().submit(beats_of_signal, signal)
    except BrokenProcessPool:
        with _beat_pool_lock:
            _beat_pool = None
        return beat_pool().submit(beats_of_signal, signal)


class PracticeControls:
    """Tempo and key (shared slots and the stage thread) and the search for each track's beats."""

    def __init__(self, num_stems: int, channels: int, samplerate: int, config: StageConfig = StageConfig()):
        self.buffers = StretchBuffers.allocate(num_stems, channels, config.ring_frames)
        self.samplerate, self.config = samplerate, config
        self.stage: StretchStage | None = None
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
        return None if self.stage is None else self.stage.error

    def set_tempo(self, tempo: float, lock: threading.Lock) -> None:
        tempo = check_tempo(tempo)
        with lock:
            self.buffers.controls[TEMPO] = tempo
        self._wake_stage()

    def set_semitones(self, semitones: float, lock: threading.Lock) -> None:
        semitones = check_semitones(semitones)
        with lock:
            self.buffers.controls[SEMITONES] = semitones
        self._wake_stage()

    def _wake_stage(self) -> None:
        stage = self.stage
        if stage is not None:
            stage.wake()

    def track_loaded(
        self, deck: DeckBuffers, crossfade_frames: int, on_beats: Callable[[Beats], None] | None = None
    ) -> None:
        """A new track: a new stage on its buffers; with ``on_beats``, its beats looked for."""
        self.stop_stage()
        self.stage = StretchStage(deck, self.buffers, self.samplerate, crossfade_frames, self.config)
        self.stage.start()
        self._track_serial += 1
        self.beats = None
        if on_beats is not None:
            self._beat_thread = threading.Thread(
                target=self._search_beats,
                args=(deck.track, self._track_serial, on_beats),
                name="stemdeck-beats",
                daemon=True,
            )
            self._beat_thread.start()

    def _search_beats(self, track: np.ndarray, serial: int, on_beats: Callable[[Beats], None]) -> None:
        """On its own thread: the track handed to the beat process, its answer awaited. No grid is
        a usable answer (loops are then set by hand), so any failure is just no grid."""
        try:
            signal = analysis_signal(track, self.samplerate)
            if serial != self._track_serial:
                return
            beats = _submit(signal).result()
        except Exception:  # noqa: BLE001 - a broken beat process, a damaged track: no grid
            return
        if beats is not None and serial == self._track_serial:
            self.beats = beats
            on_beats(beats)

    def wait_beats(self, timeout_s: float = 60.0) -> Beats | None:
        """Block (tests, scripts) until this track's beat search ends; its grid, or None."""
        if self._beat_thread is not None:
            self._beat_thread.join(timeout_s)
        return self.beats

    def stop_stage(self) -> None:
        if self.stage is not None:
            self.stage.stop()
        self.stage = None

    def stop(self) -> None:
        """The stage ends; this engine's beat search is dropped (the shared process stays)."""
        self.stop_stage()
        self._track_serial += 1
