"""What runs in the audio callback: one Numba call per block, on preallocated arrays only.

The Python callback around these does no more than pass the device buffers in, with the
session's arrays as one structure built when the session starts (:class:`LiveBuffers`,
:class:`DeckBuffers`): a field is named, never a position, so no argument can be swapped into a
new Numba specialisation compiled inside the callback. These never wait for the worker: stems
that are not final in time are replaced by the latency-aligned dry signal for that block, and
the late counter goes up (on the deck, not while the first stems after a load or seek are
still on their way: play starts at once with the dry track by design).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from stemdeck.engine.audio.click import ACCENT, BEAT
from stemdeck.engine.audio.mixer import mix_block, update_gain_targets
from stemdeck.engine.audio.record import RecordBuffers, record_block
from stemdeck.engine.audio.ring import ring_write_interleaved
from stemdeck.engine.audio.state import (
    BLOCKS,
    COUNT_IN_BEAT,
    COUNT_IN_BEAT_FRAMES,
    COUNT_IN_BEATS,
    COUNT_IN_LEFT,
    COUNT_IN_TOTAL,
    FALLBACK,
    FIRST_STEMS_AT,
    INPUT_WRITTEN,
    LATE,
    LATE_WINDOWS,
    LOOP_IN,
    LOOP_IN_AT,
    LOOP_OUT,
    LOOP_OUT_AT,
    LOOP_SEEN,
    LOOP_SERIAL,
    PLAY,
    PLAY_SEEN,
    PLAY_SERIAL,
    PLAY_STARTED_AT,
    PLAYHEAD,
    PLAYING_STEMS,
    POSITION,
    SEEK_SEEN,
    SEEK_SERIAL,
    SEEK_TARGET,
    SEPARATED_FROM,
    STEMS_WRITTEN,
    WAITING_FOR_STEMS,
    XRUNS,
    SharedState,
    gain_state,
)
from stemdeck.engine.audio.transport import loop_active, read_source, read_span, readable_frames

NO_CLICK = np.zeros((2, 1), np.float32)  # a deck built without a count-in click (warm-ups)


class MixerBuffers(NamedTuple):
    """The mixer's controls (control-written) and what the callback keeps and measures."""

    user_gain: np.ndarray  # (S,) linear
    mute: np.ndarray  # (S,) uint8
    solo: np.ndarray  # (S,) uint8
    dry_mix: np.ndarray  # (1,) 0 = stems, 1 = dry
    gains: np.ndarray  # (4, S + 1) ramp state, callback-owned
    levels: np.ndarray  # (2, S + 1) peak and mean square, callback-written
    ramp_frames: int

    @classmethod
    def of(cls, shared: SharedState, gains: np.ndarray, ramp_frames: int) -> MixerBuffers:
        return cls(shared.user_gain, shared.mute, shared.solo, shared.dry_mix, gains, shared.levels, int(ramp_frames))


class LiveBuffers(NamedTuple):
    input_ring: np.ndarray  # (C, capacity)
    stem_ring: np.ndarray  # (S, C, capacity)
    audio: np.ndarray
    worker: np.ndarray
    transport: np.ndarray
    mixer: MixerBuffers
    latency_frames: int
    record: RecordBuffers


class DeckBuffers(NamedTuple):
    track: np.ndarray  # (C, frames)
    stems: np.ndarray  # (S, C, frames)
    audio: np.ndarray
    worker: np.ndarray
    transport: np.ndarray
    mixer: MixerBuffers
    record: RecordBuffers
    track_block: np.ndarray  # (C, max_block) the source frames of one block, loop-aware
    stems_block: np.ndarray  # (S, C, max_block)
    crossfade_frames: int  # the loop seam's crossfade
    click: np.ndarray = NO_CLICK  # (2, click_frames) the count-in's accented and plain click


