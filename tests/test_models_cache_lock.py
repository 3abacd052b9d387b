"""The user-cache lock (models/cache_lock.py): a second process waits for the first, and says so."""

import subprocess
import sys
import time

from stemdeck.models.cache_lock import cache_lock

HOLDER = """
import sys, time
from stemdeck.models.cache_lock import cache_lock
with cache_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_second_process_waits_for_the_holder_and_is_told(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, "test.lock", "1.0"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        waits: list[float] = []
        start = time.monotonic()
        with cache_lock("test.lock", lambda: waits.append(time.monotonic())):
            waited_s = time.monotonic() - start
        assert len(waits) == 1  # told once, before it waited
        assert holder.wait(10) == 0  # it had the lock until it ended: we came after it
        assert waited_s > 0.5, waited_s  # held for 1.0 s from before "held" was printed
    finally:
        holder.kill()
    assert (tmp_path / "stemdeck" / "test.lock").exists()


def test_a_free_lock_is_taken_without_a_word(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    waits: list[str] = []
    with cache_lock("test.lock", lambda: waits.append("waited")):
        assert (tmp_path / "stemdeck" / "test.lock").exists()
    assert waits == []


def test_no_cache_folder_goes_on_without_the_lock(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    ran = []
    with cache_lock("test.lock"):
        ran.append(True)
    assert ran == [True]
