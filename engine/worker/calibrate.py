"""Fit a window plan to this machine: time a few forwards, lengthen the hop, then the window.

The plan asked for is tried first; where one forward takes longer than a hop allows, the hop
(and span) grow; where even the longest hop of that window cannot keep up, a longer window is
timed (up to the model's segment), which costs more per forward but less per second of audio.
So the plan chosen is the lowest-latency one this machine sustains, and only a machine too
slow for the longest window is refused, with the ways out named.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from stemdeck.engine.config import WindowConfig

SCHEDULING_SLACK_S = 0.05  # polling, thread wake-up, GIL hand-over
BUDGET_FACTOR = 1.5  # the budget covers the slowest measured forward with this margin
WINDOW_GROWTH = 1.5  # each longer window tried is this much longer than the one before


@dataclass(frozen=True)
class Calibration:
    window: WindowConfig  # possibly with a longer window, hop and span than asked
    forward_s: float  # slowest measured forward of that window
    budget_s: float  # inference time the latency allows for
    asked: WindowConfig | None = None  # the plan asked for, when this machine needed another

    @property
    def adapted(self) -> bool:
        """Whether this machine needed a longer plan than the one asked for."""
        return self.asked is not None and self.asked != self.window


def fit_window(window: WindowConfig, forward_s: float, headroom: float) -> WindowConfig:
    """Lengthen hop and span in proportion until one forward takes at most ``1 - headroom`` of a hop."""
    allowed_s = window.hop_s * (1.0 - headroom)
    if forward_s <= allowed_s:
        return window
    scale = forward_s / allowed_s
    hop_s = window.hop_s * scale
    longest_span_s = window.window_s - window.lookahead_s
    if hop_s > longest_span_s:
        raise ValueError(
            f"this machine needs {forward_s:.2f} s per {window.window_s:.1f} s window; "
            f"no hop fits inside it with {headroom:.0%} headroom. Use a faster preset "
            "(low-latency), a GPU, or a smaller model"
        )
    span_s = min(max(window.span_s * scale, hop_s), longest_span_s)
    return replace(window, hop_s=hop_s, span_s=span_s)


def longer_windows(window: WindowConfig, longest_s: float) -> Iterator[WindowConfig]:
    """``window``, then ever longer ones (same lookahead, hop and span) up to ``longest_s``."""
    yield window
    window_s = window.window_s
    while not window.pad_to_segment and window_s < longest_s - 1e-9:
        window_s = min(longest_s, window_s * WINDOW_GROWTH)
        yield replace(window, window_s=window_s)


def calibrate(
    separator_factory, window: WindowConfig, headroom: float, runs: int = 2, longest_window_s: float | None = None
) -> Calibration:
    """``separator_factory(window)`` builds a WindowSeparator; its forwards are timed on silence.

    Tries ``window`` and then longer ones up to ``longest_window_s`` (the model's segment);
    returns the first this machine keeps up with, or raises a ValueError naming the ways out.
    """
    longest_s = max(window.window_s, longest_window_s or window.window_s)
    for candidate in longer_windows(window, longest_s):
        separator = separator_factory(candidate)
        separator.warm_up(1)
        forward_s = separator.warm_up(runs)
        try:
            fitted = fit_window(candidate, forward_s, headroom)
        except ValueError:
            continue
        return Calibration(fitted, forward_s, BUDGET_FACTOR * forward_s + SCHEDULING_SLACK_S, window)
    raise ValueError(
        f"this machine needs {forward_s:.2f} s per {candidate.window_s:.1f} s window, the longest "
        f"this model takes; no hop fits inside it with {headroom:.0%} headroom, so live input "
        "cannot keep up here. Use a smaller model (--model tiny) or a GPU (--device cuda); "
        "the deck (stemdeck play) still plays any track"
    )