@njit(nogil=True, cache=True)
def _note_fallback(audio, needed_stems):
    if needed_stems:
        if audio[FALLBACK] == PLAYING_STEMS:
            audio[LATE_WINDOWS] += 1
            audio[FALLBACK] = LATE
    else:
        audio[FALLBACK] = PLAYING_STEMS


@njit(nogil=True, cache=True)
def _note_first_stems(audio, ready, block_frames):
    """The first stems played since the play: FIRST_STEMS_AT is the end of the block they are in."""
    if ready and audio[FIRST_STEMS_AT] < 0:
        audio[FIRST_STEMS_AT] = audio[POSITION] + block_frames


@njit(nogil=True, cache=True)
def _update_gains(mixer):
    update_gain_targets(mixer.gains, mixer.user_gain, mixer.mute, mixer.solo, mixer.dry_mix[0], mixer.ramp_frames)


@njit(nogil=True, cache=True)
def live_block(indata, outdata, live, xrun):
    """Record ``indata`` and play the stems (or the dry input) from ``live.latency_frames`` ago."""
    audio, transport, mixer = live.audio, live.transport, live.mixer
    if transport[SEEK_SERIAL] != audio[SEEK_SEEN]:  # a new session: its rings start here
        audio[POSITION] = transport[SEEK_TARGET]
        audio[INPUT_WRITTEN] = transport[SEEK_TARGET]
        audio[FALLBACK] = PLAYING_STEMS
        audio[SEEK_SEEN] = transport[SEEK_SERIAL]  # last: a reader that sees it sees the rest
    frames = indata.shape[0]
    position = audio[POSITION]
    ring_write_interleaved(live.input_ring, position, indata)
    audio[INPUT_WRITTEN] = position + frames
    if xrun:
        audio[XRUNS] += 1
    _update_gains(mixer)
    read_from = position - live.latency_frames
    ready = live.worker[SEPARATED_FROM] <= max(read_from, 0) and read_from + frames <= live.worker[STEMS_WRITTEN]
    _note_fallback(audio, not ready and read_from + frames > 0)
    mix_block(
        outdata,
        live.stem_ring,
        read_from,
        live.input_ring,
        read_from,
        mixer.gains,
        ready or read_from + frames <= 0,
        mixer.levels,
    )
    audio[POSITION] = position + frames
    audio[BLOCKS] += 1
    record_block(outdata, live.record)


@njit(nogil=True, cache=True)
def _apply_transport(audio, transport):
    """A seek or a new play asked for by the control side, applied at the start of a block."""
    if transport[SEEK_SERIAL] != audio[SEEK_SEEN]:
        audio[PLAYHEAD] = transport[SEEK_TARGET]
        audio[FALLBACK] = WAITING_FOR_STEMS
        audio[COUNT_IN_LEFT] = 0  # a seek ends a count-in under way
        audio[SEEK_SEEN] = transport[SEEK_SERIAL]  # last: a reader that sees it sees the rest
    if transport[PLAY_SERIAL] != audio[PLAY_SEEN]:
        audio[FIRST_STEMS_AT] = -1
        audio[PLAY_STARTED_AT] = audio[POSITION]
        audio[PLAY_SEEN] = transport[PLAY_SERIAL]


@njit(nogil=True, cache=True)
def _apply_loop(audio, transport):
    """Take the loop the control side asked for, when its serial says the pair is whole."""
    serial = transport[LOOP_SERIAL]
    if serial == audio[LOOP_SEEN] or serial % 2 == 1:
        return
    loop_in, loop_out = transport[LOOP_IN], transport[LOOP_OUT]
    if transport[LOOP_SERIAL] == serial:
        audio[LOOP_IN_AT] = loop_in
        audio[LOOP_OUT_AT] = loop_out
        audio[LOOP_SEEN] = serial  # last: a reader that sees it sees the pair


@njit(nogil=True, cache=True)
def _stems_cover(deck, playhead, frames, fade):
    """Whether separated stems cover every source frame this block reads."""
    audio = deck.audio
    low, high = read_span(playhead, frames, audio[LOOP_IN_AT], audio[LOOP_OUT_AT], fade, deck.track.shape[-1])
    return deck.worker[SEPARATED_FROM] <= low and high <= deck.worker[STEMS_WRITTEN]


