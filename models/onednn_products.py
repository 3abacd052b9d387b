"""Float32 matrix products through oneDNN, where it computes them as exactly as float32 does.

torch's CPU wheels multiply float32 matrices with MKL, whose kernels on AMD CPUs leave AVX-512
unused: on a Zen 5 EPYC (2 cores) the fused attention of HT Demucs ran at 180 GFLOP/s through
MKL and at 305-314 through oneDNN, the library torch's convolutions already use; a whole
float32 forward took 1.71 s against 1.15-1.17 s (``docs/benchmarks.md``, stop 25). torch routes
float32 products (``mm``, ``bmm``, ``addmm`` and the attention kernel's blocks) to oneDNN only
under its bfloat16-math setting (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``), and
only on CPUs with AVX-512 (elsewhere MKL keeps them whatever the setting). That setting lets
oneDNN round the inputs to bfloat16 where its kernels do so (AMX: 58 dB from float32, stop 16);
on Zen 5 it does not (132 dB, float32's own rounding). So the route is taken only where
:func:`exact_here` finds the products exact, and only while one of our forwards runs
(:func:`onednn_products`): the reference model, training and anything else in the process keep
torch's default.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F

ROUTE = "bf16"  # the setting's value that sends float32 products to oneDNN
# Relative error of float32 products against float64 at the probe's sizes: about 1e-7; inputs
# rounded to bfloat16 (8 bits of mantissa) give about 3e-3.
EXACT_RELATIVE_ERROR = 1e-5
PROBE_SIZE = 512  # as large as the model's products, where oneDNN may pick other kernels than for small ones

_lock = threading.Lock()  # guards the probe and the count of forwards inside; never held during a forward
_users = 0
_saved = "none"
_exact: bool | None = None  # the probe's answer, once made


def _setting():
    return torch.backends.mkldnn.matmul


def exact_here() -> bool:
    """Whether the oneDNN route gives float32's own results on this CPU: a matrix product and an
    attention of the model's sizes, against float64 (17 ms, once a process). False where torch
    has no oneDNN or keeps MKL anyway (no AVX-512: the route changes nothing there)."""
    global _exact
    with _lock:  # one probe, never beside a forward entering or leaving (both set the setting)
        if _exact is None:
            _exact = _probe()
        return _exact


def forget_probe() -> None:
    """The next :func:`exact_here` probes again (for tests)."""
    global _exact
    with _lock:
        _exact = None


def _probe() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(PROBE_SIZE, PROBE_SIZE, generator=generator) for _ in range(2))
    q, k, v = (torch.randn(1, 2, PROBE_SIZE, 64, generator=generator) for _ in range(3))
    exact = (a.double() @ b.double(), F.scaled_dot_product_attention(q.double(), k.double(), v.double()))
    saved = _setting().fp32_precision
    try:
        _setting().fp32_precision = ROUTE
        with torch.inference_mode():
            routed = (a @ b, F.scaled_dot_product_attention(q, k, v))
    finally:
        _setting().fp32_precision = saved
    return all(_relative_error(want, got) < EXACT_RELATIVE_ERROR for want, got in zip(exact, routed, strict=True))


def _relative_error(exact: torch.Tensor, estimate: torch.Tensor) -> float:
    return float((estimate.double() - exact).norm() / exact.norm())


@contextlib.contextmanager
def onednn_products() -> Iterator[None]:
    """Float32 products through oneDNN while inside, where :func:`exact_here`. Forwards on
    several threads (two decks) may overlap: the setting stays until the last one leaves, and is
    then put back as it was."""
    global _users, _saved
    if not exact_here():
        yield
        return
    with _lock:
        _users += 1
        if _users == 1:
            _saved = _setting().fp32_precision
            _setting().fp32_precision = ROUTE
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                _setting().fp32_precision = _saved
