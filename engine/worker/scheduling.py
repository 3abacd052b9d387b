"""How the separation process yields the CPU to the audio path, and how it takes it back.

Loading, warming up and calibrating run at ``nice`` (+``WORKER_NICENESS``): nothing plays yet,
and a busy machine must not hold the start for good (at Linux SCHED_IDLE, a program keeping
both cores of a laptop busy held `stemdeck live` at "calibrating" until it was killed).

A session's separation thread then takes the configured policy. At ``idle`` it runs only when no
ordinary thread wants a core, so the audio path never waits behind it; but any busy program would
starve it, and the music would play dry for as long as that program runs. So ``idle`` is used
only where the thread may return to ordinary scheduling (root, CAP_SYS_NICE, or an RLIMIT_NICE
that allows its nice value, as the audio group's limits usually do), and :class:`IdleGuard`
returns it there as soon as the audio path plays a late window, or has played dry for
``STARVED_AFTER_S`` (a deck waiting for its first stems counts no late window: a starved one
waited all song). Elsewhere the session runs at ``nice``.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

from stemdeck.engine.audio.state import FALLBACK, LATE_WINDOWS, PLAYHEAD, PLAYING_STEMS, POSITION, SCHEDULING

# shared.worker[SCHEDULING]: the policy the separation thread runs at (0: not a separation
# process; the "thread" worker shares the audio process and keeps its priority)
IN_PROCESS, NICE, IDLE, NICE_AFTER_LATE = range(4)
POLICY_NAMES = {IN_PROCESS: "in process", NICE: "nice", IDLE: "idle", NICE_AFTER_LATE: "nice (late at idle)"}
GUARD_POLL_S = 0.05  # a late window is noticed within this; the promotion costs one syscall a thread
# Playing dry this long is starvation. A deck's first stems after a play or seek take about 1 s on
# a quiet 2-core machine (docs/benchmarks.md, deck); at nice, a longer wait costs nothing either.
STARVED_AFTER_S = 3.0


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
    """Watches the audio path while a session separates at ``idle``: at its first late window, or
    once it has played dry for ``STARVED_AFTER_S``, it moves the separation to ``nice`` for the
    rest of the session and says so once.

    It runs at the process's ``nice``, never idle, so a busy machine cannot starve it too."""

    def __init__(self, audio: np.ndarray, worker: np.ndarray, deck: bool):
        super().__init__(daemon=True, name="stemdeck-idle-guard")
        self.audio, self.worker = audio, worker
        self.played_slot = PLAYHEAD if deck else POSITION  # what moves while sound plays
        self.late_before = int(audio[LATE_WINDOWS])
        self.stop_event = threading.Event()

    def run(self) -> None:
        played, dry_s = int(self.audio[self.played_slot]), 0.0
        while not self.stop_event.wait(GUARD_POLL_S):
            played_before, played = played, int(self.audio[self.played_slot])
            playing_dry = played != played_before and self.audio[FALLBACK] != PLAYING_STEMS
            dry_s = dry_s + GUARD_POLL_S if playing_dry else 0.0
            late = int(self.audio[LATE_WINDOWS]) > self.late_before
            if (late or dry_s >= STARVED_AFTER_S) and self.worker[SCHEDULING] == IDLE:
                self.promote("a late window" if late else f"{STARVED_AFTER_S:g} s played without stems")
                return

    def promote(self, why: str) -> None:
        promote_idle_threads()
        self.worker[SCHEDULING] = NICE_AFTER_LATE
        print(
            f"stemdeck: separation fell behind at idle priority ({why}: another program keeps the "
            "CPU busy); it runs at normal priority (nice) for the rest of this session",
            file=sys.stderr,
            flush=True,
        )

    def stop(self) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(1.0)