@njit(nogil=True, cache=True)
def _read_block(deck, playhead, frames, use_stems, fade):
    """The block's source frames (track, and stems if used) into the scratch blocks; returns
    the playhead after them."""
    audio = deck.audio
    loop_in, loop_out = audio[LOOP_IN_AT], audio[LOOP_OUT_AT]
    if use_stems:
        for s in range(deck.stems.shape[0]):
            read_source(deck.stems_block[s], 0, deck.stems[s], playhead, frames, loop_in, loop_out, fade)
    return read_source(deck.track_block, 0, deck.track, playhead, frames, loop_in, loop_out, fade)


@njit(nogil=True, cache=True)
def _play_chunk_faded(out, deck, fade):
    """Up to one scratch block of ``out`` from the playhead, the loop's seam blended over
    ``fade`` frames; False at the track's end."""
    audio, mixer = deck.audio, deck.mixer
    length = deck.track.shape[-1]
    playhead = audio[PLAYHEAD]
    frames = readable_frames(playhead, out.shape[0], audio[LOOP_IN_AT], audio[LOOP_OUT_AT], length)
    if frames <= 0:
        return False
    ready = _stems_cover(deck, playhead, frames, fade)
    _note_fallback(audio, not ready)
    audio[PLAYHEAD] = _read_block(deck, playhead, frames, ready, fade)
    start = np.int64(0)  # not a literal 0, which would compile mix_block a second time
    mix_block(out[:frames], deck.stems_block, start, deck.track_block, start, mixer.gains, ready, mixer.levels)
    _note_first_stems(audio, ready, out.shape[0])
    return True


@njit(nogil=True, cache=True)
def _play_chunk(out, deck):
    """Up to one scratch block of ``out`` from the playhead; False at the track's end."""
    return _play_chunk_faded(out, deck, deck.crossfade_frames)


@njit(nogil=True, cache=True)
def _counting_in(deck):
    """Whether a count-in plays before the loop restarts: one asked for, and a loop playing."""
    audio, transport = deck.audio, deck.transport
    asked = transport[COUNT_IN_BEATS] > 0 and transport[COUNT_IN_BEAT_FRAMES] > 0
    return asked and loop_active(audio[LOOP_IN_AT], audio[LOOP_OUT_AT], deck.track.shape[-1])


@njit(nogil=True, cache=True)
def _fade_out(out, playhead, loop_out, seam):
    """The frames of ``out`` (from source frame ``playhead``) in the loop's last ``seam`` frames,
    faded towards silence: the count-in follows them, not the loop's start."""
    for i in range(out.shape[0]):
        left = loop_out - (playhead + i)
        if 0 < left <= seam:
            gain = left / (seam + 1)
            for c in range(out.shape[1]):
                out[i, c] *= gain


