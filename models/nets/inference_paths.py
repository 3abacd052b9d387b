"""When an inference-only path may stand in for a module's own forward.

The blocked paths (:mod:`~stemdeck.models.nets.dconv_blocked`,
:mod:`~stemdeck.models.nets.rewrite_blocked`) and Winograd's
(:mod:`~stemdeck.models.nets.winograd`) compute the same numbers as the module they replace
only in float32, and they are written for eager inference: they do not record what autograd
needs, autocast would not reach their products, and a trace or export would bake in their
loops. One guard for all of them, so each checks only its own shapes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Whether a path may hold more memory for speed (transformed weights, larger scratch buffers):
# not where this process returns freed memory at once to keep its peak low (`stemdeck separate
# --memory low`), where each large scratch buffer is mapped and faulted in again on every call.
_MEMORY_FOR_SPEED = [True]


def memory_for_speed() -> bool:
    return _MEMORY_FOR_SPEED[0]


def allow_memory_for_speed(allowed: bool) -> None:
    """Set by the process's memory mode (:func:`models.streaming.apply_memory_mode`)."""
    _MEMORY_FOR_SPEED[0] = allowed


def eager_inference() -> bool:
    """No gradient wanted, and not being traced, scripted, compiled or exported to ONNX: a fresh
    intermediate may then be overwritten in place (autograd may need it; a trace, a compile or
    an export would record the in-place op, and bake in the paths' loops)."""
    if torch.is_grad_enabled():
        return False
    return not (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


def float32_eager_inference(x: torch.Tensor, module: nn.Module) -> bool:
    """:func:`eager_inference`, with ``x`` and every parameter of ``module`` float32 and no autocast."""
    if x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type) or not eager_inference():
        return False
    return all(parameter.dtype == torch.float32 for parameter in module.parameters())


def same_padded_conv_before_glu(conv: nn.Module, norm: nn.Module, y: torch.Tensor) -> bool:
    """A plain conv the band-by-band and Winograd paths can stand in for: 2-D over ``(B, C, bins,
    frames)`` or 1-D over ``(B, C, frames)``, odd kernel, zero 'same' padding, stride and
    dilation 1, one group, a bias and an even output to halve, and no norm between it and the
    GLU (a norm needs the whole output). Any other padding mode would read the neighbouring
    bins or frames of a band, not zeros, at its edges."""
    if not isinstance(norm, nn.Identity):
        return False
    if not (isinstance(conv, nn.Conv2d) and y.dim() == 4) and not (isinstance(conv, nn.Conv1d) and y.dim() == 3):
        return False
    dims = len(conv.kernel_size)
    return (
        all(side % 2 == 1 for side in conv.kernel_size)
        and conv.padding == tuple(side // 2 for side in conv.kernel_size)
        and conv.padding_mode == "zeros"
        and conv.stride == (1,) * dims
        and conv.dilation == (1,) * dims
        and conv.groups == 1
        and conv.bias is not None
        and conv.out_channels % 2 == 0
        and y.shape[1] == conv.in_channels
    )


def gelu_fresh(x: torch.Tensor) -> torch.Tensor:
    """GELU of ``x``, which nothing else holds: in place at inference (each of the widest tensors
    a forward makes is 20-40 MB, freshly mapped and faulted in), else as autograd needs it."""
    return torch.ops.aten.gelu_(x) if eager_inference() else F.gelu(x)
