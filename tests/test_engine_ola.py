"""Numba kernels against plain NumPy: rings, overlap-add, the mix, ramps, mute and solo."""

import numpy as np
import pytest

from stemdeck.engine.audio.mixer import GAIN_CURRENT, mix_block, mix_block_reference, update_gain_targets
from stemdeck.engine.audio.ring import ring_read, ring_write_interleaved
from stemdeck.engine.audio.state import gain_state
from stemdeck.engine.worker.ola import accumulate_window, finalize


def test_ring_write_and_read_wrap_around():
    ring = np.zeros((2, 10), np.float32)
    block = np.arange(14, dtype=np.float32).reshape(2, 7)
    ring_write_interleaved(ring, 7, np.ascontiguousarray(block.T))  # positions 7..13 wrap to 7,8,9,0,1,2,3
    out = np.zeros((2, 7), np.float32)
    ring_read(ring, 7, out, 14)
    assert np.array_equal(out, block)
    ring_read(ring, -3, out, 14)  # before the stream started: zeros
    assert np.array_equal(out[:, :3], np.zeros((2, 3))) and np.array_equal(out[:, 3:], ring[:, :4])
    ring_read(ring, 12, out, 14)  # beyond what was written: zeros
    assert np.array_equal(out[:, 2:], np.zeros((2, 5)))


@pytest.mark.parametrize("in_channels", [1, 2])
def test_interleaved_device_blocks_fill_every_ring_channel(in_channels):
    ring = np.zeros((2, 8), np.float32)
    block = np.arange(5 * in_channels, dtype=np.float32).reshape(5, in_channels)
    ring_write_interleaved(ring, 6, block)
    expected = np.repeat(block, 2 // in_channels, axis=1).T
    assert np.array_equal(ring[:, [6, 7, 0, 1, 2]], expected)


def test_overlap_add_equals_numpy_with_wrap_around():
    rng = np.random.default_rng(0)
    window, hop, capacity, count = 12, 5, 17, 6
    weights = rng.random(window).astype(np.float32)
    weights[:2] = 0
    windows = rng.standard_normal((count, 2, 1, window)).astype(np.float32)
    acc = np.zeros((2, 1, capacity), np.float32)
    weight_acc = np.zeros(capacity, np.float32)
    out = np.zeros((2, 1, 64), np.float32)
    expected_num = np.zeros((2, 1, 64))
    expected_den = np.zeros(64)
    final = 0
    for k in range(count):
        start = 3 + k * hop
        accumulate_window(acc, weight_acc, windows[k], weights, start)
        expected_num[..., start : start + window] += weights * windows[k]
        expected_den[start : start + window] += weights
        finalize(acc, weight_acc, out, final, start + hop)
        final = start + hop
    covered = expected_den[:final] > 0
    expected = np.where(covered, expected_num[..., :final] / np.where(covered, expected_den[:final], 1), 0)
    assert np.allclose(out[..., :final], expected, atol=1e-6)


def _mix(stems, dry, state, use_stems=True, out_channels=2):
    out = np.zeros((stems.shape[-1], out_channels), np.float32)
    levels = np.zeros((2, stems.shape[0] + 1), np.float32)
    mix_block(out, stems, 0, dry, 0, state, use_stems, levels)
    return out, levels


@pytest.mark.parametrize("frames", [1, 64, 65, 256, 8193])
def test_mix_equals_numpy_for_settled_gains(frames):
    rng = np.random.default_rng(frames)
    # music-like levels: the mix stays inside the mixer's +12 dBFS hard limit (OUTPUT_LIMIT)
    stems = 0.25 * rng.standard_normal((4, 2, frames)).astype(np.float32)
    dry = 0.25 * rng.standard_normal((2, frames)).astype(np.float32)
    gains = np.array([1.0, 0.5, 0.0, 2.0, 0.25])
    state = gain_state(4)
    state[0], state[1] = gains, gains
    out, levels = _mix(stems, dry, state, out_channels=10)
    expected = mix_block_reference(stems, dry, gains)
    assert np.allclose(out[:, :2].T, expected, atol=1e-5)
    for s in range(4):  # each stem on its own pair after the mix
        assert np.allclose(out[:, 2 + 2 * s : 4 + 2 * s].T, gains[s] * stems[s], atol=1e-6)
    assert levels[0, 4] == pytest.approx(np.abs(expected).max(), rel=1e-5)
    assert levels[1, 4] == pytest.approx(np.mean(expected**2), rel=1e-4)


def test_gain_change_is_a_linear_10ms_ramp():
    ramp = 441  # 10 ms at 44.1 kHz
    state = gain_state(1)
    update_gain_targets(state, np.array([0.0], np.float32), np.zeros(1, np.uint8), np.zeros(1, np.uint8), 0.0, ramp)
    stems = np.ones((1, 1, 600), np.float32)
    out, _ = _mix(stems, np.zeros((1, 600), np.float32), state, out_channels=1)
    expected = np.clip(1 - np.arange(1, 601) / ramp, 0, None)
    assert np.allclose(out[:, 0], expected, atol=1e-6)
    assert np.max(np.abs(np.diff(out[:, 0]))) <= 1 / ramp + 1e-7  # no step: no click
    assert state[GAIN_CURRENT, 0] == 0.0


@pytest.mark.parametrize(
    "mute,solo,expected",
    [
        ([0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]),
        ([0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]),  # mute vocals
        ([0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]),  # solo bass
        ([0, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 1]),  # mute wins over solo
        ([0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]),  # several solos
    ],
)
def test_dj_mixer_mute_and_solo(mute, solo, expected):
    state = gain_state(4)
    update_gain_targets(state, np.ones(4, np.float32), np.array(mute, np.uint8), np.array(solo, np.uint8), 0.0, 1)
    assert state[1, :4].tolist() == expected


def test_dry_crossfade_targets():
    state = gain_state(2)
    update_gain_targets(state, np.array([1.0, 0.5], np.float32), np.zeros(2, np.uint8), np.zeros(2, np.uint8), 0.25, 10)
    assert state[1].tolist() == pytest.approx([0.75, 0.375, 0.25])


def test_fallback_plays_the_dry_signal_whatever_the_gains():
    stems = np.full((2, 2, 32), 7.0, np.float32)
    dry = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    state = gain_state(2)
    state[0], state[1] = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    out, _ = _mix(stems, dry, state, use_stems=False)
    assert np.array_equal(out.T, dry)
