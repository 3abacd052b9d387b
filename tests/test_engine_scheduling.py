"""The separation at SCHED_IDLE never starves for good: start-up runs niced, a session goes idle
only where the kernel lets it come back, and the first late window (or 3 s played dry, for a
deck) brings it back (Linux).

The user-level cases: busy programs keep both cores busy (at nice 10, as a backup or an indexer
runs; at nice 0, as a build does). `stemdeck live` must start and keep separating (at idle it
never got past "calibrating"), and `stemdeck play` must get its stems (a starved deck played the
whole song dry)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import JACK_RATE, default_jack_server, run_stemdeck, write_tone

from stemdeck.engine.audio.state import (
    FALLBACK,
    LATE_WINDOWS,
    PLAYHEAD,
    SCHEDULING,
    WAITING_FOR_STEMS,
    SharedState,
)
from stemdeck.engine.config import PRESETS
from stemdeck.engine.worker.scheduling import (
    IDLE,
    NICE,
    NICE_AFTER_LATE,
    STARVED_AFTER_S,
    IdleGuard,
    enter_policy,
    idle_is_reversible,
    promote_idle_threads,
)
from stemdeck.engine.worker.windows import WindowPlan
from stemdeck.models.nets.passthrough import PassThrough

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scheduling policies")
THREAD_NICENESS = 5  # the test thread's own, to show promotion keeps it


class IdleThread(threading.Thread):
    """A thread that lowers its own nice value, goes idle and waits: a separation thread's stand-in."""

    def __init__(self):
        super().__init__(daemon=True)
        self.ready, self.release = threading.Event(), threading.Event()

    def run(self) -> None:
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + THREAD_NICENESS)
        enter_policy(IDLE)
        self.ready.set()
        self.release.wait(30)

    def __enter__(self) -> IdleThread:
        self.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.join(10)


def _nice(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id) - os.getpriority(os.PRIO_PROCESS, os.getpid())


needs_reversible_idle = pytest.mark.skipif(
    not idle_is_reversible(), reason="this user may not leave SCHED_IDLE (no CAP_SYS_NICE, RLIMIT_NICE too low)"
)


@needs_reversible_idle
def test_promotion_returns_idle_threads_to_ordinary_scheduling_and_keeps_their_nice_value():
    with IdleThread() as idle:
        assert os.sched_getscheduler(idle.native_id) == os.SCHED_IDLE
        assert promote_idle_threads() == 1
        assert os.sched_getscheduler(idle.native_id) == os.SCHED_OTHER
        assert _nice(idle.native_id) == THREAD_NICENESS
        assert os.sched_getscheduler(os.getpid()) == os.SCHED_OTHER  # the rest never was idle


@needs_reversible_idle
def test_the_guard_waits_for_a_late_window_then_brings_the_separation_back_and_says_so(capsys):
    shared = SharedState.create(4)
    shared.audio[LATE_WINDOWS] = 3  # from earlier sessions: not this one's
    shared.worker[SCHEDULING] = IDLE
    with IdleThread() as idle:
        guard = IdleGuard(shared.audio, shared.worker, deck=False)
        guard.start()
        try:
            time.sleep(0.3)  # six polls without a new late window: nothing moves
            assert os.sched_getscheduler(idle.native_id) == os.SCHED_IDLE
            assert shared.worker[SCHEDULING] == IDLE
            shared.audio[LATE_WINDOWS] += 1  # the audio path played one late window
            guard.join(5)
            assert not guard.is_alive()  # once per session
            assert os.sched_getscheduler(idle.native_id) == os.SCHED_OTHER
            assert shared.worker[SCHEDULING] == NICE_AFTER_LATE
        finally:
            guard.stop()
    assert capsys.readouterr().err == (
        "stemdeck: separation fell behind at idle priority (a late window: another program keeps the CPU busy); "
        "it runs at normal priority (nice) for the rest of this session\n"
    )


class PlayingDeck(threading.Thread):
    """The audio callback's stand-in: moves the playhead a block every 5 ms while ``playing``."""

    def __init__(self, audio):
        super().__init__(daemon=True)
        self.audio, self.playing, self.done = audio, threading.Event(), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            if self.playing.is_set():
                self.audio[PLAYHEAD] += 256


