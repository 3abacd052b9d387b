"""Numba kernels for the hot paths: ring copies, overlap-add, finalising, and the mix.

Every buffer is preallocated by its owner; no kernel allocates. Positions are absolute frame
counts (int64) mapped onto rings by ``position % capacity``. Layout is ``(channels, frames)``
inside, ``(frames, channels)`` at the sound-card boundary.
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
def ring_write_interleaved(ring, position, block):
    """Copy a ``(frames, channels)`` device block into a ``(channels, capacity)`` ring at ``position``."""
    capacity = ring.shape[1]
    last_channel = block.shape[1] - 1  # a mono input feeds every ring channel
    for i in range(block.shape[0]):
        index = (position + i) % capacity
        for c in range(ring.shape[0]):
            ring[c, index] = block[i, min(c, last_channel)]


@njit(nogil=True, cache=True)
def ring_read(ring, position, out, available_until):
    """Fill ``out`` ``(channels, frames)`` from the ring at ``position``; zeros before 0 and at or
    after ``available_until`` (frames the ring does not hold yet)."""
    capacity = ring.shape[-1]
    for i in range(out.shape[-1]):
        absolute = position + i
        inside = absolute >= 0 and absolute < available_until
        index = absolute % capacity
        for c in range(out.shape[0]):
            out[c, i] = ring[c, index] if inside else 0.0


@njit(nogil=True, cache=True)
def accumulate_window(acc, weight_acc, stems, weights, start):
    """Add ``weights * stems`` of one window ``(S, C, W)`` into ring accumulators from ``start``.

    Frames where the weight is zero (outside the used span) are skipped.
    """
    capacity = acc.shape[-1]
    for i in range(stems.shape[-1]):
        w = weights[i]
        if w == 0.0:
            continue
        index = (start + i) % capacity
        weight_acc[index] += w
        for s in range(stems.shape[0]):
            for c in range(stems.shape[1]):
                acc[s, c, index] += w * stems[s, c, i]


@njit(nogil=True, cache=True)
def finalize(acc, weight_acc, out_ring, start, stop):
    """Move ``[start, stop)`` from the accumulators into the stem ring, divided by the summed
    weights, and clear the accumulators there for reuse."""
    acc_capacity = acc.shape[-1]
    out_capacity = out_ring.shape[-1]
    for position in range(start, stop):
        a = position % acc_capacity
        o = position % out_capacity
        total = weight_acc[a]
        scale = 1.0 / total if total > 0.0 else 0.0
        for s in range(acc.shape[0]):
            for c in range(acc.shape[1]):
                out_ring[s, c, o] = acc[s, c, a] * scale
                acc[s, c, a] = 0.0
        weight_acc[a] = 0.0


@njit(nogil=True, cache=True)
def discard(acc, weight_acc, start, stop):
    """Clear ``[start, stop)`` of the accumulators without finalising it (frames another pass
    already holds, or that a restarted pass cannot complete)."""
    capacity = acc.shape[-1]
    for position in range(start, stop):
        a = position % capacity
        for s in range(acc.shape[0]):
            for c in range(acc.shape[1]):
                acc[s, c, a] = 0.0
        weight_acc[a] = 0.0


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
