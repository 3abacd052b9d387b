"""The "rewrite" conv and its GLU at inference, a band of bins (or a span of frames) at a time.

At the outer layers the rewrite's output, twice the channels of its input over every bin and
frame, is the largest tensor of the model (66 MB for htdemucs's 512 bins, 33 MB for the
waveform branch's 86 000 frames) and lives only until the GLU halves it. Run over bands of bins
(with the kernel's halo of neighbouring bins, zeros beyond the edges) or spans of frames, each
piece's conv output is a few MB and the GLU writes straight into the layer's output, so neither
the whole tensor nor the page faults of mapping it exist: less peak memory, the same numbers
within float32 rounding. Used only where it applies (:func:`usable`).

The spectral branch's 2-D convs go in bands of bins (:func:`_along_bins`), the waveform branch's
1-D ones in spans of frames (:func:`_along_time`). A decoder's rewrite reads the sum of its input
and the skip connection: each piece adds its own part of the two, so that sum (33 MB at the
outermost layers) is never made whole either.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stemdeck.models.nets.inference_paths import (
    float32_eager_inference,
    memory_for_speed,
    same_padded_conv_before_glu,
)

BAND_BYTES = 8 << 20  # one band's conv output: few enough calls, far below the whole tensor
SPAN_BYTES = 3 << 19  # one span's conv output, 1.5 MB: 4096 frames of 96 channels (2048 and 8192: slower)
MIN_OUTPUT_BYTES = 16 << 20  # htdemucs's 66 and 33 MB outputs; smaller ones are left to the plain conv
# Where freed memory goes back at once (`--memory low`), every output of 8 MB or more is mapped
# and faulted in again on each call: there the waveform branch's 16.5 MB outputs pay too (96 to
# 192 channels over 21 499 frames: 39.2 -> 22.2 ms for the 1x1 conv, 51.6 -> 32.4 ms for the
# 3-tap one; 2 to 11 ms slower where memory is kept). The spectral 2-D ones of that size do not.
MIN_SPAN_OUTPUT_BYTES_RETURNING = 12 << 20


def usable(conv: nn.Module, norm: nn.Module, y: torch.Tensor) -> bool:
    """A plain 'same' conv with no norm before the GLU (:func:`same_padded_conv_before_glu`), in
    float32 eager inference (:func:`float32_eager_inference`), and an output worth splitting."""
    if not same_padded_conv_before_glu(conv, norm, y) or not float32_eager_inference(y, conv):
        return False
    output_bytes = y.numel() // conv.in_channels * conv.out_channels * y.element_size()
    if y.dim() == 3 and not memory_for_speed():
        return output_bytes >= MIN_SPAN_OUTPUT_BYTES_RETURNING
    return output_bytes >= MIN_OUTPUT_BYTES


def rewrite_glu(conv: nn.Conv1d | nn.Conv2d, y: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """``glu(conv(y + skip), dim=1)`` computed piece by piece (a decoder's skip connection added
    to each piece: the whole sum is never made)."""
    if y.dim() == 3:
        return _along_time(conv, y, skip)
    return _along_bins(conv, y, skip)


def _along_bins(conv: nn.Conv2d, y: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """Bands of ``y``'s bins (dim 2), each with the kernel's halo."""
    batch, _, bins, frames = y.shape
    halo = conv.padding[0]
    out = torch.empty(
        batch, conv.out_channels // 2, bins, frames, dtype=y.dtype, device=y.device, memory_format=_layout(y)
    )
    per_band = max(1, BAND_BYTES // (conv.out_channels * frames * y.element_size() * batch))
    for start in range(0, bins, per_band):
        stop = min(bins, start + per_band)
        low, high = max(0, start - halo), min(bins, stop + halo)
        band = _piece(y, skip, (slice(None), slice(None), slice(low, high)))
        missing_below, missing_above = halo - (start - low), halo - (high - stop)
        if missing_below or missing_above:
            band = F.pad(band, (0, 0, missing_below, missing_above))
        convolved = F.conv2d(band, conv.weight, conv.bias, padding=(0, conv.padding[1]))
        # not _glu_into: on channels-last bands the sigmoid and product over strided channel
        # halves were slower than F.glu and a copy (htdemucs's 512 bins: 49.6 against 29.9 ms for
        # the 1x1 conv, 115.5 against 97.9 ms for the 3x3)
        out[:, :, start:stop] = F.glu(convolved, dim=1)
    return out


def _along_time(conv: nn.Conv1d, y: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
    """Spans of ``y``'s frames, each with the kernel's halo."""
    batch, _, frames = y.shape
    halo = conv.padding[0]
    out = y.new_empty(batch, conv.out_channels // 2, frames)
    per_span = max(1, SPAN_BYTES // (conv.out_channels * y.element_size() * batch))
    for start in range(0, frames, per_span):
        stop = min(frames, start + per_span)
        low, high = max(0, start - halo), min(frames, stop + halo)
        span = _piece(y, skip, (..., slice(low, high)))
        missing_before, missing_after = halo - (start - low), halo - (high - stop)
        if missing_before or missing_after:
            span = F.pad(span, (missing_before, missing_after))
        _glu_into(F.conv1d(span, conv.weight, conv.bias), out[..., start:stop])
    return out


def _piece(y: torch.Tensor, skip: torch.Tensor | None, where: tuple) -> torch.Tensor:
    return y[where] if skip is None else y[where] + skip[where]


def _glu_into(convolved: torch.Tensor, dest: torch.Tensor) -> None:
    """``dest = glu(convolved, dim=1)``, the gate's sigmoid taken in place in the (cached) piece."""
    value, gate = convolved.chunk(2, dim=1)
    torch.mul(value, gate.sigmoid_(), out=dest)


def _layout(y: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