@needs_reversible_idle
def test_a_deck_playing_dry_without_a_late_window_is_brought_back_after_a_while_a_paused_one_is_not(capsys):
    """A starved deck waits for its first stems all song long: that counts no late window."""
    shared = SharedState.create(4)
    shared.audio[FALLBACK] = WAITING_FOR_STEMS  # loaded; the first stems never come
    shared.worker[SCHEDULING] = IDLE
    deck = PlayingDeck(shared.audio)
    deck.start()
    with IdleThread() as idle:
        guard = IdleGuard(shared.audio, shared.worker, deck=True)
        guard.start()
        try:
            time.sleep(STARVED_AFTER_S + 1.0)  # paused: nothing plays dry
            assert os.sched_getscheduler(idle.native_id) == os.SCHED_IDLE
            deck.playing.set()
            started = time.monotonic()
            guard.join(STARVED_AFTER_S + 5.0)
            waited_s = time.monotonic() - started
            assert not guard.is_alive()
            assert STARVED_AFTER_S <= waited_s < STARVED_AFTER_S + 2.0
            assert os.sched_getscheduler(idle.native_id) == os.SCHED_OTHER
            assert shared.worker[SCHEDULING] == NICE_AFTER_LATE
        finally:
            guard.stop()
            deck.done.set()
    assert "fell behind at idle priority (3 s played without stems: another program" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to another user with setpriv")
def test_where_idle_cannot_be_undone_a_session_runs_niced():
    """An ordinary desktop user: no CAP_SYS_NICE and RLIMIT_NICE 0, the kernel's default."""
    script = (
        "import os; os.nice(10)\n"
        "from stemdeck.engine.worker.scheduling import idle_is_reversible, session_policy\n"
        "print(idle_is_reversible(), session_policy('idle'), session_policy('nice'))\n"
    )
    result = subprocess.run(
        ["prlimit", "--nice=0:0", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
        + [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", str(NICE), str(NICE)]


def busy_background_jobs(niceness: int):
    """CPU-bound programs at ``niceness``, one per core of a 2-core machine (or more cores)."""
    jobs = [
        subprocess.Popen(["nice", "-n", str(niceness), sys.executable, "-c", "while True: pass"])
        for _ in range(max(2, os.cpu_count() or 2))
    ]
    yield
    for job in jobs:
        job.kill()
        job.wait()


@pytest.fixture
def two_busy_background_jobs():
    """At nice 10, as a backup or an indexer runs."""
    yield from busy_background_jobs(10)


@pytest.fixture
def two_busy_programs():
    """At nice 0, as a build or a game runs."""
    yield from busy_background_jobs(0)


@pytest.fixture
def jack_2ch():
    yield from default_jack_server(f"stemdeck-busy-{os.getpid()}", playback_channels=2)


@pytest.mark.slow  # a whole `stemdeck live` process beside two busy programs
def test_live_keeps_separating_beside_busy_background_jobs(jack_2ch, two_busy_background_jobs, tmp_path):
    seconds = 10
    result = run_stemdeck(
        "live",
        "--model",
        "passthrough",
        "--preset",
        "low-latency",
        "--duration",
        str(seconds),
        "--stats",
        str(tmp_path / "stats.json"),
        timeout_s=180,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    # the stems kept coming: every window whose input had arrived a second before the end is done
    plan = WindowPlan.from_config(PRESETS["low-latency"], JACK_RATE, PassThrough().segment)
    windows_due = sum(plan.window_end(index) <= (seconds - 1) * JACK_RATE for index in range(100))
    assert windows_due >= 8
    assert stats["windows_done"] >= windows_due, stats
    if stats["separation_priority"] == "nice (late at idle)":  # it went idle, starved once, came back
        assert stats["late_windows"] == 1, stats
        assert "separation fell behind at idle priority" in result.stderr
    else:
        assert stats["separation_priority"] in ("idle", "nice"), stats
        assert stats["late_windows"] == 0, stats


@pytest.mark.slow  # a whole `stemdeck play` process beside two busy programs
def test_a_deck_keeps_separating_beside_busy_programs(jack_2ch, two_busy_programs, tmp_path):
    """A starved deck counted no late window, so it stayed idle and played the whole song dry."""
    song = tmp_path / "song.wav"
    write_tone(song, seconds=40.0)
    seconds = 15
    result = run_stemdeck(
        "play",
        str(song),
        "--model",
        "passthrough",
        "--duration",
        str(seconds),
        "--stats",
        str(tmp_path / "stats.json"),
        timeout_s=240,
        env={"XDG_CACHE_HOME": str(tmp_path / "cache")},  # no stems kept from an earlier run
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["windows_done"] >= 2, stats  # separated here, not read from a cache
    assert stats["first_stems_s"] is not None and stats["first_stems_s"] < 8.0, stats
    assert stats["seconds_ahead"] > 0, stats  # ahead of the playhead at the end
    if stats["separation_priority"] == "nice (late at idle)":
        assert "separation fell behind at idle priority" in result.stderr
    else:
        assert stats["separation_priority"] in ("idle", "nice"), stats
