"""Practice controls on the control side: loop points, the beat grid they may snap to, and how
to read a time written by a user (``--loop 1:02.5:1:10``).

Plain values and pure functions; :class:`engine.engine.Engine` turns them into transport
requests the callback applies (see :mod:`engine.audio.transport`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

LOOP_BEATS = (1, 2, 4, 8, 16)  # the loop lengths offered once the tempo is known
MIN_BPM, MAX_BPM = 20.0, 400.0
NUM_HOT_CUES = 8


@dataclass(frozen=True)
class BeatGrid:
    """A constant tempo from a first beat: what a beat tracker reports, or the user taps in."""

    bpm: float
    first_beat_s: float = 0.0

    def __post_init__(self):
        if not (math.isfinite(self.bpm) and MIN_BPM <= self.bpm <= MAX_BPM):
            raise ValueError(f"tempo {self.bpm} BPM is out of range; give {MIN_BPM:g} to {MAX_BPM:g} BPM")
        if not math.isfinite(self.first_beat_s):
            raise ValueError(f"first beat {self.first_beat_s} s is not a number of seconds")

    @property
    def beat_s(self) -> float:
        return 60.0 / self.bpm

    def beats_frames(self, beats: float, samplerate: int) -> int:
        return int(round(beats * self.beat_s * samplerate))

    def snap_frames(self, frames: int, samplerate: int) -> int:
        """The beat nearest to ``frames``."""
        beat = round((frames / samplerate - self.first_beat_s) / self.beat_s)
        return max(0, int(round((self.first_beat_s + beat * self.beat_s) * samplerate)))


@dataclass(frozen=True)
class LoopPoints:
    """The deck's loop in frames: in and out as set (either may be missing) and whether it plays."""

    in_frames: int | None = None
    out_frames: int | None = None
    active: bool = False

    @property
    def complete(self) -> bool:
        return self.in_frames is not None and self.out_frames is not None and self.out_frames > self.in_frames

    @property
    def length_frames(self) -> int:
        return (self.out_frames - self.in_frames) if self.complete else 0

    def playing(self) -> tuple[int, int]:
        """The ``(in, out)`` pair for the callback: ``(0, 0)`` (no loop) unless active and whole."""
        if self.active and self.complete:
            return self.in_frames, self.out_frames
        return 0, 0

    def with_in(self, frames: int) -> LoopPoints:
        """A new in point; an out point at or before it goes, and the loop with it."""
        if self.out_frames is not None and self.out_frames <= frames:
            return LoopPoints(frames, None, False)
        return replace(self, in_frames=frames)

    def with_out(self, frames: int) -> LoopPoints:
        """A new out point after the in point: the loop plays."""
        if self.in_frames is None:
            raise ValueError("set the loop's in point first")
        if frames <= self.in_frames:
            raise ValueError("the loop's out point must come after its in point")
        return LoopPoints(self.in_frames, frames, True)

    def resized(self, factor: float, min_frames: int, length: int) -> LoopPoints:
        """Halve (0.5) or double (2) from the in point, kept within ``min_frames`` and the track."""
        if not self.complete:
            raise ValueError("set a loop (in and out) before halving or doubling it")
        span = max(min_frames, int(round(self.length_frames * factor)))
        out = min(self.in_frames + span, length)
        return replace(self, out_frames=out) if out > self.in_frames else self


_TIME = re.compile(r"^(?:(\d+):)?(\d+(?:\.\d*)?|\.\d+)$")


def parse_time_s(text: str) -> float:
    """Seconds from ``"75"``, ``"75.5"`` or ``"1:15.5"`` (m:ss.s)."""
    match = _TIME.match(text.strip())
    if not match and text.strip().startswith("-"):
        raise ValueError(f"{text!r} is before the track's start; times count from 0")
    if not match:
        raise ValueError(f"{text!r} is not a time; write seconds (75.5) or minutes:seconds (1:15.5)")
    minutes, seconds = match.groups()
    if minutes is not None and float(seconds) >= 60:
        raise ValueError(f"{text!r}: the seconds after the colon must be under 60")
    return int(minutes or 0) * 60 + float(seconds)


def parse_loop(text: str) -> tuple[float, float]:
    """``"A:B"``, both in seconds (``"12.5:20"``) or both in m:ss.s (``"1:02.5:1:10"``), A before B.
    Three parts (``"1:30:2"``) could be read two ways and are refused."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 4):
        raise ValueError(f"--loop {text}: write START:END both in seconds (12.5:20) or both in m:ss.s (1:02.5:1:10)")
    half = len(parts) // 2
    try:
        start, end = parse_time_s(":".join(parts[:half])), parse_time_s(":".join(parts[half:]))
    except ValueError as exc:
        raise ValueError(f"--loop {text}: {exc}") from None
    if end <= start:
        raise ValueError(f"--loop {text}: the end ({end:g} s) must come after the start ({start:g} s)")
    return start, end
