"""Fit a window plan to this machine: time a few forwards, lengthen the hop if needed."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .config import WindowConfig

SCHEDULING_SLACK_S = 0.05  # polling, thread wake-up, GIL hand-over
BUDGET_FACTOR = 1.5  # the budget covers the slowest measured forward with this margin


@dataclass(frozen=True)
class Calibration:
    window: WindowConfig  # possibly with a longer hop and span than asked
    forward_s: float  # slowest measured forward
    budget_s: float  # inference time the latency allows for


def fit_window(window: WindowConfig, forward_s: float, headroom: float) -> WindowConfig:
    """Lengthen hop and span in proportion until one forward takes at most ``1 - headroom`` of a hop."""
    allowed_s = window.hop_s * (1.0 - headroom)
    if forward_s <= allowed_s:
        return window
    scale = forward_s / allowed_s
    hop_s = window.hop_s * scale
    longest_span_s = window.window_s - window.lookahead_s
    if hop_s > longest_span_s:
        raise ValueError(f"this machine needs {forward_s:.2f} s per {window.window_s:.1f} s window; "
                         f"no hop fits inside it with {headroom:.0%} headroom. Use a faster preset "
                         "(low-latency), a GPU, or a smaller model")
    span_s = min(max(window.span_s * scale, hop_s), longest_span_s)
    return replace(window, hop_s=hop_s, span_s=span_s)


def calibrate(separator_factory, window: WindowConfig, headroom: float, runs: int = 2) -> Calibration:
    """``separator_factory(window)`` builds a WindowSeparator; its forwards are timed on silence."""
    separator = separator_factory(window)
    separator.warm_up(1)
    forward_s = separator.warm_up(runs)
    fitted = fit_window(window, forward_s, headroom)
    return Calibration(fitted, forward_s, BUDGET_FACTOR * forward_s + SCHEDULING_SLACK_S)
