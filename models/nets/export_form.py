"""The network as it is exported to ONNX (for OpenVINO and ONNX Runtime): the same numbers, in
operators that an inference runtime runs well.

OpenVINO's bfloat16 on a 2-core Zen 4 EPYC spent 1.3-1.5 s on an htdemucs segment, of which
(its performance counters, issue 13, stop 34):

* 84 ms in the waveform decoder's 1-D transposed convs, which it runs in a slow kernel (its 2-D
  ones, the same work, in brgemm ones); with :class:`PhaseConvTranspose1d` all its transposed
  convs took 36-38 ms, not 128-145;
* about 40 ms in the GLUs' splits, which it copies in a reference kernel; :class:`GatedConv`
  leaves only those after a norm (the DConvs'), 15-25 ms.

With both a segment took 6-9 % less, at 9 MB less of OpenVINO's buffers (docs/benchmarks.md).
Tried, not kept: the spectral DConv run on ``(B, C, bins, frames)`` as it is, without its two
transposes: up to 6 % more, but its per-bin norms took 47 MB more of OpenVINO's buffers, which a
10-minute song's 1 GB could not take on a Zen 4. Each module computes what it replaces (float32,
to rounding); the model that runs in torch is never changed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def export_form(model: nn.Module) -> nn.Module:
    """``model`` (a copy the caller owns) with the modules above swapped in where they apply."""
    for layer in [*getattr(model, "encoder", []), *getattr(model, "tencoder", [])]:
        if GatedConv.applies(getattr(layer, "rewrite", None), getattr(layer, "norm2", None)):
            layer.rewrite = GatedConv(layer.rewrite)
    for layer in [*getattr(model, "decoder", []), *getattr(model, "tdecoder", [])]:
        if GatedConv.applies(getattr(layer, "rewrite", None), getattr(layer, "norm1", None)):
            layer.rewrite = GatedConv(layer.rewrite)
        if PhaseConvTranspose1d.applies(getattr(layer, "conv_tr", None)):
            layer.conv_tr = PhaseConvTranspose1d(layer.conv_tr)
    return model


class PhaseConvTranspose1d(nn.Module):
    """A transposed conv of stride ``s`` and kernel ``q * s`` as a conv over ``q`` taps that makes
    the ``s`` phases of each output step as channels, interleaved after:
    ``y[s*m + r] = sum_j x[m - j] w[s*j + r]``."""

    def __init__(self, conv_tr: nn.ConvTranspose1d):
        super().__init__()
        in_channels, out_channels, kernel = conv_tr.weight.shape
        self.stride, self.out_channels = conv_tr.stride[0], out_channels
        taps = kernel // self.stride
        weight = conv_tr.weight.detach().view(in_channels, out_channels, taps, self.stride)
        weight = weight.permute(1, 3, 0, 2).flip(-1)  # (out, phase, in, taps), the taps in conv order
        self.weight = nn.Parameter(weight.reshape(out_channels * self.stride, in_channels, taps).contiguous())
        bias = conv_tr.bias.detach() if conv_tr.bias is not None else torch.zeros(out_channels)
        self.bias = nn.Parameter(bias.repeat_interleave(self.stride))
        self.taps = taps

    @staticmethod
    def applies(module: nn.Module | None) -> bool:
        return (
            isinstance(module, nn.ConvTranspose1d)
            and module.kernel_size[0] % module.stride[0] == 0
            and module.padding == (0,)
            and module.output_padding == (0,)
            and module.dilation == (1,)
            and module.groups == 1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phases = F.conv1d(x, self.weight, self.bias, padding=self.taps - 1)  # (B, out * s, L + q - 1)
        batch, _, steps = phases.shape
        phases = phases.view(batch, self.out_channels, self.stride, steps)
        return phases.transpose(2, 3).reshape(batch, self.out_channels, steps * self.stride)


class GatedConv(nn.Module):
    """``glu(conv(x), dim=1)`` as the conv's two halves, ``a(x) * sigmoid(b(x))``: no split."""

    gated = True  # what models.nets.unet._rewrite_glu looks for

    def __init__(self, conv: nn.Conv1d | nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.half = conv.out_channels // 2
        self.convolve = F.conv2d if isinstance(conv, nn.Conv2d) else F.conv1d

    @staticmethod
    def applies(module: nn.Module | None, norm: nn.Module | None) -> bool:
        """A plain conv whose GLU comes straight after it (a norm between needs both halves)."""
        return (
            isinstance(module, (nn.Conv1d, nn.Conv2d))
            and isinstance(norm, nn.Identity)
            and module.bias is not None
            and module.groups == 1
            and module.padding_mode == "zeros"
            and module.out_channels % 2 == 0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, half = self.conv, self.half
        options = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
        value = self.convolve(x, conv.weight[:half], conv.bias[:half], **options)
        gate = self.convolve(x, conv.weight[half:], conv.bias[half:], **options)
        return value * torch.sigmoid(gate)
