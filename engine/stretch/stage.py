"""The stretch stage: it reads the deck's source ahead of the playhead, stretches the stems and
the dry track together, and writes the result into the rings the callback plays
(:mod:`engine.audio.stretched`). It runs in a process of its own (:mod:`engine.stretch.process`),
on the track, stems, slots and rings in shared memory, so Rubber Band never holds the interpreter
lock the audio callback needs.

It works only while tempo or key is off unity. It reads exactly what the callback would read
(:func:`engine.audio.transport.read_source`, loop seam included): the stems where separated
(``read_span`` inside ``SEPARATED_FROM``..``STEMS_WRITTEN``, as the callback decides), else
silence on the stem channels and a "not ready" mark so the callback plays the dry signal, as
it does unstretched. The ring is kept shallow (``fill_frames``) so a change of tempo or key is
heard within the ring plus the stretcher's delay; ratios are set on the streaming stretcher,
never by starting it afresh, so a change has no click. A seek (or the callback reaching an
epoch's start before any frame was ready) starts a new epoch ahead of the playhead.

With a count-in asked for, the loop is read only up to its out point, its last frames faded out
as the unstretched deck fades them, then silence that flushes the stretcher (those frames carry
the out point as their source: the callback stops there and counts in). The count-in the
callback begins (``COUNT_INS``) starts a new epoch exactly at the in point, where the playhead
waits, with no lead: the stretcher restarted and primed with the frames before the in point.
A tempo or key change while the clicks play starts that epoch again at the new ratios (none of
it has been heard), so the restart is at the new tempo from its first frame.
"""

from __future__ import annotations

import collections
import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit

from stemdeck.engine.audio.state import (
    COUNT_IN_BEAT_FRAMES,
    COUNT_IN_BEATS,
    COUNT_IN_LEFT,
    LOOP_IN_AT,
    LOOP_OUT_AT,
    PLAY,
    PLAYHEAD,
    POSITION,
    SEEK_SEEN,
    SEEK_SERIAL,
    SEPARATED_FROM,
    STEMS_WRITTEN,
    SharedState,
)
from stemdeck.engine.audio.stretched import (
    COUNT_INS,
    DRAINED,
    EPOCH,
    EPOCH_COUNT_INS,
    EPOCH_SEEK,
    EPOCH_START,
    FED,
    JOINED,
    MISSED,
    READ,
    RUNNING,
    SEMITONES,
    TEMPO,
    WRITTEN,
    StretchBuffers,
    stretch_active,
)
from stemdeck.engine.audio.transport import advance, loop_active, read_source, read_span
from stemdeck.engine.stretch.stretcher import Stretcher

HISTORY_FRAMES = 1 << 16  # source positions of the input fed, kept while its output may still come
TAIL_LIMITS = 4  # the most flushing silence fed at a track's end, in stretcher flushes (_past_the_end)


@dataclass(frozen=True)
class StageConfig:
    """Sizes of the stretch stage. ``fill_frames`` plus the stretcher's delay (1280 frames at
    44.1 kHz) is how long a change of tempo or key takes to be heard: 76 ms by default. A stage
    process that dies is restarted ``max_restarts`` times within ``restart_window_s`` (the
    source plays on unstretched meanwhile); more deaths and the deck stays unstretched."""

    ring_frames: int = 8192  # output ring capacity
    fill_frames: int = 2048  # output kept ready ahead of the callback
    chunk_frames: int = 256  # source frames per stretcher call: short calls, steady refills
    lead_s: float = 0.06  # a new epoch starts this far ahead of the playhead
    max_lead_s: float = 0.5  # the lead doubles after each epoch the playhead reached too early
    join_timeout_s: float = 0.5  # played without joining this long: start afresh
    poll_s: float = 0.002  # while stretching: how often a full ring is looked at again
    idle_poll_s: float = 0.1  # at tempo 1 and key 0 (a change of either wakes the stage at once)
    ready_timeout_s: float = 60.0  # the first change off unity waits this long for the process
    max_restarts: int = 3
    restart_window_s: float = 60.0
    # The loop seam's crossfade while the key is shifted: Rubber Band's pitch shifting turns the
    # 5 ms seam's phase step on a held note into a hole (-9 to -12 dB for 10-40 ms on a tone
    # whose cycles do not fit the loop); over 40 ms it passes as the plain crossfade does.
    pitched_seam_ms: float = 40.0


class StageInputs(NamedTuple):
    """What the stage reads of the deck (all in shared memory): the track, its stems as the
    separation worker writes them, and the callback's, worker's and control side's slots."""

    track: np.ndarray  # (C, frames)
    stems: np.ndarray  # (S, C, frames)
    audio: np.ndarray
    worker: np.ndarray
    transport: np.ndarray


