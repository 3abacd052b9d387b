"""The mixer, run in the audio callback: per-stem gains ramped toward their targets (mute, solo,
fader, stems/dry crossfade) and summed into the device's block, with every sample limited.

Numba kernels on buffers their owners preallocate: nothing here allocates.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Indices into the mixer's per-gain state rows.
GAIN_CURRENT, GAIN_TARGET, GAIN_STEP, GAIN_REMAINING = 0, 1, 2, 3
# The mixer's hard limit on every output sample and every gain: +12 dBFS, the top of a fader.
# Beyond it (or NaN/Inf, from a broken model, a damaged file or a bad control value) is not
# music: limited, or silenced, before it reaches the device.
OUTPUT_LIMIT = 4.0


@njit(nogil=True, cache=True)
def safe_sample(value):
    """``value`` limited to +-OUTPUT_LIMIT; NaN and Inf become silence."""
    if not np.isfinite(value):
        return 0.0
    return min(max(value, -OUTPUT_LIMIT), OUTPUT_LIMIT)


@njit(nogil=True, cache=True)
def _safe_gain(gain, top):
    if not np.isfinite(gain):
        return 0.0
    return min(max(gain, 0.0), top)


@njit(nogil=True, cache=True)
def _retarget(state, index, target, ramp_frames):
    if target != state[GAIN_TARGET, index]:
        state[GAIN_TARGET, index] = target
        state[GAIN_STEP, index] = (target - state[GAIN_CURRENT, index]) / ramp_frames
        state[GAIN_REMAINING, index] = ramp_frames


@njit(nogil=True, cache=True)
def update_gain_targets(state, user_gain, mute, solo, dry_mix, ramp_frames):
    """Start a linear ramp on every gain whose effective target changed.

    DJ-mixer semantics: any soloed stem silences the others; mute silences a stem even when
    it is soloed. ``dry_mix`` cross-fades from the stems (0) to the aligned dry signal (1), whose
    gain is the last column of ``state`` ``(4, S + 1)``.
    """
    any_solo = False
    for s in range(solo.shape[0]):
        if solo[s]:
            any_solo = True
    dry_mix = _safe_gain(dry_mix, 1.0)
    for s in range(user_gain.shape[0]):
        target = _safe_gain(user_gain[s], OUTPUT_LIMIT) * (1.0 - dry_mix)
        if mute[s] or (any_solo and not solo[s]):
            target = 0.0
        _retarget(state, s, target, ramp_frames)
    _retarget(state, user_gain.shape[0], dry_mix, ramp_frames)


@njit(nogil=True, cache=True)
def _next_gain(state, s):
    if state[GAIN_REMAINING, s] > 0:
        state[GAIN_CURRENT, s] += state[GAIN_STEP, s]
        state[GAIN_REMAINING, s] -= 1
        if state[GAIN_REMAINING, s] == 0:
            state[GAIN_CURRENT, s] = state[GAIN_TARGET, s]
    return state[GAIN_CURRENT, s]


@njit(nogil=True, cache=True)
def mix_block(out, stems, stem_start, dry, dry_start, state, use_stems, levels):
    """One output block: ``sum_s gain_s * stem_s`` with ramped gains, or the dry signal.

    ``out`` is the device's ``(frames, out_channels)`` buffer; its first two channels get the
    mix, further pairs (if any) each stem. ``stems`` is the ``(S, C, capacity)`` stem ring and
    ``dry`` the ``(C, capacity)`` dry ring, read from ``stem_start``/``dry_start``. The last gain
    in ``state`` is the dry gain, ramped like the others. ``levels`` ``(2, S + 1)`` receives
    peak and mean square per stem (after gain) and for the mix. Every sample written is finite
    and within +-OUTPUT_LIMIT, whatever the inputs hold.
    """
    frames = out.shape[0]
    num_stems = stems.shape[0]
    channels = min(dry.shape[0], out.shape[1])
    stem_capacity = stems.shape[-1]
    dry_capacity = dry.shape[-1]
    for k in range(levels.shape[1]):
        levels[0, k] = 0.0
        levels[1, k] = 0.0
    for i in range(frames):
        si = (stem_start + i) % stem_capacity
        di = (dry_start + i) % dry_capacity
        dry_gain = _next_gain(state, num_stems)
        for c in range(channels):
            out[i, c] = safe_sample(dry[c, di] * dry_gain)
        for s in range(num_stems):
            gain = _next_gain(state, s)
            for c in range(channels):
                value = safe_sample(stems[s, c, si] * gain) if use_stems else 0.0
                out[i, c] += value
                if out.shape[1] >= 2 * (s + 2):
                    out[i, 2 * (s + 1) + c] = value
                magnitude = abs(value)
                if magnitude > levels[0, s]:
                    levels[0, s] = magnitude
                levels[1, s] += value * value
        if not use_stems:  # late or not separated yet: the aligned dry signal, never silence
            for c in range(channels):
                out[i, c] = dry[c, di]
        for c in range(channels):
            out[i, c] = safe_sample(out[i, c])
            magnitude = abs(out[i, c])
            if magnitude > levels[0, num_stems]:
                levels[0, num_stems] = magnitude
            levels[1, num_stems] += out[i, c] * out[i, c]
    if frames > 0:
        for k in range(levels.shape[1]):
            levels[1, k] /= frames * channels


def mix_block_reference(stems_block: np.ndarray, dry_block: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """The mix in plain NumPy for fixed gains: ``(S, C, F)`` stems, ``(C, F)`` dry, ``S + 1`` gains."""
    return np.einsum("s,scf->cf", gains[:-1], stems_block) + gains[-1] * dry_block
