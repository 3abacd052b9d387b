"""Ring buffers of audio, as Numba kernels: one writer per ring, positions as absolute frame
counts (int64) mapped onto the ring by ``position % capacity``. The audio callback writes the
input ring and the worker reads it; the worker writes the stem rings and the callback reads them.

Layout is ``(channels, frames)`` inside, ``(frames, channels)`` at the sound-card boundary. No
kernel allocates.
"""

from __future__ import annotations

from numba import njit


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