@njit(nogil=True, cache=True)
def _play_to_loop_out(out, deck):
    """Up to one scratch block from the playhead, stopping at the loop's out point, where the
    count-in starts (the playhead waits at the in point). Returns the frames played."""
    audio, transport = deck.audio, deck.transport
    loop_in, loop_out = audio[LOOP_IN_AT], audio[LOOP_OUT_AT]
    if audio[PLAYHEAD] >= loop_out:
        audio[PLAYHEAD] = loop_in  # as the source reader would: a loop set behind the playhead
    playhead = audio[PLAYHEAD]
    frames = min(out.shape[0], deck.track_block.shape[-1], loop_out - playhead)
    _play_chunk_faded(out[:frames], deck, np.int64(0))  # no fade, in the type of the others
    _fade_out(out[:frames], playhead, loop_out, min(deck.crossfade_frames, (loop_out - loop_in) // 2))
    if playhead + frames == loop_out:
        beat = transport[COUNT_IN_BEAT_FRAMES]
        audio[COUNT_IN_BEAT] = beat
        audio[COUNT_IN_TOTAL] = transport[COUNT_IN_BEATS] * beat
        audio[COUNT_IN_LEFT] = audio[COUNT_IN_TOTAL]
    return frames


@njit(nogil=True, cache=True)
def _play_count_in(out, deck):
    """The count-in's clicks from where it stands into ``out`` (zeros before); the playhead
    stays at the loop's in point. Returns the frames played."""
    audio, click = deck.audio, deck.click
    frames = min(out.shape[0], audio[COUNT_IN_LEFT])
    played, beat = audio[COUNT_IN_TOTAL] - audio[COUNT_IN_LEFT], audio[COUNT_IN_BEAT]
    click_frames = min(click.shape[1], beat)
    for i in range(frames):
        within = (played + i) % beat
        if within < click_frames:
            row = ACCENT if played + i < beat else BEAT
            out[i, :] = click[row, within]
    audio[COUNT_IN_LEFT] -= frames
    return frames


@njit(nogil=True, cache=True)
def _play_with_count_in(outdata, deck):
    """The block in pieces: the source up to the loop's out point, the count-in's clicks, then
    the source from the in point; returns whether anything played."""
    audio = deck.audio
    chunk, done = deck.track_block.shape[-1], 0
    while done < outdata.shape[0]:
        out = outdata[done:]
        if not _counting_in(deck):
            audio[COUNT_IN_LEFT] = 0  # count-in or loop off: the loop's start plays at once
            frames = min(chunk, out.shape[0]) if _play_chunk(out[:chunk], deck) else 0
        elif audio[COUNT_IN_LEFT] > 0:
            frames = _play_count_in(out, deck)
        else:
            frames = _play_to_loop_out(out, deck)
        if frames <= 0:
            break
        audio[POSITION] += frames
        done += frames
    return done > 0


@njit(nogil=True, cache=True)
def deck_block(outdata, deck, xrun):
    """Play the deck from its playhead: stems where separated, else the dry track; wrapped into
    the loop when one is set (with a count-in's clicks before each restart when asked); then
    hand the block to the recorder."""
    audio, transport, mixer = deck.audio, deck.transport, deck.mixer
    if xrun:
        audio[XRUNS] += 1
    _apply_transport(audio, transport)
    _apply_loop(audio, transport)
    _update_gains(mixer)
    outdata[:] = 0.0
    mixer.levels[:] = 0.0
    if transport[PLAY] != 0 and (transport[COUNT_IN_BEATS] > 0 or audio[COUNT_IN_LEFT] > 0):
        if _play_with_count_in(outdata, deck):
            audio[BLOCKS] += 1
    elif transport[PLAY] != 0:
        chunk = deck.track_block.shape[-1]
        played = False
        for start in range(0, outdata.shape[0], chunk):
            if not _play_chunk(outdata[start : start + chunk], deck):
                break
            audio[POSITION] += min(chunk, outdata.shape[0] - start)
            played = True
        if played:
            audio[BLOCKS] += 1
    record_block(outdata, deck.record)


def warm_up_kernels(num_stems: int, channels: int) -> None:
    """Compile (or load from cache) both block kernels with the session's types, on scratch arrays."""
    shared, block = SharedState.create(num_stems), 4
    mixer = MixerBuffers.of(shared, gain_state(num_stems), 4)
    ring = np.zeros((channels, 16), np.float32)
    stems = np.zeros((num_stems, channels, 16), np.float32)
    indata = np.zeros((block, channels), np.float32)
    outdata = np.zeros((block, channels), np.float32)
    record = RecordBuffers.allocate(channels, 16)
    live_block(
        indata,
        outdata,
        LiveBuffers(ring, stems, shared.audio, shared.worker, shared.transport, mixer, 8, record),
        False,
    )
    deck = DeckBuffers(ring, stems, shared.audio, shared.worker, shared.transport, mixer, record, ring, stems, 2)
    deck_block(outdata, deck, False)
