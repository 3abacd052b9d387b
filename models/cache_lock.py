"""One stemdeck process at a time on this machine, for work whose result the user cache folder keeps.

Two processes doing such work at once would each do it (two precision measurements, each
timing the other's load) or leave a broken result (two Numba compiles of one kernel). A lock
file in the cache folder orders them: the second waits, then finds the first one's result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs


@contextmanager
def cache_lock(name: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the lock file ``name`` in the user cache folder; ``on_wait`` is called once if another
    process holds it. Where the lock cannot be had (no ``fcntl``, no cache folder), it goes on
    without: the work is then only done twice, never refused."""
    try:
        import fcntl

        folder = Path(platformdirs.user_cache_dir("stemdeck"))
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / name, "a")  # noqa: SIM115 - held across the yield
    except (ImportError, OSError):
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
