"""The program's exit waits for daemon threads to leave native code, so that it never aborts.

A daemon thread that calls torch (or soxr) releases the interpreter lock inside a C++
extension. If the program exits meanwhile, Python (before 3.14) ends that thread with
``pthread_exit`` as soon as it asks for the lock back; the unwinding then meets a C++
``noexcept`` destructor (the extension's lock guard) and the whole process aborts
("terminate called without an active exception", exit status 134 or -6), after it had done
its work: a test's subprocess, `gui --screenshot`, a script that loaded a deck.

So such calls run inside :func:`native_section`, and an ``atexit`` handler (which runs before
the interpreter finalises) waits until none is under way. A thread that would enter one after
that waits there for good: it is frozen when the process ends, never unwound.
"""

from __future__ import annotations

import atexit
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

EXIT_WAIT_S = 30.0  # a forward on a slow CPU; past it the exit goes on (and may abort, as before)

_lock = threading.Lock()
_left = threading.Condition(_lock)
_active = [0]  # native sections under way
_exiting = threading.Event()


@contextmanager
def native_section() -> Iterator[None]:
    """Run the block (a call into torch, soxr...) only if the program is not exiting; the exit
    waits for it to end."""
    with _lock:
        entering = not _exiting.is_set()
        if entering:
            _active[0] += 1
    if not entering:
        threading.Event().wait()  # the program is ending: stay out of native code until it does
    try:
        yield
    finally:
        with _lock:
            _active[0] -= 1
            _left.notify_all()


def in_native_section(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` run inside :func:`native_section`."""

    @functools.wraps(function)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        with native_section():
            return function(*args, **kwargs)

    return guarded


def wait_for_native_sections(timeout_s: float = EXIT_WAIT_S) -> bool:
    """Close the door to new sections and wait for those under way; whether none is left."""
    with _lock:
        _exiting.set()
        return _left.wait_for(lambda: _active[0] == 0, timeout_s)


atexit.register(wait_for_native_sections)
