"""The separation process yields the CPU to the audio path: every one of its threads niced, and
under ``worker_scheduling="idle"`` scheduled only when nothing else wants the CPU (Linux)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from stemdeck.engine.config import EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.worker.process import WORKER_NICENESS
from stemdeck.models.nets.passthrough import PassThrough

SR = 44100
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread policies are read in /proc")


def _threads_of(pid: int) -> list[int]:
    return [int(name) for name in os.listdir(f"/proc/{pid}/task")]


def _worker_threads(scheduling: str) -> tuple[list[int], list[int]]:
    """(policy, niceness) of every thread of a running deck's separation process."""
    engine = Engine(PassThrough(), EngineConfig(precision="fp32", worker="process", worker_scheduling=scheduling))
    try:
        engine.load_array(np.zeros((2, 4 * SR), np.float32))
        assert engine.wait_separated(SR, 60)
        pid = engine.backend.process.pid
        threads = _threads_of(pid)
        policies = [os.sched_getscheduler(thread) for thread in threads]
        niceness = [os.getpriority(os.PRIO_PROCESS, thread) - os.getpriority(os.PRIO_PROCESS, 0) for thread in threads]
        return policies, niceness
    finally:
        engine.stop()


def test_the_separation_process_is_scheduled_idle_by_default():
    assert EngineConfig().worker_scheduling == "idle"  # chosen with benchmarks/live.py --scheduling nice,idle


@linux_only
def test_every_thread_of_the_separation_process_is_niced():
    policies, niceness = _worker_threads("nice")
    assert len(niceness) > 1  # the torch pool and the queue threads besides the main thread
    assert set(niceness) == {WORKER_NICENESS}
    assert set(policies) == {os.SCHED_OTHER}


@linux_only
def test_idle_scheduling_puts_every_thread_of_the_separation_process_under_sched_idle():
    policies, niceness = _worker_threads("idle")
    assert set(policies) == {os.SCHED_IDLE}
    assert set(niceness) == {WORKER_NICENESS}


def test_an_unknown_scheduling_is_one_line_naming_the_choices():
    with pytest.raises(ValueError, match=r"^unknown worker scheduling 'fast': use one of nice, idle$"):
        EngineConfig(worker_scheduling="fast")
