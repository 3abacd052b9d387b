"""The count-in's click, built once when a track loads (the audio callback only copies it)."""

from __future__ import annotations

import numpy as np

from stemdeck.engine.config import CountInConfig

ACCENT, BEAT = range(2)  # the click buffer's rows: the first beat of a count-in, the others


def click_buffer(config: CountInConfig, samplerate: int) -> np.ndarray:
    """``(2, frames)`` float32: an accented and a plain sine burst, each decaying linearly to
    silence so it starts and ends without a step louder than its first period."""
    frames = max(1, int(round(config.click_ms * samplerate / 1000)))
    t_s = np.arange(frames) / samplerate
    decay = 1.0 - np.arange(frames) / frames
    click = np.zeros((2, frames), np.float32)
    rows = ((ACCENT, config.accent_hz, config.accent_level_db), (BEAT, config.click_hz, config.level_db))
    for row, hz, level_db in rows:
        click[row] = 10.0 ** (level_db / 20.0) * np.sin(2 * np.pi * hz * t_s) * decay
    return click


def beat_frames(bpm: float | None, config: CountInConfig, samplerate: int) -> int:
    """One beat in frames at ``bpm`` (the track's tempo), or at the fixed tempo when unknown."""
    return max(1, int(round(60.0 * samplerate / (bpm or config.no_grid_bpm))))
