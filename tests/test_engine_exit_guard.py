"""A program that used the engine exits with status 0 (engine/exit_guard.py).

A daemon thread inside torch when the interpreter finalised, or dropping the engine's last
reference (its model's tensors) there, aborted the whole process ("terminate called without an
active exception", status 134 / -6) after its work was done: about one run in ten of a script
that loaded a deck (tests/test_engine_cues.py's first session) and `gui --screenshot`.
"""

import gc
import subprocess
import sys
import threading
import weakref

import numpy as np
from test_engine_loop import tone_track

from stemdeck.engine.config import EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.stretch import control
from stemdeck.models.nets.passthrough import PassThrough

# A daemon thread doing torch products back to back while the main thread ends.
BUSY_THREAD_AT_EXIT = """
import sys, threading, time, torch
from stemdeck.engine.exit_guard import native_section

guarded = sys.argv[1] == "guarded"
a = torch.randn(600, 600)

def work():
    while True:
        if guarded:
            with native_section():
                a @ a
        else:
            a @ a

threading.Thread(target=work, daemon=True).start()
time.sleep(0.3)
print("main done", flush=True)
"""


def run_scripts(*modes: str) -> list[tuple[int, str, str]]:
    """Each mode's script in its own process, all at once; (status, stdout, stderr) each."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", BUSY_THREAD_AT_EXIT, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for mode in modes
    ]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=60)
        results.append((run.returncode, out, err))
    return results


def test_torch_on_a_daemon_thread_at_exit_aborts_unless_guarded():
    *unguarded, first, second = run_scripts("unguarded", "unguarded", "guarded", "guarded")
    # what the guard is for: without it the process aborts (10 runs of 10 by hand)
    assert any(status in (-6, 134) for status, _, _ in unguarded), unguarded
    for status, out, err in (first, second):
        assert status == 0, err
        assert out == "main done\n"
        assert "terminate called" not in err


def test_the_beat_search_does_not_keep_the_engine_alive(monkeypatch):
    """The beat thread held the engine's callback, so an engine dropped while its track's beats
    were being searched lived on that daemon thread, and was freed there."""
    searching, release = threading.Event(), threading.Event()

    def slow_search(signal):
        searching.set()
        release.wait(30)
        return None

    monkeypatch.setattr(control, "search_beats", slow_search)
    engine = Engine(PassThrough(), EngineConfig(worker="thread", cache_stems=False))
    track = tone_track()
    engine.load_array(track, 0.0, separated=np.stack([0.25 * track] * 4).astype(np.float32))
    assert searching.wait(30)
    beat_thread = engine.practice._beat_thread
    engine.stop()
    alive = weakref.ref(engine)
    del engine
    gc.collect()
    try:
        assert beat_thread.is_alive()  # still searching...
        assert alive() is None  # ...and the engine is gone all the same, freed here
    finally:
        release.set()
        beat_thread.join(10)
    assert not beat_thread.is_alive()
