"""Overlap-add, as Numba kernels run by the worker: each separated window is weighted into ring
accumulators, and frames no later window can touch are finalised into the stem rings.

Every buffer is preallocated by its owner; no kernel allocates. Positions are absolute frame
counts (int64) mapped onto rings by ``position % capacity``.
"""

from __future__ import annotations

from numba import njit


@njit(nogil=True, cache=True)
def accumulate_window(acc, weight_acc, stems, weights, start):
    """Add ``weights * stems`` of one window ``(S, C, W)`` into ring accumulators from ``start``.

    Frames where the weight is zero (outside the used span) are skipped.
    """
    capacity = acc.shape[-1]
    for i in range(stems.shape[-1]):
        w = weights[i]
        if w == 0.0:
            continue
        index = (start + i) % capacity
        weight_acc[index] += w
        for s in range(stems.shape[0]):
            for c in range(stems.shape[1]):
                acc[s, c, index] += w * stems[s, c, i]


@njit(nogil=True, cache=True)
def finalize(acc, weight_acc, out_ring, start, stop):
    """Move ``[start, stop)`` from the accumulators into the stem ring, divided by the summed
    weights, and clear the accumulators there for reuse."""
    acc_capacity = acc.shape[-1]
    out_capacity = out_ring.shape[-1]
    for position in range(start, stop):
        a = position % acc_capacity
        o = position % out_capacity
        total = weight_acc[a]
        scale = 1.0 / total if total > 0.0 else 0.0
        for s in range(acc.shape[0]):
            for c in range(acc.shape[1]):
                out_ring[s, c, o] = acc[s, c, a] * scale
                acc[s, c, a] = 0.0
        weight_acc[a] = 0.0


@njit(nogil=True, cache=True)
def discard(acc, weight_acc, start, stop):
    """Clear ``[start, stop)`` of the accumulators without finalising it (frames another pass
    already holds, or that a restarted pass cannot complete)."""
    capacity = acc.shape[-1]
    for position in range(start, stop):
        a = position % capacity
        for s in range(acc.shape[0]):
            for c in range(acc.shape[1]):
                acc[s, c, a] = 0.0
        weight_acc[a] = 0.0
