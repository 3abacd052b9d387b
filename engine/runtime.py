"""Process-wide settings, made once by an entry point (the command line, the separation
process), never by library code: a library that changed them would change them for its host."""

from __future__ import annotations

import os
import signal
import sys
import threading

# Python hands the GIL over after this long: well inside one audio period (5.8 ms at 256 frames
# at 44.1 kHz), so the audio callback never waits long on another thread's Python code between
# torch kernels. Python's default, 5 ms, can keep it waiting a whole block.
GIL_SWITCH_INTERVAL_S = 0.0005


def inference_threads(requested: int | None = None) -> int:
    """Torch threads for inference: ``requested``, or all cores but one (the audio path's)."""
    return requested or max(1, (os.cpu_count() or 2) - 1)


def configure_process(torch_threads: int | None = None) -> None:
    """For a process that runs the audio callback (the command line, the GUI, a test session):
    short GIL hand-overs; ``torch_threads``, if given, for torch's pool (left alone otherwise:
    offline separation takes torch's own choice)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)


# How the separation process yields the CPU to the audio path during a session
# (engine.worker.scheduling): "nice" lowers its priority (it still takes turns with the audio
# threads within the scheduler's granularity); "idle" runs it only when no ordinary thread wants
# the CPU (Linux SCHED_IDLE), where it can be undone at the first late window.
WORKER_SCHEDULING = ("nice", "idle")


def configure_separation_process(torch_threads: int, niceness: int) -> None:
    """For the separation process: its torch threads, and a lower priority, so the audio path
    (and the GUI) go first when the CPU is short. No audio callback runs there: Python's own
    switch interval stays."""
    import torch

    torch.set_num_threads(torch_threads)
    for thread_id in _thread_ids():  # Linux applies it per thread; later threads inherit it
        os.setpriority(os.PRIO_PROCESS, thread_id, os.getpriority(os.PRIO_PROCESS, thread_id) + niceness)


def _thread_ids() -> list[int]:
    """This process's threads (the calling one alone where /proc is not there)."""
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (whoever owns it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def start_deaf_to_ctrl_c(process) -> None:
    """Start a ``multiprocessing`` child that Ctrl-C does not reach: the terminal sends SIGINT to
    the whole process group, and a child that took it printed a KeyboardInterrupt traceback
    while the program stopped it anyway. A child started with SIGINT ignored keeps it ignored
    from its first line (Python leaves a disposition its parent changed); from a thread other
    than the main one this cannot be set, and the child ignores it as it starts."""
    if threading.current_thread() is not threading.main_thread():
        process.start()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)


def ignore_ctrl_c() -> None:
    """For a child process: Ctrl-C is its parent's to handle (the parent stops it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
