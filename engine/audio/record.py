"""The recorder's tap in the audio callback: each output block is copied into a preallocated ring
that a writer thread (:mod:`engine.recorder`) drains to a file.

Single producer (the callback), single consumer (the writer). The callback never waits: when
the writer has fallen a whole ring behind, the block is not copied and its frames are counted as
dropped. A take is asked for by writing a new serial into ``armed`` (0: stop); the callback
acknowledges it at its next block by writing where the take starts in the ring, then the serial
(``TAKE_SEEN``, last, so a reader that sees it sees the start).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

# counters[...] slots, written by the callback
WRITTEN, DROPPED, TAKE_START, TAKE_SEEN = range(4)


class RecordBuffers(NamedTuple):
    ring: np.ndarray  # (C, capacity) float32, callback-written
    armed: np.ndarray  # (1,) int64: 0 = not recording, else the take's serial; control-written
    counters: np.ndarray  # (4,) int64, callback-written
    read: np.ndarray  # (1,) int64: frames the writer has taken, writer-written

    @classmethod
    def allocate(cls, channels: int, capacity_frames: int) -> RecordBuffers:
        return cls(
            np.zeros((channels, capacity_frames), np.float32),
            np.zeros(1, np.int64),
            np.zeros(4, np.int64),
            np.zeros(1, np.int64),
        )


@njit(nogil=True, cache=True)
def record_block(outdata, record):
    """Copy the master channels of ``outdata`` ``(frames, channels)`` into the ring, or count
    them as dropped when the writer has not made room."""
    counters, armed = record.counters, record.armed[0]
    if armed != counters[TAKE_SEEN]:
        counters[TAKE_START] = counters[WRITTEN]
        counters[DROPPED] = 0
        counters[TAKE_SEEN] = armed  # last: the writer starts reading once it sees its serial
    if armed == 0:
        return
    ring = record.ring
    frames, capacity = outdata.shape[0], ring.shape[1]
    written = counters[WRITTEN]
    taken = max(record.read[0], counters[TAKE_START])
    if written + frames - taken > capacity:
        counters[DROPPED] += frames
        return
    channels = min(ring.shape[0], outdata.shape[1])
    for i in range(frames):
        at = (written + i) % capacity
        for c in range(channels):
            ring[c, at] = outdata[i, c]
    counters[WRITTEN] = written + frames
