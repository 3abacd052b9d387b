"""Giving freed memory back to the system now, where the allocator would keep it.

glibc's malloc keeps blocks under its mmap threshold in its heaps when they are freed (a model
copy's weights are a few MB each), and a later separation peaks on top of them: `stemdeck
separate`'s first run, which measures ``auto``'s precisions, held 243 MB so.
"""

from __future__ import annotations


def give_back_freed_memory() -> bool:
    """Return the heap's free pages to the system now (glibc's ``malloc_trim``): blocks under
    the mmap threshold (a model copy's many small weights) stay in the heap when freed, and a
    later separation would peak on top of them. Whether it applied (glibc only)."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False
