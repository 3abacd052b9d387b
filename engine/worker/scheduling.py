"""How the separation process yields the CPU to the audio path, and how it takes it back.

Loading, warming up and calibrating run at ``nice`` (+``WORKER_NICENESS``): nothing plays yet,
and a busy machine must not hold the start for good (at Linux SCHED_IDLE, a program keeping
both cores of a laptop busy held `stemdeck live` at "calibrating" until it was killed).

A session's separation thread then takes the configured policy. At ``idle`` it runs only when no
ordinary thread wants a core, so the audio path never waits behind it; but any busy program would
starve it, and the music would play dry for as long as that program runs. So ``idle`` is used
only where the thread may return to ordinary scheduling (root, CAP_SYS_NICE, or an RLIMIT_NICE
that allows its nice value, as the audio group's limits usually do), and :class:`IdleGuard`
returns it there as soon as the audio path plays a late window. Elsewhere the session runs at
``nice``.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

from stemdeck.engine.audio.state import LATE_WINDOWS, SCHEDULING

# shared.worker[SCHEDULING]: the policy the separation thread runs at (0: not a separation
# process; the "thread" worker shares the audio process and keeps its priority)
IN_PROCESS, NICE, IDLE, NICE_AFTER_LATE = range(4)
POLICY_NAMES = {IN_PROCESS: "in process", NICE: "nice", IDLE: "idle", NICE_AFTER_LATE: "nice (late at idle)"}
GUARD_POLL_S = 0.05  # a late window is noticed within this; the promotion costs one syscall a thread


def idle_is_reversible() -> bool:
    """Whether a thread of this process, at its nice value, may go to SCHED_IDLE and come back.

    Tried on a short-lived thread, so the answer is the kernel's own (capabilities, RLIMIT_NICE)."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    answer: list[bool] = []

    def probe() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, name="stemdeck-idle-probe")
    thread.start()
    thread.join()
    return answer[0]


def session_policy(requested: str) -> int:
    """The policy a session runs at: ``idle`` only where the guard can undo it."""
    return IDLE if requested == "idle" and idle_is_reversible() else NICE


def enter_policy(policy: int) -> None:
    """Called by the session's separation thread itself, before its first window: only that
    thread (and the threads it starts, e.g. torch's) changes, the process's command loop and
    queues keep answering the control side."""
    if policy == IDLE:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def promote_idle_threads() -> int:
    """Every SCHED_IDLE thread of this process back to ordinary scheduling (its nice value
    stays); returns how many moved."""
    moved = 0
    for name in os.listdir("/proc/self/task"):
        thread_id = int(name)
        try:
            if os.sched_getscheduler(thread_id) == os.SCHED_IDLE:
                os.sched_setscheduler(thread_id, os.SCHED_OTHER, os.sched_param(0))
                moved += 1
        except (ProcessLookupError, PermissionError):  # a thread that just ended; or not allowed
            continue
    return moved


class IdleGuard(threading.Thread):
    """Watches the audio path's late windows while a session separates at ``idle``; at the first
    one, it moves the separation to ``nice`` for the rest of the session and says so once.

    It runs at the process's ``nice``, never idle, so a busy machine cannot starve it too."""

    def __init__(self, audio: np.ndarray, worker: np.ndarray):
        super().__init__(daemon=True, name="stemdeck-idle-guard")
        self.audio, self.worker = audio, worker
        self.late_before = int(audio[LATE_WINDOWS])
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(GUARD_POLL_S):
            if int(self.audio[LATE_WINDOWS]) > self.late_before and self.worker[SCHEDULING] == IDLE:
                promote_idle_threads()
                self.worker[SCHEDULING] = NICE_AFTER_LATE
                print(
                    "stemdeck: separation fell behind at idle priority (another program keeps the CPU "
                    "busy); it runs at normal priority (nice) for the rest of this session",
                    file=sys.stderr,
                    flush=True,
                )
                return

    def stop(self) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(1.0)
