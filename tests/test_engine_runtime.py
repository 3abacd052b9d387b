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
