"""The time-stretcher: Rubber Band's R3 ("finer") engine in real-time mode, through pylibrb.

Chosen with ``benchmarks/stretch.py`` (figures in docs/benchmarks.md): among the stretchers with
Python wheels it is the one that streams with tempo and pitch changeable while it runs; its short
window costs a third of the standard one's CPU, with 29 ms of delay instead of 46 ms, and kept
onsets and pitch as exact on the test signals. All the deck's channels (every stem's and the
dry track's) go through ONE instance, so they share its analysis hops and stay sample-aligned.
Rubber Band is GPL (v2 or later), so it is an optional extra (``stemdeck[stretch]``): stemdeck
itself stays MIT, and without the extra every other feature works and tempo and key say how to
add it (README: licences).
"""

from __future__ import annotations

import math

import numpy as np

MIN_TEMPO, MAX_TEMPO = 0.5, 1.5
MIN_SEMITONES, MAX_SEMITONES = -12.0, 12.0
STRETCH_EXTRA = "tempo and key need Rubber Band (GPL-2.0), an optional extra: pip install 'stemdeck[stretch]'"


class StretchUnavailable(ValueError):
    """Tempo or key asked for where the optional time-stretcher is not installed."""


def stretch_available() -> bool:
    """Whether the optional time-stretcher (pylibrb) can be imported."""
    try:
        import pylibrb  # noqa: F401
    except ImportError:
        return False
    return True


def require_stretch(tempo: float, semitones: float) -> None:
    """A one-line :class:`StretchUnavailable` if anything but tempo 1 and key 0 is asked for
    without the stretcher (tempo 1, key 0 plays the deck as it is: no stretcher needed)."""
    if (tempo != 1.0 or semitones != 0.0) and not stretch_available():
        raise StretchUnavailable(STRETCH_EXTRA)


def check_tempo(tempo: float) -> float:
    """``tempo`` (1 = as recorded) as a float, or a one-line ValueError."""
    tempo = float(tempo)
    if not math.isfinite(tempo):
        raise ValueError(f"tempo {tempo:g} is not a number; give {MIN_TEMPO:g} to {MAX_TEMPO:g} (1 = as recorded)")
    if not MIN_TEMPO <= tempo <= MAX_TEMPO:
        raise ValueError(f"tempo {tempo:g} is out of range; give {MIN_TEMPO:g} to {MAX_TEMPO:g} (1 = as recorded)")
    return tempo


def check_semitones(semitones: float) -> float:
    """A key shift in semitones as a float, or a one-line ValueError."""
    semitones = float(semitones)
    if not math.isfinite(semitones):
        give = f"give {MIN_SEMITONES:g} to {MAX_SEMITONES:g} semitones"
        raise ValueError(f"key shift {semitones:g} is not a number; {give}")
    if not MIN_SEMITONES <= semitones <= MAX_SEMITONES:
        raise ValueError(
            f"key shift {semitones:g} is out of range; give {MIN_SEMITONES:g} to {MAX_SEMITONES:g} semitones"
        )
    return semitones


class Stretcher:
    """A streaming stretcher over ``channels`` channels; ``process`` takes at most ``max_frames``."""

    def __init__(self, samplerate: int, channels: int, max_frames: int):
        try:
            import pylibrb
        except ImportError as exc:  # require_stretch said so before any stage started
            raise StretchUnavailable(STRETCH_EXTRA) from exc
        options = pylibrb.Option.PROCESS_REALTIME | pylibrb.Option.ENGINE_FINER | pylibrb.Option.WINDOW_SHORT
        self._rb = pylibrb.RubberBandStretcher(samplerate, channels, options, 1.0, 1.0)
        self._rb.set_max_process_size(max_frames)
        self.tempo, self.semitones = 1.0, 0.0

    def set_ratios(self, tempo: float, semitones: float) -> None:
        """Takes effect from the next ``process`` (call it from the thread that processes)."""
        if tempo != self.tempo:
            self._rb.time_ratio = 1.0 / tempo
            self.tempo = tempo
        if semitones != self.semitones:
            self._rb.pitch_scale = 2.0 ** (semitones / 12.0)
            self.semitones = semitones

    def restart(self) -> tuple[int, int]:
        """Empty the stretcher; returns ``(start_pad, start_delay)`` frames at the current ratios:
        feed ``start_pad`` frames before the first frame wanted, drop ``start_delay`` of output."""
        self._rb.reset()
        return int(self._rb.get_preferred_start_pad()), int(self._rb.get_start_delay())

    def process(self, block: np.ndarray) -> np.ndarray | None:
        """Feed ``(channels, frames)`` float32; returns the output ready so far, or None."""
        self._rb.process(block)
        available = self._rb.available()
        return self._rb.retrieve(available) if available > 0 else None
