"""State shared between the audio callback, the separation worker and the control side.

Every array has exactly one writing side, so no lock is shared with the audio thread: the
control API serialises its own writers with a lock the callback never touches; readers take
what is there (a meter may be one block old, never torn in a way that matters).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# audio[...] slots, written by the audio callback
POSITION, INPUT_WRITTEN, XRUNS, LATE_WINDOWS, FALLBACK, PLAYHEAD, SEEK_SEEN, BLOCKS = range(8)
# audio[FALLBACK] values: stems playing; dry because stems fell behind; dry while the first
# stems after a load or seek are on their way (expected, so not counted as late)
PLAYING_STEMS, LATE, WAITING_FOR_STEMS = range(3)
# worker[...] slots, written by the separation worker
STEMS_WRITTEN, SEPARATED_FROM, WINDOWS_DONE, WORKER_ERRORS = range(4)
# worker_seconds[...] slots
LAST_INFERENCE_S, MAX_INFERENCE_S, MEAN_INFERENCE_S = range(3)
# transport[...] slots, written by the control side
PLAY, SEEK_TARGET, SEEK_SERIAL = range(3)


@dataclass
class SharedState:
    user_gain: np.ndarray  # (S,) linear, control-written
    mute: np.ndarray  # (S,) uint8
    solo: np.ndarray  # (S,) uint8
    dry_gain: np.ndarray  # (1,) 0 = stems, 1 = dry (crossfader), control-written
    transport: np.ndarray  # int64, control-written
    audio: np.ndarray  # int64, audio-written
    levels: np.ndarray  # (2, S + 1) peak and mean square, audio-written
    worker: np.ndarray  # int64, worker-written
    worker_seconds: np.ndarray  # float64, worker-written

    @staticmethod
    def specs(num_stems: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """Shape and dtype of every array, so they can live in shared memory."""
        return {"user_gain": ((num_stems,), "float32"), "mute": ((num_stems,), "uint8"),
                "solo": ((num_stems,), "uint8"), "dry_gain": ((1,), "float32"),
                "transport": ((3,), "int64"), "audio": ((8,), "int64"),
                "levels": ((2, num_stems + 1), "float32"), "worker": ((4,), "int64"),
                "worker_seconds": ((3,), "float64")}

    @classmethod
    def create(cls, num_stems: int, arrays: dict[str, np.ndarray] | None = None) -> "SharedState":
        """Fresh state in ``arrays`` (e.g. shared memory) or in new private arrays."""
        if arrays is None:
            arrays = {name: np.zeros(shape, dtype) for name, (shape, dtype) in cls.specs(num_stems).items()}
        for array in arrays.values():
            array.fill(0)
        arrays["user_gain"].fill(1.0)
        return cls(**arrays)


def gain_state(num_stems: int) -> np.ndarray:
    """The callback's ramp state ``(4, S + 1)``: current, target, step, remaining; stems at unity."""
    state = np.zeros((4, num_stems + 1), np.float64)
    state[0, :num_stems] = 1.0
    state[1, :num_stems] = 1.0
    return state
