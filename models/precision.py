"""Inference precision: float32, or bfloat16 autocast where the hardware runs it natively.

bfloat16 roughly halves the time of the convolutions and matrix products on CPUs with
AVX512-BF16 or AMX and on recent GPUs, at an output SNR of about 48 dB against float32
(``benchmarks/offline.py`` measures it). Elsewhere it would be emulated and slower, so
``"auto"`` picks it only where it is native.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"`` for ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for float32)."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, precision: str, device: torch.device) -> torch.nn.Module:
    """The model to run: itself for float32; for bfloat16 a copy whose convolution, linear and
    attention weights are cast once (autocast would recast them for every chunk, to the same
    values) and whose 2-D convolutions use the channels-last layout oneDNN prefers."""
    if resolve_precision(precision, device) != "bf16":
        return model
    from stemdeck.models.nets.transformer import Attention

    fast = copy.deepcopy(model)
    weighted = (
        torch.nn.Conv1d,
        torch.nn.Conv2d,
        torch.nn.ConvTranspose1d,
        torch.nn.ConvTranspose2d,
        torch.nn.Linear,
        Attention,
    )
    for module in fast.modules():
        if isinstance(module, weighted):
            module.to(torch.bfloat16)
    return fast.to(memory_format=torch.channels_last)
