"""The track's tempo and beat grid, found once per track by librosa's beat tracker.

librosa reports its tempo and beats on a grid of its 23 ms onset frames (tempo steps about 1 %
apart at 120 BPM). Here each beat it found moves to the strongest onset near it on a 2.9 ms
grid, and the BPM is the slope of a straight line through those times, each beat numbered by
how many median periods it lies from the one before (so a missed beat does not shift the count).
"""

from __future__ import annotations

import importlib.util
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ANALYSIS_RATE = 22050  # librosa's own default rate: half the work of 44.1 kHz, same beats
FINE_HOP = 64  # onset envelope hop for placing each beat (2.9 ms); the tracker's own is 512 (23 ms)
SEARCH_S = 0.05  # a beat moves to the strongest onset within this distance
MIN_BEATS = 4
COMPILE_LOCK_NAME = "beat-tracker-compile.lock"  # in the user cache folder


@dataclass(frozen=True)
class Beats:
    bpm: float
    first_beat_s: float  # the fitted grid's beat at or after the start of the track
    beat_times_s: tuple[float, ...]  # the beats the tracker found


def fit_grid(beat_times_s: np.ndarray) -> tuple[float, float]:
    """``(beat period s, time of the first beat s)`` from a least-squares line through the beats;
    beats more than a tenth of a period off the first line (a stray one) are left out of the
    second."""
    gaps = np.diff(beat_times_s)
    period = float(np.median(gaps))
    # each beat numbered from the one before it, not from the first: the median of gaps measured
    # on the fine grid is off by up to half a grid step, and over a long track (1200 beats in 10
    # minutes) that error grew past half a period, misnumbered the later beats and bent the line
    # (120.215 BPM for a 120.002 BPM track)
    index = np.concatenate([[0.0], np.cumsum(np.maximum(1.0, np.round(gaps / period)))])
    slope, intercept = np.polyfit(index, beat_times_s, 1)
    on_grid = np.abs(beat_times_s - (slope * index + intercept)) < 0.1 * period
    if on_grid.sum() >= MIN_BEATS:
        slope, intercept = np.polyfit(index[on_grid], beat_times_s[on_grid], 1)
    return float(slope), float(intercept - np.floor(intercept / slope) * slope)


def refine_beats(mono: np.ndarray, beat_times_s: np.ndarray) -> np.ndarray:
    """Each beat moved to the strongest onset within ``SEARCH_S`` on the fine grid (unique, sorted)."""
    import librosa

    envelope = librosa.onset.onset_strength(y=mono, sr=ANALYSIS_RATE, hop_length=FINE_HOP)
    times = librosa.times_like(envelope, sr=ANALYSIS_RATE, hop_length=FINE_HOP)
    refined = []
    for beat in beat_times_s:
        near = np.flatnonzero(np.abs(times - beat) <= SEARCH_S)
        if near.size:
            refined.append(times[near[np.argmax(envelope[near])]])
    return np.unique(np.asarray(refined, np.float64))


def analysis_signal(track: np.ndarray, samplerate: int) -> np.ndarray:
    """``(channels, frames)`` audio as the tracker takes it: mono float32 at ``ANALYSIS_RATE``
    (a quarter of a stereo 44.1 kHz track's size, so it is cheap to hand to another process)."""
    import soxr

    mono = np.ascontiguousarray(track.mean(axis=0), dtype=np.float32)
    return soxr.resample(mono, samplerate, ANALYSIS_RATE) if samplerate != ANALYSIS_RATE else mono


def import_beat_tracker():
    """``librosa.beat``, its Numba kernels kept in Numba's on-disk cache. librosa 0.11 compiles
    one of them (``__beat_local_score``) with the cache off, so every process paid its compilation
    (6.6 s on a quiet 2-core machine, most of a first search) before the tracker ran. Imported
    here with ``numba.guvectorize`` caching, it is compiled once and loaded afterwards."""
    import sys

    if "librosa.beat" in sys.modules:
        return sys.modules["librosa.beat"]
    import numba

    original = numba.guvectorize

    def cached_guvectorize(*args, **kwargs):
        return original(*args, **{**kwargs, "cache": True})

    numba.guvectorize = cached_guvectorize
    try:
        with tracker_compile_lock():
            import librosa.beat
    finally:
        numba.guvectorize = original
    return librosa.beat


def tracker_compile_lock() -> AbstractContextManager[None]:
    """One stemdeck process at a time compiles or loads the tracker's cached kernels. Numba keeps
    a guvectorized function in two cache files; two processes compiling at once can leave a
    mismatched pair, and every later process that loads it crashes (numba issue 10128: the
    suite's beat test and a beat process started beside it did)."""
    from stemdeck.models.cache_lock import cache_lock

    return cache_lock(COMPILE_LOCK_NAME)


def tracker_cache_files() -> list[Path]:
    """The beat tracker's compiled kernels in Numba's cache beside librosa (none if elsewhere)."""
    spec = importlib.util.find_spec("librosa")
    if spec is None or spec.origin is None:
        return []
    folder = Path(spec.origin).parent / "__pycache__"
    return sorted([*folder.glob("beat.*.nb[ic]"), *folder.glob("guf-beat.*.nb[ic]")])


def forget_compiled_tracker() -> int:
    """Delete the tracker's cached kernels (a process crashed loading them), so the next import
    compiles them afresh; returns how many files went."""
    with tracker_compile_lock():
        files = tracker_cache_files()
        for path in files:
            path.unlink(missing_ok=True)
    return len(files)


def lower_priority() -> None:
    """For the beat tracker's process: the audio and the separation come first."""
    import os

    os.nice(10)


def detect_beats(track: np.ndarray, samplerate: int) -> Beats | None:
    """The beat grid of ``(channels, frames)`` audio, or None when too few beats are found."""
    return beats_of_signal(analysis_signal(track, samplerate))


def beats_of_signal(mono: np.ndarray) -> Beats | None:
    """The beat grid of :func:`analysis_signal`'s output, or None when too few beats are found."""
    beat = import_beat_tracker()
    _, beat_times = beat.beat_track(y=mono, sr=ANALYSIS_RATE, units="time")
    beat_times = np.asarray(beat_times, np.float64)
    if beat_times.size < MIN_BEATS:
        return None
    beat_times = refine_beats(mono, beat_times)
    if beat_times.size < MIN_BEATS:
        return None
    period_s, first_s = fit_grid(beat_times)
    return Beats(60.0 / period_s, first_s, tuple(float(t) for t in beat_times))
