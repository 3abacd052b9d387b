"""Inference precision: float32, bfloat16 autocast where the hardware runs it natively, or
int8 matrix products in the Transformer on the CPU.

bfloat16 roughly halves the time of the convolutions and matrix products on CPUs with
AVX512-BF16 or AMX and on recent GPUs, at an output SNR of about 48 dB against float32
(``benchmarks/offline.py`` measures it). Elsewhere it would be emulated and slower, so
``"auto"`` picks it only where it is native.

``"int8"`` (CPU only) runs the Transformer's linear layers and attention projections as
FBGEMM int8 products with dynamically quantised activations: the cheaper arithmetic for CPUs
without native bfloat16. It is chosen explicitly, never by ``"auto"``: its SNR against float32
depends on the trained weights (``benchmarks/offline.py`` measures it).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "int8")


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"``, ``"bf16"`` or ``"int8"`` for ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"int8 runs on the CPU only, not on {device.type}; choose fp32 or bf16 there")
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
    """The model to run, its 2-D convolutions in the channels-last layout oneDNN prefers (the
    transposed ones run about twice as fast so, to the same values within float rounding).

    float32: the model itself, its 4-D weights switched to channels-last in place (no copy of a
    model that may be large). bfloat16: a copy whose convolution, linear and attention weights
    are cast once (autocast would recast them for every chunk, to the same values). int8: a copy
    whose Transformer products are int8 (:func:`~stemdeck.models.nets.transformer.quantize_int8`).
    """
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return model.to(memory_format=torch.channels_last)
    fast = copy.deepcopy(model)
    if resolved == "bf16":
        _cast_weights(fast, torch.bfloat16)
    else:
        from stemdeck.models.nets.transformer import quantize_int8

        quantize_int8(fast)
    return fast.to(memory_format=torch.channels_last)


def _cast_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    from stemdeck.models.nets.transformer import Attention

    weighted = (
        torch.nn.Conv1d,
        torch.nn.Conv2d,
        torch.nn.ConvTranspose1d,
        torch.nn.ConvTranspose2d,
        torch.nn.Linear,
        Attention,
    )
    for module in model.modules():
        if isinstance(module, weighted):
            module.to(dtype)
