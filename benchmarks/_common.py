"""Helpers shared by the benchmarks: a JACK dummy server, an htdemucs-sized model, a best-of timer."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stemdeck.models import HTDemucs  # noqa: E402

HTDEMUCS_KW = dict(
    sources=["drums", "bass", "other", "vocals"],
    channels=48,
    depth=4,
    dconv_mode=3,
    t_layers=5,
    bottom_channels=512,
    segment=7.8,
)


# What each library reads to hold itself to older instructions: torch's own kernels, oneDNN's
# (convolutions, and products on its route), MKL's and FBGEMM's (int8) products.
ISA_LIMITS = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    },
}


def hold_to_isa(isa: str | None) -> dict[str, str]:
    """This benchmark run again with its libraries held to ``isa``'s instructions, unless they
    are already: how a CPU with AVX-512 measures the code an AVX2 CPU runs (not its clocks,
    caches or execution units, so a figure from it is an estimate). The libraries read the
    variables when they load, so the process starts again with them set. Returns them."""
    if not isa:
        return {}
    wanted = ISA_LIMITS[isa]
    if any(os.environ.get(name) != value for name, value in wanted.items()):
        os.environ.update(wanted)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    return wanted


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak RSS (VmHWM, this one's by default), in MB. Unlike ru_maxrss it does not
    inherit the parent's peak through fork and exec."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status (Linux only)")


def htdemucs_random() -> HTDemucs:
    """The htdemucs architecture with seeded random weights (the official ones cannot be fetched here)."""
    torch.manual_seed(0)
    return HTDemucs(**HTDEMUCS_KW).eval()


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``run``, after one untimed warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


@contextlib.contextmanager
def jack_dummy_server(rate: int = 44100, period: int = 256):
    """A JACK server with the dummy driver for this process (and its children)."""
    name = f"stemdeck-bench-{os.getpid()}"
    env = {**os.environ, "JACK_NO_AUDIO_RESERVATION": "1", "JACK_NO_START_SERVER": "1"}
    server = subprocess.Popen(
        ["jackd", "-n", name, "-R", "-d", "dummy", "-r", str(rate), "-p", str(period)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    subprocess.run(["jack_wait", "-s", name, "-w", "-t", "15"], check=True, capture_output=True, env=env)
    os.environ["JACK_DEFAULT_SERVER"] = name
    os.environ["JACK_NO_AUDIO_RESERVATION"] = "1"
    import sounddevice as sd

    sd._terminate()
    sd._initialize()
    try:
        yield name
    finally:
        sd._terminate()
        server.terminate()
        server.wait(10)
