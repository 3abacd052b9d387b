"""The deck's callback when tempo or key is off unity: it plays the time-stretched stems and dry
that the stretch stage (:mod:`engine.stretch.stage`, in a process of its own) writes into rings
in shared memory.

At tempo 1 and key 0 the block is :func:`deck_block` itself, bit for bit. Otherwise the stage
runs in *epochs*: each starts at a source frame ahead of the playhead (``EPOCH_START``) and
writes its output from ring frame 0. The callback plays the source unstretched (as
:func:`deck_block` would) until its playhead reaches that frame, then joins the epoch and reads
the ring; each ring frame carries the source frame it was made from, so the playhead shown is
the source frame heard. A seek, or a new epoch, leaves the ring for the unstretched source at
the playhead until the stage has caught up. The ring running dry is counted (``UNDERFLOWS``)
and the rest of the block is silence: the callback never waits for the stage.

A count-in (practice) plays here too: while one is asked for, the stage stretches the loop only
up to its out point (faded out, then silence that flushes the stretcher), so the callback stops
at the first ring frame made from the out point, plays the clicks one beat *as heard* apart
(the track's beat / tempo), and leaves that epoch; the stage starts a new one exactly at the
in point (its stretcher restarted and primed with the frames before it, so nothing of the out
point's audio smears into the restart), which the callback joins the moment the clicks end.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from stemdeck.engine.audio.callbacks import (
    DeckBuffers,
    MixerBuffers,
    _apply_loop,
    _apply_transport,
    _counting_in,
    _note_fallback,
    _note_first_stems,
    _play_chunk,
    _play_count_in,
    _play_to_loop_out,
    _update_gains,
    deck_block,
)
from stemdeck.engine.audio.mixer import mix_block
from stemdeck.engine.audio.record import RecordBuffers, record_block
from stemdeck.engine.audio.state import (
    BLOCKS,
    COUNT_IN_BEAT,
    COUNT_IN_BEAT_FRAMES,
    COUNT_IN_BEATS,
    COUNT_IN_LEFT,
    COUNT_IN_TOTAL,
    LOOP_IN_AT,
    LOOP_OUT_AT,
    PLAY,
    PLAYHEAD,
    POSITION,
    SEEK_SEEN,
    XRUNS,
    SharedState,
    gain_state,
)

# state[...] slots. EPOCH, EPOCH_START, WRITTEN: stage-written (EPOCH odd while the stage sets an
# epoch up, even once published; WRITTEN counts the epoch's ring frames). The rest:
# callback-written (JOINED: the epoch it reads, 0 for none; READ: its ring frames taken;
# MISSED: an epoch whose start the playhead reached before any frame was ready; SEEK_NOTED:
# the last seek it left an epoch for).
# HELD, HELD_EPOCH: silent frames the callback has waited at an epoch's start for its first frame.
# Stage-written, for the control side's waits: RUNNING (an epoch is under way), EPOCH_SEEK (the
# callback's SEEK_SEEN the epoch started from), DRAINED (read past the track's end, stretcher
# flushed), FED (source frames fed into the epoch's stretcher). The control side writes EPOCH
# and RUNNING only while no stage process is alive (one that died: the source plays on).
# Callback-written, for the count-in: COUNT_INS (count-ins begun: a new one has the stage start an
# epoch at the loop's in point), LEFT_EPOCH (the epoch the last count-in left, never rejoined),
# RESUMING (1 from a count-in's start until the ring plays again from the in point). Stage-written:
# EPOCH_COUNT_INS, the COUNT_INS the current epoch was started for.
(
    EPOCH,
    EPOCH_START,
    WRITTEN,
    JOINED,
    READ,
    UNDERFLOWS,
    MISSED,
    SEEK_NOTED,
    HELD,
    HELD_EPOCH,
    RUNNING,
    EPOCH_SEEK,
    DRAINED,
    FED,
    COUNT_INS,
    LEFT_EPOCH,
    RESUMING,
    EPOCH_COUNT_INS,
) = range(18)
STATE_SLOTS = 18
# controls[...] slots, control-written
TEMPO, SEMITONES = range(2)
# joining the stage's output, and leaving it for the source, crossfade over this many frames
# (6 ms at 44.1 kHz): the two sides are the same music at another pitch or phase, so a cut clicks
FADE_FRAMES = 256
# at an epoch's start with nothing stretched yet (play pressed at once after a change, a loaded
# machine) the callback plays silence, not the source at the wrong tempo, for at most this long
# (93 ms at 44.1 kHz); then it plays on unstretched and the stage starts again further ahead
HOLD_FRAMES = 4096
NO_STOP = np.iinfo(np.int64).max  # the ring plays on whatever source frame it reaches


class StretchBuffers(NamedTuple):
    """The stage's output rings and the slots the stage, the callback and the control side share
    (the first six in shared memory, :meth:`specs`; the last two are the callback's own)."""

    stems: np.ndarray  # (S, C, capacity) float32, stage-written
    dry: np.ndarray  # (C, capacity) float32, stage-written
    ready: np.ndarray  # (capacity,) uint8: the stems were separated at this frame's source; stage-written
    source: np.ndarray  # (capacity,) int64: the source frame this ring frame was made from; stage-written
    state: np.ndarray  # (STATE_SLOTS,) int64, see the slots above
    controls: np.ndarray  # (2,) float64: tempo (1 = as recorded), key shift in semitones; control-written
    fade: np.ndarray  # (FADE_FRAMES * C * (S + 1),) float32: the other side of a crossfade; callback-owned
    gains_saved: np.ndarray  # (4, S + 1) float64: the gain ramps before a crossfade's first side; callback-owned

    @staticmethod
    def specs(num_stems: int, channels: int, capacity_frames: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """Shape and dtype of the arrays the stage process shares, so they can live in shared memory."""
        return {
            "stems": ((num_stems, channels, capacity_frames), "float32"),
            "dry": ((channels, capacity_frames), "float32"),
            "ready": ((capacity_frames,), "uint8"),
            "source": ((capacity_frames,), "int64"),
            "state": ((STATE_SLOTS,), "int64"),
            "controls": ((2,), "float64"),
        }

    @classmethod
    def of(cls, arrays: dict[str, np.ndarray]) -> StretchBuffers:
        """The buffers on ``arrays`` (:meth:`specs`'s, e.g. in shared memory) as they are."""
        num_stems, channels = arrays["stems"].shape[:2]
        return cls(
            **arrays,
            fade=np.zeros(FADE_FRAMES * channels * (num_stems + 1), np.float32),
            gains_saved=np.zeros((4, num_stems + 1), np.float64),
        )

    @classmethod
    def allocate(cls, num_stems: int, channels: int, capacity_frames: int) -> StretchBuffers:
        """Private buffers at tempo 1, key 0 (the warm-up's)."""
        specs = cls.specs(num_stems, channels, capacity_frames)
        buffers = cls.of({key: np.zeros(shape, dtype) for key, (shape, dtype) in specs.items()})
        buffers.controls[TEMPO] = 1.0
        return buffers


@njit(nogil=True, cache=True)
def stretch_active(controls):
    """Whether tempo or key is off unity (then the deck plays the stage's output)."""
    return controls[TEMPO] != 1.0 or controls[SEMITONES] != 0.0


@njit(nogil=True, cache=True)
def _frames_before(stretch, frames, stop_source):
    """How many of the next ``frames`` ring frames were made from source frames before ``stop_source``."""
    capacity, read = stretch.dry.shape[-1], stretch.state[READ]
    for i in range(frames):
        if stretch.source[(read + i) % capacity] >= stop_source:
            return i
    return frames


@njit(nogil=True, cache=True)
def _play_ring(out, deck, stretch, stop_source):
    """Fill ``out`` from the joined epoch's ring, stopping before the first frame made from
    ``stop_source`` or later (the loop's out point, where a count-in starts): returns the frames
    played then; else ``out``'s length, what the ring lacks silent (counted)."""
    audio, mixer, state = deck.audio, deck.mixer, stretch.state
    capacity = stretch.dry.shape[-1]
    available = min(max(state[WRITTEN] - state[READ], 0), out.shape[0])
    frames = _frames_before(stretch, available, stop_source)
    i = 0
    while i < frames:
        at = (state[READ] + i) % capacity
        ready = stretch.ready[at]
        run = 1
        while i + run < frames and (at + run) < capacity and stretch.ready[at + run] == ready:
            run += 1
        _note_fallback(audio, ready == 0)
        mix_block(out[i : i + run], stretch.stems, at, stretch.dry, at, mixer.gains, ready != 0, mixer.levels)
        _note_first_stems(audio, ready != 0, out.shape[0])
        i += run
    if frames > 0:
        heard = stretch.source[(state[READ] + frames - 1) % capacity] + 1
        audio[PLAYHEAD] = min(heard, deck.track.shape[-1])
        state[READ] += frames
    if frames < available:
        return frames  # the out point
    if frames < out.shape[0] and audio[PLAYHEAD] < deck.track.shape[-1]:
        state[UNDERFLOWS] += 1  # the stage fell behind (past the track's end there is nothing to wait for)
    return out.shape[0]


@njit(nogil=True, cache=True)
def _copy_gains(dest, source):
    """``dest[:] = source`` for the ``(4, S + 1)`` gain state, element by element: Numba's array
    assignment brings its shape-mismatch error's string formatting into the compile (seconds of
    a first start). For the same reason calls here pass ``np.int64(...)``/``np.bool_(...)``, not
    constants: Numba compiles a callee once more for each literal argument it is given."""
    for row in range(dest.shape[0]):
        for column in range(dest.shape[1]):
            dest[row, column] = source[row, column]


@njit(nogil=True, cache=True)
def _crossfade(out, deck, stretch, to_ring):
    """The first frames of ``out`` crossfaded from the source played on unstretched to the ring
    (``to_ring``: joining) or from the ring to the source (leaving); both sides are mixed with the
    same gain ramps. Returns the frames played; the playhead ends on the side faded to."""
    audio, mixer, state = deck.audio, deck.mixer, stretch.state
    channels = out.shape[1]  # at most C * (S + 1): the fade buffer holds FADE_FRAMES frames of it
    frames = min(out.shape[0], stretch.fade.shape[0] // channels, max(state[WRITTEN] - state[READ], 0))
    if frames <= 0:
        return 0
    # A contiguous (frames, channels) view, as the output blocks are: one compiled _play_chunk for both
    source = stretch.fade[: frames * channels].reshape(frames, channels)
    source[:] = 0.0
    _copy_gains(stretch.gains_saved, mixer.gains)
    start = audio[PLAYHEAD]
    _play_chunk(source, deck)  # at the track's end: silence
    source_end = audio[PLAYHEAD]
    _copy_gains(mixer.gains, stretch.gains_saved)
    audio[PLAYHEAD] = start
    _play_ring(out[:frames], deck, stretch, np.int64(NO_STOP))  # not a literal: see _copy_gains
    for i in range(frames):
        weight = (i + 1) / (frames + 1)  # of the ring
        if not to_ring:
            weight = 1.0 - weight
        for c in range(channels):
            out[i, c] = weight * out[i, c] + (1.0 - weight) * source[i, c]
    if not to_ring:
        audio[PLAYHEAD] = source_end
    return frames


@njit(nogil=True, cache=True)
def _begin_count_in(deck, stretch):
    """At the loop's out point: the count-in's clicks one beat as heard apart (the track's beat
    over the tempo, fixed for this count-in), the playhead waiting at the in point, the ring
    left; the stage is told (COUNT_INS, last) to start an epoch there."""
    audio, transport, state = deck.audio, deck.transport, stretch.state
    beat = max(1, int(round(transport[COUNT_IN_BEAT_FRAMES] / stretch.controls[TEMPO])))
    audio[COUNT_IN_BEAT] = beat
    audio[COUNT_IN_TOTAL] = transport[COUNT_IN_BEATS] * beat
    audio[COUNT_IN_LEFT] = audio[COUNT_IN_TOTAL]
    audio[PLAYHEAD] = audio[LOOP_IN_AT]
    state[LEFT_EPOCH] = state[EPOCH]
    state[JOINED] = 0
    state[RESUMING], state[HELD] = 1, 0
    state[COUNT_INS] += 1


@njit(nogil=True, cache=True)
def _resume(out, deck, stretch):
    """After a count-in: joins the stage's epoch at the in point as soon as it has a frame (no
    crossfade: clicks, not music, came before; the ring plays next); silence while it has none,
    for at most HOLD_FRAMES, then as after any other epoch missed. Returns the frames of
    silence played, 0 once joined or given up."""
    audio, state = deck.audio, stretch.state
    epoch = state[EPOCH]
    published = epoch > 0 and epoch % 2 == 0 and epoch != state[LEFT_EPOCH] and state[MISSED] != epoch
    if published and state[EPOCH_START] == audio[PLAYHEAD] and state[WRITTEN] > 0:
        state[READ], state[JOINED], state[RESUMING] = 0, epoch, 0
        return 0
    if state[HELD] < HOLD_FRAMES:
        state[HELD] += out.shape[0]
        return out.shape[0]
    state[RESUMING] = 0
    return 0


@njit(nogil=True, cache=True)
def _play_source(out, deck, stretch):
    """Unstretched from the playhead until the stage's epoch starts (stopping there to join it),
    or to the loop's out point where a count-in starts; returns the frames played, 0 at the
    track's end."""
    audio, state = deck.audio, stretch.state
    epoch = state[EPOCH]
    frames = min(out.shape[0], deck.track_block.shape[-1])
    if epoch > 0 and epoch % 2 == 0 and state[MISSED] != epoch and epoch != state[LEFT_EPOCH]:
        to_start = state[EPOCH_START] - audio[PLAYHEAD]
        if to_start == 0:
            if state[WRITTEN] > 0:
                state[READ] = 0
                state[JOINED] = epoch
                return _crossfade(out, deck, stretch, np.bool_(True))
            if state[HELD_EPOCH] != epoch:
                state[HELD_EPOCH], state[HELD] = epoch, 0
            if state[HELD] < HOLD_FRAMES:
                state[HELD] += out.shape[0]
                return out.shape[0]  # silence; the playhead waits at the start
            state[MISSED] = epoch  # the stage was too slow: it starts again further ahead
        elif 0 < to_start < frames:
            frames = to_start
    if _counting_in(deck):
        frames = _play_to_loop_out(out[:frames], deck)
        if audio[COUNT_IN_LEFT] > 0:
            _begin_count_in(deck, stretch)  # at the tempo heard, not the track's
        return frames
    if not _play_chunk(out[:frames], deck):
        return 0
    return frames


@njit(nogil=True, cache=True)
def _stretched_blocks(outdata, deck, stretch):
    audio, state = deck.audio, stretch.state
    done = 0
    while done < outdata.shape[0]:
        out = outdata[done:]
        if state[JOINED] != 0 and state[JOINED] != state[EPOCH]:
            state[JOINED] = 0  # the stage started afresh: the source from the playhead shown
        counting = _counting_in(deck)
        if audio[COUNT_IN_LEFT] > 0 and not counting:
            audio[COUNT_IN_LEFT] = 0  # count-in or loop off: the loop's start plays at once
        played = 0
        if audio[COUNT_IN_LEFT] > 0:
            played = _play_count_in(out, deck)
        elif state[JOINED] != 0:
            played = _play_ring(out, deck, stretch, audio[LOOP_OUT_AT] if counting else np.int64(NO_STOP))
            if played < out.shape[0]:
                _begin_count_in(deck, stretch)
        elif state[RESUMING] != 0:
            played = _resume(out, deck, stretch)
        if played == 0 and audio[COUNT_IN_LEFT] == 0 and state[JOINED] == 0 and state[RESUMING] == 0:
            played = _play_source(out, deck, stretch)
            if played <= 0 and audio[COUNT_IN_LEFT] == 0:
                break
        done += played
    return done


@njit(nogil=True, cache=True)
def _leave(outdata, deck, stretch):
    """Back at tempo 1 and key 0: a crossfade from the ring to the source, then the source."""
    state = stretch.state
    done = _crossfade(outdata, deck, stretch, np.bool_(False)) if state[JOINED] != 0 else 0
    state[JOINED] = 0
    chunk = deck.track_block.shape[-1]
    while done < outdata.shape[0]:
        frames = min(chunk, outdata.shape[0] - done)
        if not _play_chunk(outdata[done : done + frames], deck):
            break
        done += frames
    return done


@njit(nogil=True, cache=True)
def stretched_deck_block(outdata, deck, stretch, xrun):
    """The deck's block: :func:`deck_block` at tempo 1 and key 0, else the stage's output (and
    the block that leaves it, crossfading back to the source)."""
    audio, transport, mixer, state = deck.audio, deck.transport, deck.mixer, stretch.state
    active = stretch_active(stretch.controls)
    if not active and (state[JOINED] == 0 or state[JOINED] != state[EPOCH]):
        state[JOINED] = 0  # the playhead already holds the source frame heard next
        state[RESUMING] = 0  # a count-in under way ends unstretched, as it began
        deck_block(outdata, deck, xrun)
        return
    if xrun:
        audio[XRUNS] += 1
    _apply_transport(audio, transport)
    if audio[SEEK_SEEN] != state[SEEK_NOTED]:
        state[SEEK_NOTED] = audio[SEEK_SEEN]
        state[JOINED] = 0  # the ring holds audio from before the seek
        state[RESUMING] = 0  # and ended any count-in
    _apply_loop(audio, transport)
    _update_gains(mixer)
    outdata[:] = 0.0
    mixer.levels[:] = 0.0
    if transport[PLAY] == 0:
        if not active:
            state[JOINED] = 0
    elif (_stretched_blocks(outdata, deck, stretch) if active else _leave(outdata, deck, stretch)) > 0:
        audio[POSITION] += outdata.shape[0]
        audio[BLOCKS] += 1
    record_block(outdata, deck.record)


def warm_up_stretched(num_stems: int, channels: int) -> None:
    """Compile (or load from cache) the stretched block with the session's types, on scratch arrays."""
    shared = SharedState.create(num_stems)
    mixer = MixerBuffers.of(shared, gain_state(num_stems), 4)
    track = np.zeros((channels, 16), np.float32)
    stems = np.zeros((num_stems, channels, 16), np.float32)
    record = RecordBuffers.allocate(channels, 16)
    deck = DeckBuffers(track, stems, shared.audio, shared.worker, shared.transport, mixer, record, track, stems, 2)
    stretch = StretchBuffers.allocate(num_stems, channels, 16)
    outdata = np.zeros((4, channels), np.float32)
    for tempo in (1.0, 0.5):
        stretch.controls[TEMPO] = tempo
        stretched_deck_block(outdata, deck, stretch, False)
