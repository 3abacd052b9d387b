"""The two-deck mixer, run in the audio callback: each deck's block (already mixed from its
stems by its own :func:`~engine.audio.stretched.stretched_deck_block`) through its channel fader
and the crossfader into the master, and through the headphone cue (PFL) into the cue bus.

Numba kernels on preallocated arrays: nothing here allocates or waits. The control side writes
only ``controls`` (one writer, under the decks' control lock); the callback alone writes the
gain ramps and the levels. Every gain change is a linear ramp (as the stem gains are), so a
crossfader jump never clicks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from stemdeck.engine.audio.callbacks import DeckBuffers, MixerBuffers
from stemdeck.engine.audio.mixer import GAIN_CURRENT, GAIN_TARGET, OUTPUT_LIMIT, _next_gain, _retarget, safe_sample
from stemdeck.engine.audio.record import RecordBuffers, record_block
from stemdeck.engine.audio.state import SharedState, gain_state
from stemdeck.engine.audio.stretched import StretchBuffers, stretched_deck_block

# controls[...] slots, control-written. VOLUME_*: channel faders, linear (1 = 0 dB);
# CROSSFADER: 0 = all A, 1 = all B; CURVE: one of the CURVES' indices; CUE_*: 1 = the deck is in
# the headphones (PFL, before its channel fader and the crossfader); CUE_MIX: the headphones
# hear 0 = the cue bus only ... 1 = the master only; MASTER: the master's gain, linear.
VOLUME_A, VOLUME_B, CROSSFADER, CURVE, CUE_A, CUE_B, CUE_MIX, MASTER = range(8)
NUM_CONTROLS = 8
# ramps[:, ...] columns (callback-owned, ``mixer.GAIN_*`` rows): what each deck sends where
TO_MASTER_A, TO_MASTER_B, TO_CUE_A, TO_CUE_B = range(4)
# levels[:, ...] columns (callback-written; row 0 peak, row 1 mean square): each deck after its
# channel fader and the crossfader, the master, the cue output
LEVEL_A, LEVEL_B, LEVEL_MASTER, LEVEL_CUE = range(4)

# The usual crossfader curves. linear: A falls as B rises (a dip of 6 dB in the middle);
# constant-power: cos/sin, the same loudness all the way for unrelated tracks; cut: both decks
# at full level over the whole travel except the last CUT_WIDTH at either end (scratch DJs).
CURVES = ("linear", "constant-power", "cut")
LINEAR, CONSTANT_POWER, CUT = range(3)
CUT_WIDTH = 0.05


def mix_controls() -> np.ndarray:
    """Fresh controls: faders at 0 dB, crossfader on A, constant power, no cue, cue mix halfway."""
    controls = np.zeros(NUM_CONTROLS, np.float64)
    controls[[VOLUME_A, VOLUME_B, MASTER]] = 1.0
    controls[CURVE] = CONSTANT_POWER
    controls[CUE_MIX] = 0.5
    return controls


def mix_ramps() -> np.ndarray:
    """The callback's ramp state ``(4, 4)``: deck A on the master at unity, the rest silent (as
    :func:`mix_controls` sets them, so the first block does not ramp)."""
    ramps = np.zeros((4, 4), np.float64)
    ramps[GAIN_CURRENT, TO_MASTER_A] = ramps[GAIN_TARGET, TO_MASTER_A] = 1.0
    ramps[GAIN_CURRENT, TO_CUE_A] = ramps[GAIN_TARGET, TO_CUE_A] = 0.5  # cue mix 0.5 of the master
    return ramps


@njit(nogil=True, cache=True)
def _unit(value):
    """``value`` within 0..1; NaN is 0 (a bad control value is silence, never noise)."""
    if not np.isfinite(value):
        return 0.0
    return min(max(value, 0.0), 1.0)


@njit(nogil=True, cache=True)
def crossfader_gains(position, curve):
    """The gains of deck A and deck B at crossfader ``position`` (0 = A, 1 = B) on ``curve``."""
    x = _unit(position)
    if curve == LINEAR:
        return 1.0 - x, x
    if curve == CUT:
        return min(1.0, (1.0 - x) / CUT_WIDTH), min(1.0, x / CUT_WIDTH)
    if x == 0.0:  # exactly: deck A alone is bit for bit what deck A plays
        return 1.0, 0.0
    if x == 1.0:
        return 0.0, 1.0
    return math.cos(0.5 * math.pi * x), math.sin(0.5 * math.pi * x)


@njit(nogil=True, cache=True)
def _fader(value):
    if not np.isfinite(value):
        return 0.0
    return min(max(value, 0.0), OUTPUT_LIMIT)


@njit(nogil=True, cache=True)
def update_mix_targets(ramps, controls, ramp_frames):
    """Start a ramp on every send whose target moved since the last block."""
    gain_a, gain_b = crossfader_gains(controls[CROSSFADER], int(controls[CURVE]))
    master = _fader(controls[MASTER])
    to_master_a = _fader(controls[VOLUME_A]) * gain_a * master
    to_master_b = _fader(controls[VOLUME_B]) * gain_b * master
    blend = _unit(controls[CUE_MIX])
    cue_a = 1.0 if controls[CUE_A] != 0.0 else 0.0
    cue_b = 1.0 if controls[CUE_B] != 0.0 else 0.0
    # np.int64(...), not the bare constants: Numba compiles a callee again for each literal argument
    _retarget(ramps, np.int64(TO_MASTER_A), to_master_a, ramp_frames)
    _retarget(ramps, np.int64(TO_MASTER_B), to_master_b, ramp_frames)
    _retarget(ramps, np.int64(TO_CUE_A), (1.0 - blend) * cue_a + blend * to_master_a, ramp_frames)
    _retarget(ramps, np.int64(TO_CUE_B), (1.0 - blend) * cue_b + blend * to_master_b, ramp_frames)


@njit(nogil=True, cache=True)
def _meter(levels, column, value):
    magnitude = abs(value)
    if magnitude > levels[0, column]:
        levels[0, column] = magnitude
    levels[1, column] += value * value


@njit(nogil=True, cache=True)
def mix_decks(out, deck_a, deck_b, channels, cue_column, ramps, levels):
    """Master (and cue) from the two decks' blocks.

    ``deck_a`` and ``deck_b`` are ``(frames, >= channels)``: each deck's mix in its first
    ``channels`` columns. ``out`` is ``(frames, out_channels)``: the master in its first
    ``channels`` columns, the cue bus from ``cue_column`` (negative: no cue output). Every
    sample written is finite and within +-OUTPUT_LIMIT. Stem outputs are copied separately
    (:func:`copy_columns`).
    """
    frames = out.shape[0]
    levels[:] = 0.0
    for i in range(frames):  # np.int64(...): one compiled callee, not one per literal column
        to_a = _next_gain(ramps, np.int64(TO_MASTER_A))
        to_b = _next_gain(ramps, np.int64(TO_MASTER_B))
        cue_a = _next_gain(ramps, np.int64(TO_CUE_A))
        cue_b = _next_gain(ramps, np.int64(TO_CUE_B))
        for c in range(channels):
            a, b = deck_a[i, c], deck_b[i, c]
            master = safe_sample(a * to_a + b * to_b)
            out[i, c] = master
            _meter(levels, np.int64(LEVEL_A), a * to_a)
            _meter(levels, np.int64(LEVEL_B), b * to_b)
            _meter(levels, np.int64(LEVEL_MASTER), master)
            if cue_column >= 0:
                cue = safe_sample(a * cue_a + b * cue_b)
                out[i, cue_column + c] = cue
                _meter(levels, np.int64(LEVEL_CUE), cue)
    if frames > 0:
        for k in range(levels.shape[1]):
            levels[1, k] /= frames * channels


@njit(nogil=True, cache=True)
def copy_columns(out, first_column, block, from_column):
    """``block``'s columns from ``from_column`` on into ``out``'s from ``first_column`` (a
    deck's stem outputs, as its own kernel wrote them)."""
    width = block.shape[1] - from_column
    for i in range(out.shape[0]):
        for c in range(width):
            out[i, first_column + c] = block[i, from_column + c]


class MixBuffers(NamedTuple):
    """The two-deck mixer's arrays and layout, handed to :func:`decks_block` (and, on JACK, to
    machine code: arrays and integers only)."""

    controls: np.ndarray  # (NUM_CONTROLS,) float64, control-written
    ramps: np.ndarray  # (4, 4) float64, callback-owned
    levels: np.ndarray  # (2, 4) float32, callback-written
    loaded: np.ndarray  # (2,) int64: whether deck A / B has a track (else it is silence); control-written
    scratch_a: np.ndarray  # (max_frames, C [+ C * S]) float32: deck A's block, callback-owned
    scratch_b: np.ndarray
    record: RecordBuffers  # the master's record tap
    ramp_frames: int
    channels: int
    cue_column: int  # -1: no cue output
    stems_column: int  # -1: no stem outputs
    stem_width: int


@njit(nogil=True, cache=True)
def decks_block(outdata, deck_a, stretch_a, deck_b, stretch_b, mix, xrun):
    """One output block of two decks: each deck's own block (stems, loops, tempo: what
    :func:`stretched_deck_block` plays on one deck) into its scratch, then the mix, the stem
    outputs, and the master's record tap."""
    frames = outdata.shape[0]
    block_a, block_b = mix.scratch_a[:frames], mix.scratch_b[:frames]
    if mix.loaded[0] != 0:
        stretched_deck_block(block_a, deck_a, stretch_a, xrun)
    else:
        block_a[:] = 0.0
    if mix.loaded[1] != 0:
        stretched_deck_block(block_b, deck_b, stretch_b, xrun)
    else:
        block_b[:] = 0.0
    update_mix_targets(mix.ramps, mix.controls, mix.ramp_frames)
    mix_decks(outdata, block_a, block_b, mix.channels, mix.cue_column, mix.ramps, mix.levels)
    if mix.stems_column >= 0:
        copy_columns(outdata, mix.stems_column, block_a, mix.channels)
        copy_columns(outdata, mix.stems_column + mix.stem_width, block_b, mix.channels)
    record_block(outdata, mix.record)


def idle_deck(num_stems: int, channels: int) -> tuple:
    """``(DeckBuffers, StretchBuffers)`` for a deck with no track yet (never played: its
    ``loaded`` flag is 0), shaped like a loaded deck's so one compiled block serves both."""
    shared = SharedState.create(num_stems)
    mixer = MixerBuffers.of(shared, gain_state(num_stems), 1)
    track = np.zeros((channels, 1), np.float32)
    stems = np.zeros((num_stems, channels, 1), np.float32)
    record = RecordBuffers.allocate(channels, 1)
    deck = DeckBuffers(track, stems, shared.audio, shared.worker, shared.transport, mixer, record, track, stems, 0)
    return deck, StretchBuffers.allocate(num_stems, channels, 1)


def warm_up_decks_mix(num_stems: int, channels: int, stem_columns: int) -> None:
    """Compile (or load from cache) the two-deck block with the session's types, on scratch arrays."""
    width = channels + stem_columns
    mix = MixBuffers(
        mix_controls(),
        mix_ramps(),
        np.zeros((2, 4), np.float32),
        np.zeros(2, np.int64),
        np.zeros((4, width), np.float32),
        np.zeros((4, width), np.float32),
        RecordBuffers.allocate(channels, 16),
        4,
        channels,
        channels,
        2 * channels if stem_columns else -1,
        stem_columns,
    )
    deck, stretch = idle_deck(num_stems, channels)
    out = np.zeros((4, 2 * channels + 2 * stem_columns), np.float32)
    decks_block(out, deck, stretch, deck, stretch, mix, False)