@njit(nogil=True, cache=True)
def source_positions(out, position, frames, loop_in, loop_out, length):
    """The source frame each of ``frames`` frames read from ``position`` comes from (as
    :func:`read_source` walks them); returns the position after them."""
    looping = 0 <= loop_in < loop_out <= length
    for i in range(frames):
        if looping and position >= loop_out:
            position = loop_in
        out[i] = min(position, length)
        position += 1
    if looping and position >= loop_out:
        position = loop_in
    return position


def backlog_frames(state: np.ndarray, audio: np.ndarray) -> int:
    """Output frames the stage wrote and the callback has not played in the current epoch (0
    while one is set up, idle, or after a seek or a count-in's start the stage has not started
    again from)."""
    epoch = int(state[EPOCH])
    if epoch % 2 == 1 or not state[RUNNING] or int(audio[SEEK_SEEN]) != int(state[EPOCH_SEEK]):
        return 0
    if state[COUNT_INS] != state[EPOCH_COUNT_INS]:
        return 0  # a count-in began: the epoch at the in point is still to start
    taken = int(state[READ]) if int(state[JOINED]) == epoch else 0
    return int(state[WRITTEN]) - taken


def unpublish(state: np.ndarray) -> None:
    """No epoch for the callback to join (EPOCH odd): it plays the source from its playhead."""
    state[RUNNING] = 0
    if state[EPOCH] % 2 == 0:
        state[EPOCH] += 1


# The stage feeds the audio callback: ahead of the separation (niced or idle) and other work.
STAGE_RT_PRIORITY = 1  # real-time round-robin, below any audio server's threads (JACK's: 70 and up)
STAGE_NICE = -10  # where real-time is not allowed


