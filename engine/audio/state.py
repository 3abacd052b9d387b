"""State shared between the audio callback, the separation worker and the control side.

Every array has exactly one writing side, so no lock is shared with the audio thread: the
control API serialises its own writers with a lock the callback never touches; readers take
what is there (a meter may be one block old, never torn in a way that matters).

The control side never writes the callback's slots: it asks for a reset (a seek, a new live
session, a new play) by bumping a serial in ``transport``, and the callback applies it at its
next block, writing the slots and then the serial it has seen. Until then, the readers below
(:func:`playhead_frames`, :func:`input_written_frames`) take the requested value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# audio[...] slots, written by the audio callback. FIRST_STEMS_AT is the output position (frames)
# at the end of the first block that played stems since the play it counts from (PLAY_STARTED_AT),
# or -1 while none has.
(
    POSITION,
    INPUT_WRITTEN,
    XRUNS,
    LATE_WINDOWS,
    FALLBACK,
    PLAYHEAD,
    SEEK_SEEN,
    BLOCKS,
    PLAY_SEEN,
    PLAY_STARTED_AT,
    FIRST_STEMS_AT,
    LOOP_SEEN,
    LOOP_IN_AT,
    LOOP_OUT_AT,
    COUNT_IN_LEFT,
    COUNT_IN_TOTAL,
    COUNT_IN_BEAT,
) = range(17)
# COUNT_IN_LEFT: frames of the count-in still to play before the loop restarts (0: none under
# way); COUNT_IN_TOTAL and COUNT_IN_BEAT: its length and its beat in frames when it began (the
# frames played are TOTAL - LEFT; a change of tempo mid count-in applies to the next one)
# audio[FALLBACK] values: stems playing; dry because stems fell behind; dry while the first
# stems after a load or seek are on their way (expected, so not counted as late)
PLAYING_STEMS, LATE, WAITING_FOR_STEMS = range(3)
# worker[...] slots, written by the separation worker; SCHEDULING: the policy its separation thread
# runs at (engine.worker.scheduling)
STEMS_WRITTEN, SEPARATED_FROM, WINDOWS_DONE, SCHEDULING = range(4)
# worker_seconds[...] slots, written by the separation worker
MAX_INFERENCE_S, MEAN_INFERENCE_S = range(2)
# transport[...] slots, written by the control side. SEEK_*: where the callback's position goes
# (deck: the playhead; live: a new session's rings start there); PLAY_SERIAL: a new play (or a new
# track) starts the first-stems timing afresh. LOOP_*: the deck's loop in frames (LOOP_OUT <=
# LOOP_IN: none), written between two increments of LOOP_SERIAL (odd while a write is under way),
# so the callback takes a pair only when the serial is even and the same before and after.
# COUNT_IN_BEATS: clicks before each restart of the loop (0: off); COUNT_IN_BEAT_FRAMES: one beat.
PLAY, SEEK_TARGET, SEEK_SERIAL, PLAY_SERIAL, LOOP_IN, LOOP_OUT, LOOP_SERIAL, COUNT_IN_BEATS, COUNT_IN_BEAT_FRAMES = (
    range(9)
)


@dataclass
class SharedState:
    user_gain: np.ndarray  # (S,) linear, control-written
    mute: np.ndarray  # (S,) uint8, control-written
    solo: np.ndarray  # (S,) uint8, control-written
    dry_mix: np.ndarray  # (1,) the crossfader: 0 = stems, 1 = dry, control-written
    transport: np.ndarray  # int64, control-written
    audio: np.ndarray  # int64, audio-written
    levels: np.ndarray  # (2, S + 1) peak and mean square, audio-written
    worker: np.ndarray  # int64, worker-written
    worker_seconds: np.ndarray  # float64, worker-written

    @staticmethod
    def specs(num_stems: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """Shape and dtype of every array, so they can live in shared memory."""
        return {
            "user_gain": ((num_stems,), "float32"),
            "mute": ((num_stems,), "uint8"),
            "solo": ((num_stems,), "uint8"),
            "dry_mix": ((1,), "float32"),
            "transport": ((9,), "int64"),
            "audio": ((17,), "int64"),
            "levels": ((2, num_stems + 1), "float32"),
            "worker": ((4,), "int64"),
            "worker_seconds": ((2,), "float64"),
        }

    @classmethod
    def create(cls, num_stems: int, arrays: dict[str, np.ndarray] | None = None) -> SharedState:
        """Fresh state in ``arrays`` (e.g. shared memory) or in new private arrays."""
        if arrays is None:
            arrays = {name: np.zeros(shape, dtype) for name, (shape, dtype) in cls.specs(num_stems).items()}
        for array in arrays.values():
            array.fill(0)
        arrays["user_gain"].fill(1.0)
        return cls(**arrays)


def seek_pending(shared: SharedState) -> bool:
    """A seek (or a live session's start) the callback has not applied yet."""
    return bool(shared.transport[SEEK_SERIAL] != shared.audio[SEEK_SEEN])


def playhead_frames(shared: SharedState) -> int:
    """The deck's playhead, or where a seek not yet applied puts it."""
    if seek_pending(shared):
        return int(shared.transport[SEEK_TARGET])
    return int(shared.audio[PLAYHEAD])


def input_written_frames(shared: SharedState) -> int:
    """Live input recorded so far, or where a new session's rings start while it is not applied."""
    if seek_pending(shared):
        return int(shared.transport[SEEK_TARGET])
    return int(shared.audio[INPUT_WRITTEN])


def applied_loop_frames(shared: SharedState) -> tuple[int, int]:
    """The loop ``(in, out)`` the callback plays, or the one asked for while it is not applied."""
    transport, audio = shared.transport, shared.audio
    if transport[LOOP_SERIAL] != audio[LOOP_SEEN]:
        return int(transport[LOOP_IN]), int(transport[LOOP_OUT])
    return int(audio[LOOP_IN_AT]), int(audio[LOOP_OUT_AT])


def first_stems_frames(shared: SharedState) -> int | None:
    """Output frames from the last play to the end of the first block that played stems; None
    before any play or while no stems have played since it."""
    transport, audio = shared.transport, shared.audio
    if transport[PLAY_SERIAL] == 0 or transport[PLAY_SERIAL] != audio[PLAY_SEEN] or audio[FIRST_STEMS_AT] < 0:
        return None
    return int(audio[FIRST_STEMS_AT] - audio[PLAY_STARTED_AT])


def gain_state(num_stems: int) -> np.ndarray:
    """The callback's ramp state ``(4, S + 1)``: current, target, step, remaining; stems at unity."""
    state = np.zeros((4, num_stems + 1), np.float64)
    state[0, :num_stems] = 1.0
    state[1, :num_stems] = 1.0
    return state
