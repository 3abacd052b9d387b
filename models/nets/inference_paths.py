"""When an inference-only path may stand in for a module's own forward.

The blocked paths (:mod:`~stemdeck.models.nets.dconv_blocked`,
:mod:`~stemdeck.models.nets.rewrite_blocked`) compute the same numbers as the module they
replace only in float32, and they are written for eager inference: they do not record what
autograd needs, autocast would not reach their products, and a trace or export would bake in
their loops. One guard for all of them, so each checks only its own shapes.
"""

from __future__ import annotations

import torch
from torch import nn


def float32_eager_inference(x: torch.Tensor, module: nn.Module) -> bool:
    """``x`` and every parameter of ``module`` float32, no gradient wanted, no autocast, and
    not being traced, scripted or exported to ONNX."""
    if x.dtype != torch.float32 or torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return False
    return all(parameter.dtype == torch.float32 for parameter in module.parameters())