def raise_priority() -> None:
    """Best effort, where allowed (root, CAP_SYS_NICE or an rtprio limit): real-time at the lowest
    priority, so busy programs never starve it (as nice -10 on 2 cores at load 13 its ring ran
    dry 29 times in 3 s), else nice -10, else as it is. Its work is bounded: it sleeps whenever
    its ring is full, and runs at most about a third of a core."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(STAGE_RT_PRIORITY))
        return
    except (OSError, AttributeError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, STAGE_NICE)
    except OSError:
        pass


class StretchStage:
    """One track's stretch stage, stepped by the stage process: :meth:`step` does one chunk."""

    def __init__(
        self,
        deck: StageInputs,
        stretch: StretchBuffers,
        samplerate: int,
        crossfade_frames: int,
        config: StageConfig = StageConfig(),
        stretcher: Stretcher | None = None,
    ):
        self.deck, self.stretch, self.config = deck, stretch, config
        self.samplerate, self.crossfade_frames = samplerate, crossfade_frames
        num_stems, channels = deck.stems.shape[0], deck.stems.shape[1]
        self._channels = channels
        self._stretcher = stretcher  # made on the first use unless handed over (the warm-up's)
        self._input = np.zeros(((num_stems + 1) * channels, config.chunk_frames), np.float32)
        self._stem_rows = self._input[: num_stems * channels].reshape(num_stems, channels, -1)
        self._positions = np.zeros(HISTORY_FRAMES, np.int64)
        self._chunk_positions = np.zeros(config.chunk_frames, np.int64)
        self._lead_frames = int(config.lead_s * samplerate)
        self._fed = 0
        unpublish(stretch.state)  # the ring holds the last track's frames

    @property
    def stretcher(self) -> Stretcher | None:
        return self._stretcher

    @property
    def _running(self) -> bool:
        return bool(self.stretch.state[RUNNING])

    def backlog_frames(self) -> int:
        return backlog_frames(self.stretch.state, self.deck.audio)

    # -- one step ----------------------------------------------------------------------------------------

    def step(self) -> bool:
        """One chunk of work; False when there is none (idle, or the ring is full enough)."""
        deck, state = self.deck, self.stretch.state
        if not stretch_active(self.stretch.controls):
            state[RUNNING] = 0
            return False
        if deck.transport[SEEK_SERIAL] != deck.audio[SEEK_SEEN]:
            return False  # the callback has not moved the playhead yet
        if self._needs_new_epoch():
            self._start_epoch()
            return True
        self._stretcher.set_ratios(*self._ratios())
        drained = self._past_the_end()
        state[DRAINED] = drained
        if self.backlog_frames() >= self.config.fill_frames or drained:
            return False
        if int(state[JOINED]) == int(state[EPOCH]):
            self._lead_frames = int(self.config.lead_s * self.samplerate)
        self._feed_chunk()
        return True

    def _seam_frames(self) -> int:
        """The loop seam's crossfade for the key now (see ``StageConfig.pitched_seam_ms``)."""
        if self._ratios()[1] == 0.0:
            return self.crossfade_frames
        return max(self.crossfade_frames, int(round(self.config.pitched_seam_ms * self.samplerate / 1000)))

    def _ratios(self) -> tuple[float, float]:
        controls = self.stretch.controls
        return float(controls[TEMPO]), float(controls[SEMITONES])

    def _needs_new_epoch(self) -> bool:
        state, audio = self.stretch.state, self.deck.audio
        if not self._running or int(audio[SEEK_SEEN]) != int(state[EPOCH_SEEK]):
            return True
        if state[COUNT_INS] != state[EPOCH_COUNT_INS]:
            return True  # a count-in began: the in point, afresh
        epoch = int(state[EPOCH])
        if int(state[MISSED]) == epoch:
            self._lead_frames = min(2 * self._lead_frames, int(self.config.max_lead_s * self.samplerate))
            return True
        if audio[COUNT_IN_LEFT] > 0:  # none of it heard yet: afresh at new ratios
            self._epoch_position = self._count_in_end()
            return self._ratios() != self._epoch_ratios
        if int(state[JOINED]) != epoch and self.deck.transport[PLAY]:
            waited = int(audio[POSITION]) - self._epoch_position
            return waited > self._lead_frames + self.config.join_timeout_s * self.samplerate
        return False

    def _count_in_end(self) -> int:
        """The output position where the count-in under way ends (now, if none is): the callback
        joins an epoch at the in point only then, however fast it runs (a test's, say)."""
        audio = self.deck.audio
        return int(audio[POSITION]) + int(audio[COUNT_IN_LEFT])

    # -- epochs ----------------------------------------------------------------------------------------

    def _start_epoch(self) -> None:
        """Restart the stretcher ahead of the playhead, primed with the source before that frame
        (at the playhead itself while paused or counting in: the playhead waits there)."""
        deck, state = self.deck, self.stretch.state
        unpublish(state)  # odd: the callback keeps off the ring while it is set up
        state[EPOCH_SEEK] = int(deck.audio[SEEK_SEEN])
        counting_in = state[COUNT_INS] != state[EPOCH_COUNT_INS] or deck.audio[COUNT_IN_LEFT] > 0
        state[EPOCH_COUNT_INS] = state[COUNT_INS]  # before the playhead: the callback writes it first
        self._epoch_position = self._count_in_end()  # the wait to be joined counts from there
        playhead, length = int(deck.audio[PLAYHEAD]), deck.track.shape[-1]
        loop_in, loop_out = int(deck.audio[LOOP_IN_AT]), int(deck.audio[LOOP_OUT_AT])
        ahead = deck.transport[PLAY] and not counting_in
        start = advance(playhead, self._lead_frames, loop_in, loop_out, length) if ahead else playhead
        if self._stretcher is None:
            self._stretcher = Stretcher(self.samplerate, self._input.shape[0], self.config.chunk_frames)
        self._epoch_ratios = self._ratios()
        self._stretcher.set_ratios(*self._epoch_ratios)
        pad, self._drop = self._stretcher.restart()
        self._fed, self._cursor = 0, 0.0
        state[FED], state[DRAINED] = 0, 0
        self._tail, self._tail_limit = 0, 2 * pad + self.config.chunk_frames  # silence that flushes the stretcher
        # per chunk fed: (first input index, source frames per output frame, stems ready, and the
        # loop's out point and seam when read to a count-in, else -1 and 0)
        self._chunks: collections.deque[tuple[int, float, bool, int, int]] = collections.deque()
        state[WRITTEN] = 0
        self._prime(start, pad)
        self._read_at = start
        state[EPOCH_START] = start
        state[EPOCH] += 1  # even: published
        state[RUNNING] = 1

    def _prime(self, start: int, pad: int) -> None:
        """Feed the ``pad`` source frames before ``start`` (silence before the track), so the
        epoch's first frames come out as they sound in the track, not faded in from nothing."""
        chunk = self.config.chunk_frames
        for first in range(start - pad, start, chunk):
            frames = min(chunk, start - first)
            self._input[:, :frames] = 0.0
            skip = max(0, -first)
            if skip < frames:
                ready = self._stems_ready(first + skip, frames - skip, 0, 0)
                self._read(first + skip, frames - skip, 0, 0, ready, offset=skip)
            self._process(self._input[:, :frames])

    # -- feeding ---------------------------------------------------------------------------------------

    def _stems_ready(self, position: int, frames: int, loop_in: int, loop_out: int) -> bool:
        deck = self.deck
        low, high = read_span(position, frames, loop_in, loop_out, self._seam_frames(), deck.track.shape[-1])
        return bool(deck.worker[SEPARATED_FROM] <= low and high <= deck.worker[STEMS_WRITTEN])

    def _read(self, position: int, frames: int, loop_in: int, loop_out: int, ready: bool, offset: int = 0) -> int:
        """Source frames into the input block (stems, or silence where not separated; then dry)."""
        deck, fade, channels = self.deck, self._seam_frames(), self._channels
        if ready:
            for s in range(deck.stems.shape[0]):
                read_source(self._stem_rows[s], offset, deck.stems[s], position, frames, loop_in, loop_out, fade)
        else:
            self._stem_rows[:, :, offset : offset + frames] = 0.0
        dry = self._input[-channels:]
        return int(read_source(dry, offset, deck.track, position, frames, loop_in, loop_out, fade))

    def _past_the_end(self) -> bool:
        """Read past the track's end (no loop to go back into) and the stretcher flushed: nothing
        more to stretch until a seek or a loop.

        Flushed means its output reached the end: the last frame written was made from the
        track's end, so the callback's playhead gets there. The stretcher gives its output in
        steps of its own, so the silence that flushes it (``_tail_limit``) was sometimes a few
        frames short: the playhead stopped 12 frames before the end and the callback counted
        every later block as an underflow (1 start in 8 at tempo 1.25). More silence goes in
        until the end comes out, at most ``TAIL_LIMITS`` times that silence."""
        deck = self.deck
        length, loop_in, loop_out = deck.track.shape[-1], int(deck.audio[LOOP_IN_AT]), int(deck.audio[LOOP_OUT_AT])
        if self._read_at < length or loop_active(loop_in, loop_out, length) or self._tail < self._tail_limit:
            return False
        return self._last_written_source() >= length or self._tail >= TAIL_LIMITS * self._tail_limit

    def _last_written_source(self) -> int:
        """The source frame of the epoch's last ring frame (-1 before any)."""
        written, sources = int(self.stretch.state[WRITTEN]), self.stretch.source
        return int(sources[(written - 1) % sources.shape[0]]) if written else -1

    def _counting_in(self, loop_in: int, loop_out: int) -> bool:
        """A count-in asked for with a loop playing (as the callback's ``_counting_in``)."""
        transport = self.deck.transport
        asked = transport[COUNT_IN_BEATS] > 0 and transport[COUNT_IN_BEAT_FRAMES] > 0
        return bool(asked and loop_active(loop_in, loop_out, self.deck.track.shape[-1]))

    def _feed_chunk(self) -> None:
        deck, frames = self.deck, self.config.chunk_frames
        loop_in, loop_out = int(deck.audio[LOOP_IN_AT]), int(deck.audio[LOOP_OUT_AT])
        position = self._read_at
        if position >= deck.track.shape[-1]:
            self._tail += frames
        positions, out_point, seam = self._chunk_positions, -1, 0
        if self._counting_in(loop_in, loop_out):
            out_point, seam = loop_out, min(self._seam_frames(), (loop_out - loop_in) // 2)
            ready = self._read_to_out_point(position, loop_out, seam)
        else:
            ready = self._stems_ready(position, frames, loop_in, loop_out)
            source_positions(positions, position, frames, loop_in, loop_out, deck.track.shape[-1])
            self._read_at = self._read(position, frames, loop_in, loop_out, ready)
        at = (self._fed + np.arange(frames)) % HISTORY_FRAMES
        self._positions[at] = positions
        self._chunks.append((self._fed, self._stretcher.tempo, ready, out_point, seam))
        self._fed += frames
        self.stretch.state[FED] = self._fed
        self._process(self._input)

    def _read_to_out_point(self, position: int, loop_out: int, seam: int) -> bool:
        """One chunk while counting in: the source up to the loop's out point (no seam blended
        into the in point; its last frames faded towards silence, as the unstretched deck fades
        them), then silence, which flushes the stretcher; every frame from the out point on
        carries it as its source. Returns whether the stems cover the frames read."""
        frames, positions = self.config.chunk_frames, self._chunk_positions
        count = max(0, min(frames, loop_out - position))
        positions[:count] = position + np.arange(count)
        positions[count:] = loop_out
        self._input[:, count:] = 0.0
        ready = True
        if count > 0:
            ready = self._stems_ready(position, count, 0, 0)
            self._read(position, count, 0, 0, ready)
            self._input[:, :count] *= fade_out_gains(positions[:count], loop_out, seam)
        self._read_at = position + count
        return ready

    def _process(self, block: np.ndarray) -> None:
        out = self._stretcher.process(block)
        if out is None:
            return
        if self._drop > 0:
            dropped = min(self._drop, out.shape[-1])
            out, self._drop = out[:, dropped:], self._drop - dropped
        if out.shape[-1] > 0:
            self._write(out)

    # -- output ----------------------------------------------------------------------------------------

    def _map_output(self, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The source frame, stems-ready mark and gain of the next ``frames`` output frames: each
        chunk fed at tempo ``t`` gives one output frame per ``t`` source frames; a chunk read to
        a count-in fades its out point's seam out once more, in time as heard, so what the
        stretcher smears past the faded input does not end in a step where the clicks begin."""
        sources, ready = np.empty(frames, np.int64), np.empty(frames, np.uint8)
        gains = np.ones(frames, np.float32)
        done = 0
        while done < frames:
            chunks = self._chunks
            while len(chunks) > 1 and chunks[1][0] <= self._cursor:
                chunks.popleft()
            if not chunks:  # output from the priming only: the epoch's start
                sources[done:], ready[done:] = int(self.stretch.state[EPOCH_START]), 0
                return sources, ready, gains
            first, tempo, chunk_ready, out_point, seam = chunks[0]
            end = chunks[1][0] if len(chunks) > 1 else math.inf
            count = (
                frames - done
                if end == math.inf
                else min(frames - done, max(1, math.ceil((end - self._cursor) / tempo)))
            )
            index = np.minimum((self._cursor + np.arange(count) * tempo).astype(np.int64), self._fed - 1)
            sources[done : done + count] = self._positions[index % HISTORY_FRAMES]
            ready[done : done + count] = chunk_ready
            if out_point >= 0:
                gains[done : done + count] = fade_out_gains(sources[done : done + count], out_point, seam)
            self._cursor += count * tempo
            done += count
        return sources, ready, gains

    def _write(self, out: np.ndarray) -> None:
        """Stretched frames into the ring after the epoch's last (the callback reads up to WRITTEN)."""
        stretch, state = self.stretch, self.stretch.state
        frames, capacity = out.shape[-1], stretch.dry.shape[-1]
        sources, ready, gains = self._map_output(frames)
        out = out * gains
        at = (int(state[WRITTEN]) + np.arange(frames)) % capacity
        num_stems, channels = stretch.stems.shape[0], self._channels
        stretch.stems[:, :, at] = out[: num_stems * channels].reshape(num_stems, channels, frames)
        stretch.dry[:, at] = out[num_stems * channels :]
        stretch.ready[at] = ready
        stretch.source[at] = sources
        state[WRITTEN] += frames  # last: the callback reads only frames below it


def fade_out_gains(sources: np.ndarray, out_point: int, seam: int) -> np.ndarray:
    """Gains of frames from ``sources`` before a count-in: linear to silence over the ``seam``
    frames before ``out_point`` (as the unstretched deck fades them), 0 from it on, else 1."""
    left = out_point - sources
    return np.clip(left / (seam + 1), 0.0, 1.0).astype(np.float32)


def warm_up_stage(num_stems: int, channels: int, samplerate: int, config: StageConfig) -> Stretcher:
    """Compile (or load from Numba's cache) the stage's kernels and make its stretcher, by
    stretching silence on scratch arrays: the first change off unity is then heard as soon as
    any other. Returns the stretcher, for the stages to come."""
    frames = 4 * config.chunk_frames
    slots = SharedState.specs(num_stems)
    inputs = StageInputs(
        np.zeros((channels, frames), np.float32),
        np.zeros((num_stems, channels, frames), np.float32),
        *(np.zeros(*slots[name]) for name in ("audio", "worker", "transport")),
    )
    inputs.worker[STEMS_WRITTEN] = frames  # separated: the stems are read too
    # playing, as after a change mid-track: the epoch starts ahead of the playhead (``advance``).
    # A kernel first compiled in a real epoch's set-up (0.4 s on a busy machine with a cold cache)
    # leaves its start behind the playhead: the old tempo plays on until the join times out.
    inputs.transport[PLAY] = 1
    stretch = StretchBuffers.allocate(num_stems, channels, config.ring_frames)
    stretch.controls[TEMPO] = 0.8
    stage = StretchStage(inputs, stretch, samplerate, 2, config)
    for _ in range(16):
        stage.step()
    return stage.stretcher
