"""The separation process yields the CPU to the audio path: every one of its threads niced, and
under ``worker_scheduling="idle"`` the session's separation scheduled only when nothing else wants
the CPU, while the command loop answers the control side at once (Linux)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from stemdeck.engine.config import EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.worker.process import WORKER_NICENESS
from stemdeck.engine.worker.scheduling import idle_is_reversible
from stemdeck.models.nets.passthrough import PassThrough

SR = 44100
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread policies are read in /proc")


def _threads_of(pid: int) -> list[int]:
    return [int(name) for name in os.listdir(f"/proc/{pid}/task")]


def _worker_threads(scheduling: str) -> tuple[dict[int, int], list[int], str]:
    """{thread: policy} and the niceness of every thread of a running deck's separation process,
    and the status's separation priority."""
    engine = Engine(PassThrough(), EngineConfig(precision="fp32", worker="process", worker_scheduling=scheduling))
    try:
        engine.load_array(np.zeros((2, 4 * SR), np.float32))
        assert engine.wait_separated(SR, 60)
        pid = engine.backend.process.pid
        threads = _threads_of(pid)
        policies = {thread: os.sched_getscheduler(thread) for thread in threads}
        niceness = [os.getpriority(os.PRIO_PROCESS, thread) - os.getpriority(os.PRIO_PROCESS, 0) for thread in threads]
        return policies, niceness, engine.status().separation_priority
    finally:
        engine.stop()


def test_the_separation_process_is_scheduled_idle_by_default():
    assert EngineConfig().worker_scheduling == "idle"  # chosen with benchmarks/live.py --scheduling nice,idle


@linux_only
def test_every_thread_of_the_separation_process_is_niced():
    policies, niceness, priority = _worker_threads("nice")
    assert len(niceness) > 1  # the torch pool and the queue threads besides the main thread
    assert set(niceness) == {WORKER_NICENESS}
    assert set(policies.values()) == {os.SCHED_OTHER}
    assert priority == "nice"


@linux_only
@pytest.mark.skipif(not idle_is_reversible(), reason="idle runs only where it can be undone (test_engine_scheduling)")
def test_idle_scheduling_puts_the_separation_thread_under_sched_idle_and_keeps_the_command_loop_niced():
    policies, niceness, priority = _worker_threads("idle")
    main_thread = min(policies)  # the process's first thread, its id the pid: the command loop
    assert policies.pop(main_thread) == os.SCHED_OTHER
    assert os.SCHED_IDLE in policies.values()  # the deck's separation thread
    assert set(niceness) == {WORKER_NICENESS}
    assert priority == "idle"


def test_an_unknown_scheduling_is_one_line_naming_the_choices():
    with pytest.raises(ValueError, match=r"^unknown worker scheduling 'fast': use one of nice, idle$"):
        EngineConfig(worker_scheduling="fast")


def _play_then_ctrl_c(song, stats, after_s: float, wait_for: str) -> tuple[int, str]:
    """``stemdeck play`` in a terminal's stead: its own process group, Ctrl-C to the whole group
    ``after_s`` after stderr says ``wait_for``; (exit code, stderr)."""
    import signal
    import subprocess
    import threading
    import time

    from conftest import stemdeck_command

    run = subprocess.Popen(
        stemdeck_command("play", song, "--model", "passthrough", "--duration", "120", "--stats", stats),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's `&` ignores it
    )
    lines: list[str] = []
    said = threading.Event()

    def read() -> None:
        for line in run.stderr:
            lines.append(line)
            if wait_for in line:
                said.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert said.wait(180), "".join(lines)
    time.sleep(after_s)
    os.killpg(run.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C: every process of the group
    run.wait(120)
    reader.join(10)
    return run.returncode, "".join(lines)


@pytest.mark.slow  # whole `stemdeck play` processes
@linux_only
def test_ctrl_c_stops_play_without_a_traceback_while_starting_and_while_playing(jack_server, tmp_path):
    """The separation process took the terminal's SIGINT too, and printed a KeyboardInterrupt
    traceback while the program was stopping it anyway."""
    from conftest import write_tone

    song = tmp_path / "song.wav"
    write_tone(song, seconds=60.0)
    code, err = _play_then_ctrl_c(song, tmp_path / "playing.json", 8.0, "deck: ")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert code == 0 and (tmp_path / "playing.json").exists(), err  # a stop, with its counters
    code, err = _play_then_ctrl_c(song, tmp_path / "starting.json", 0.0, "deck: ")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert code in (0, 130), err
