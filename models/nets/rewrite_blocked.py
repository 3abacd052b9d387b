"""The spectral branch's "rewrite" conv and its GLU at inference, a band of bins at a time.

At the outer layers the rewrite's output, twice the channels of its input over every bin and
frame, is the largest tensor of the model (66 MB for htdemucs's 512 bins) and lives only until
the GLU halves it. Run over bands of bins (with the kernel's halo of neighbouring bins, zeros
beyond the edges) each band's conv output is a few MB and the GLU writes straight into the
layer's output, so neither the 66 MB tensor nor the page faults of mapping it exist: less peak
memory, the same numbers within float32 rounding. Used only where it applies (:func:`usable`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stemdeck.models.nets.inference_paths import float32_eager_inference, same_padded_conv_before_glu

BAND_BYTES = 8 << 20  # one band's conv output: few enough calls, far below the whole tensor
MIN_OUTPUT_BYTES = 16 << 20  # htdemucs's 66 and 33 MB outputs; smaller ones are left to the plain conv


def usable(conv: nn.Module, norm: nn.Module, y: torch.Tensor) -> bool:
    """A plain 'same' conv with no norm before the GLU (:func:`same_padded_conv_before_glu`), in
    float32 eager inference (:func:`float32_eager_inference`), and an output worth splitting."""
    if not same_padded_conv_before_glu(conv, norm, y) or not float32_eager_inference(y, conv):
        return False
    return y.numel() // conv.in_channels * conv.out_channels * y.element_size() >= MIN_OUTPUT_BYTES


def rewrite_glu(conv: nn.Conv2d, y: torch.Tensor) -> torch.Tensor:
    """``glu(conv(y), dim=1)`` computed band by band over ``y``'s bins (dim 2)."""
    batch, _, bins, frames = y.shape
    halo = conv.padding[0]
    out = torch.empty(
        batch, conv.out_channels // 2, bins, frames, dtype=y.dtype, device=y.device, memory_format=_layout(y)
    )
    per_band = max(1, BAND_BYTES // (conv.out_channels * frames * y.element_size() * batch))
    for start in range(0, bins, per_band):
        stop = min(bins, start + per_band)
        low, high = max(0, start - halo), min(bins, stop + halo)
        band = y[:, :, low:high]
        missing_below, missing_above = halo - (start - low), halo - (high - stop)
        if missing_below or missing_above:
            band = F.pad(band, (0, 0, missing_below, missing_above))
        convolved = F.conv2d(band, conv.weight, conv.bias, padding=(0, conv.padding[1]))
        out[:, :, start:stop] = F.glu(convolved, dim=1)
    return out


def _layout(y: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
