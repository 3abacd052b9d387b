"""One line on stderr when the audio kernels take long to get ready.

On a fresh install Numba compiles the deck's and the live input's block kernels once (about 45 s
on 2 cores; their machine code is cached on disk afterwards), and a start that says nothing for
that long reads as a hang. From the cache they load in under a second, so a
timer, not a guess at Numba's cache, decides: the line appears only when the wait is real.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

NOTICE_AFTER_S = 5.0  # loading the kernels from Numba's cache: 0.8 s on a busy 2-core machine
_watching = threading.local()  # whether this thread is inside a notice's block
KERNELS_MESSAGE = "compiling the audio kernels once (a minute or two; later starts load them at once) ..."


@contextmanager
def notice_if_slow(message: str = KERNELS_MESSAGE, after_s: float | None = None) -> Iterator[None]:
    """Say ``message`` once if the block is still running after ``after_s`` (default
    :data:`NOTICE_AFTER_S`); never after it ends. Inside another notice's block it adds nothing:
    one wait, one line."""
    if getattr(_watching, "active", False):
        yield
        return
    _watching.active = True
    lock = threading.Lock()  # orders the timer's line against the block's end
    ended = False

    def say() -> None:
        with lock:
            if not ended:
                print(message, file=sys.stderr, flush=True)

    timer = threading.Timer(NOTICE_AFTER_S if after_s is None else after_s, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            ended = True
        _watching.active = False
