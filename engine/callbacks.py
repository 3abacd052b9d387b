"""What runs in the audio callback: one Numba call per block, on preallocated arrays only.

The Python callback around these does no more than pass the device buffers in; these never
wait for the worker: stems that are not final in time are replaced by the latency-aligned
dry signal for that block, and the late counter goes up (on the deck, not while the first stems
after a load or seek are still on their way: play starts at once with the dry track by design).
"""
from __future__ import annotations

from numba import njit

from .ola import mix_block, ring_write_interleaved, update_gain_targets
from .state import (BLOCKS, FALLBACK, INPUT_WRITTEN, LATE, LATE_WINDOWS, PLAY, PLAYHEAD, PLAYING_STEMS,
                    POSITION, SEEK_SEEN, SEEK_SERIAL, SEEK_TARGET, SEPARATED_FROM, STEMS_WRITTEN, WAITING_FOR_STEMS,
                    XRUNS)


@njit(nogil=True, cache=True)
def _note_fallback(audio, needed_stems):
    if needed_stems:
        if audio[FALLBACK] == PLAYING_STEMS:
            audio[LATE_WINDOWS] += 1
            audio[FALLBACK] = LATE
    else:
        audio[FALLBACK] = PLAYING_STEMS


@njit(nogil=True, cache=True)
def live_block(indata, outdata, input_ring, stem_ring, audio, worker, user_gain, mute, solo,
               dry_gain, gains, levels, latency_frames, ramp_frames, xrun):
    """Record ``indata`` and play the stems (or the dry input) from ``latency_frames`` ago."""
    frames = indata.shape[0]
    position = audio[POSITION]
    ring_write_interleaved(input_ring, position, indata)
    audio[INPUT_WRITTEN] = position + frames
    if xrun:
        audio[XRUNS] += 1
    update_gain_targets(gains, user_gain, mute, solo, dry_gain[0], ramp_frames)
    read_from = position - latency_frames
    ready = worker[SEPARATED_FROM] <= max(read_from, 0) and read_from + frames <= worker[STEMS_WRITTEN]
    _note_fallback(audio, not ready and read_from + frames > 0)
    mix_block(outdata, stem_ring, read_from, input_ring, read_from, gains, ready or read_from + frames <= 0,
              levels)
    audio[POSITION] = position + frames
    audio[BLOCKS] += 1


@njit(nogil=True, cache=True)
def deck_block(outdata, track, stems, audio, worker, transport, user_gain, mute, solo, dry_gain,
               gains, levels, ramp_frames, xrun):
    """Play the deck from its playhead: stems where separated, else the dry track."""
    if xrun:
        audio[XRUNS] += 1
    if transport[SEEK_SERIAL] != audio[SEEK_SEEN]:
        audio[PLAYHEAD] = transport[SEEK_TARGET]
        audio[SEEK_SEEN] = transport[SEEK_SERIAL]
        audio[FALLBACK] = WAITING_FOR_STEMS
    update_gain_targets(gains, user_gain, mute, solo, dry_gain[0], ramp_frames)
    outdata[:] = 0.0
    length = track.shape[-1]
    playhead = audio[PLAYHEAD]
    frames = min(outdata.shape[0], length - playhead)
    if transport[PLAY] == 0 or frames <= 0:
        levels[:] = 0.0
        return
    ready = worker[SEPARATED_FROM] <= playhead and playhead + frames <= worker[STEMS_WRITTEN]
    _note_fallback(audio, not ready)
    mix_block(outdata[:frames], stems, playhead, track, playhead, gains, ready, levels)
    audio[PLAYHEAD] = playhead + frames
    audio[POSITION] += outdata.shape[0]
    audio[BLOCKS] += 1


def warm_up_kernels(num_stems: int, channels: int) -> None:
    """Compile (or load from cache) both block kernels with the session's types."""
    import numpy as np

    from .state import SharedState, gain_state

    shared, gains, block = SharedState.create(num_stems), gain_state(num_stems), 4
    ring = np.zeros((channels, 16), np.float32)
    stems = np.zeros((num_stems, channels, 16), np.float32)
    indata = np.zeros((block, channels), np.float32)
    for out_channels in (channels, channels * (num_stems + 1)):
        outdata = np.zeros((block, out_channels), np.float32)
        live_block(indata, outdata, ring, stems, shared.audio, shared.worker, shared.user_gain,
                   shared.mute, shared.solo, shared.dry_gain, gains, shared.levels, 8, 4, False)
        deck_block(outdata, ring, stems, shared.audio, shared.worker, shared.transport,
                   shared.user_gain, shared.mute, shared.solo, shared.dry_gain, gains, shared.levels, 4, False)
