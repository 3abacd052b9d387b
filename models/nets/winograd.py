"""The decoder's 3x3 "rewrite" conv and its GLU by Winograd's F(4x4, 3x3), at inference.

Each spectral decoder layer starts with a 3x3 conv over (bins, frames) that doubles the
channels: 14.3 GFLOP per layer in htdemucs, the largest convolution work of a forward. Winograd's
minimal filtering computes each 4x4 tile of output from a 6x6 tile of input with 36 products
per pair of channels instead of 144, so the channel matrix products (one per position of the
6x6 tile) do a quarter of the multiplications. The tiles' transforms are small matrix products
of their own, and the transformed weights are kept (4x the conv's: 42 MB for htdemucs's widest).
Same numbers as the conv within float32 rounding (about 120 dB); used only in float32 eager
inference (:func:`usable`).

It pays where the channel products are large. In an int8 htdemucs forward on 2 AVX2 cores
(module hooks, on and off alternated): decoder layer 0 (384 to 768 channels over 8 bins) 157 ->
111 ms, layer 1 (192 to 384 over 32 bins) 162 -> 148 ms. Alone, 96 to 192 channels over 128 bins
took 102 -> 187 ms in one piece and 114 -> 118-128 ms in bands: too few channels for the
products to outrun the transforms' memory traffic.

It trades memory for that time, so it stands aside where the process returns freed memory at
once (``stemdeck separate --memory low``, :func:`inference_paths.memory_for_speed`): there
each scratch buffer is mapped and faulted in again on every call, and a 1-minute song took the
same time with it (54-59 s, three runs each) at 906-946 MB against 858-876 MB.
"""

from __future__ import annotations

import threading

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from stemdeck.models.nets.inference_paths import (
    float32_eager_inference,
    memory_for_speed,
    same_padded_conv_before_glu,
)

TILE = 4  # output tile side: F(4x4, 3x3)
PATCH = TILE + 2  # input tile side
MIN_IN_CHANNELS = 192  # measured above: 192 and 384 pay, 96 does not
BAND_BYTES = 24 << 20  # one band of tile rows' transformed products: a few bands for the widest layers

# Lavin & Gray (2016), F(4, 3): input transform B^T, filter transform G, output transform A^T.
_INPUT_T = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_FILTER = (
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
_OUTPUT_T = (
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)
# Column 1 of A^T is all ones: a bias added to that product reaches every output once.
_BIAS_PRODUCT = 1 * PATCH + 1

_INPUT_2D = torch.kron(torch.tensor(_INPUT_T), torch.tensor(_INPUT_T)).float()  # (36, 36), on a 6x6 tile
_OUTPUT_2D = torch.kron(torch.tensor(_OUTPUT_T), torch.tensor(_OUTPUT_T)).float()  # (16, 36), to a 4x4 tile
_FILTER_2D = torch.kron(torch.tensor(_FILTER, dtype=torch.float64), torch.tensor(_FILTER, dtype=torch.float64)).float()

# Transformed weights per conv weight, made once and dropped with the weight; a weight changed
# in place (its version) is transformed again.
_TRANSFORMED = WeakIdKeyDictionary()
_TRANSFORMED_LOCK = threading.Lock()  # two decks' workers may share a model


def usable(conv: nn.Module, norm: nn.Module, y: torch.Tensor) -> bool:
    """A plain 3x3 'same' conv with no norm before the GLU (:func:`same_padded_conv_before_glu`),
    wide enough to pay, in float32 eager inference (:func:`float32_eager_inference`), where
    memory may buy speed."""
    if not same_padded_conv_before_glu(conv, norm, y) or conv.kernel_size != (3, 3):
        return False
    if conv.weight.is_inference():  # no version counter: a change in place would go unseen
        return False
    wide = conv.in_channels >= MIN_IN_CHANNELS
    return wide and memory_for_speed() and float32_eager_inference(y, conv)


def rewrite_glu(conv: nn.Conv2d, y: torch.Tensor) -> torch.Tensor:
    """``glu(conv(y), dim=1)``, channels-last, a band of tile rows at a time."""
    batch, channels, bins, frames = y.shape
    tile_rows, tile_cols = -(-bins // TILE), -(-frames // TILE)
    padded = y.new_zeros(batch, TILE * tile_rows + 2, TILE * tile_cols + 2, channels)
    padded[:, 1 : bins + 1, 1 : frames + 1] = y.permute(0, 2, 3, 1)
    weights = transformed_weights(conv)
    half = conv.out_channels // 2
    out = y.new_empty(batch, TILE * tile_rows, TILE * tile_cols, half)
    band_rows = max(1, BAND_BYTES // (PATCH * PATCH * tile_cols * conv.out_channels * y.element_size()))
    for item in range(batch):
        for first in range(0, tile_rows, band_rows):
            rows = min(band_rows, tile_rows - first)
            window = padded[item, TILE * first : TILE * (first + rows) + 2]
            _band(window, weights, conv.bias, out[item, TILE * first : TILE * (first + rows)])
    # channels-last, as oneDNN's conv gives it (a copy only where frames are not whole tiles)
    return out[:, :bins, :frames].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def _band(window: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor, dest: torch.Tensor) -> None:
    """Into ``dest`` ``(4 rows, 4 cols, C_out / 2)``: the GLU of the conv over those output
    tiles, from ``window`` ``(4 rows + 2, 4 cols + 2, C)``."""
    rows, cols, channels = dest.shape[0] // TILE, dest.shape[1] // TILE, window.shape[-1]
    row_stride, col_stride = window.stride(0), window.stride(1)
    patches = window.as_strided(
        (PATCH, PATCH, rows, cols, channels), (row_stride, col_stride, TILE * row_stride, TILE * col_stride, 1)
    )
    tiles = rows * cols
    inputs = torch.mm(_INPUT_2D, patches.reshape(PATCH * PATCH, tiles * channels))
    products = torch.bmm(inputs.view(PATCH * PATCH, tiles, channels), weights)
    del inputs
    products[_BIAS_PRODUCT] += bias
    outputs = torch.mm(_OUTPUT_2D, products.view(PATCH * PATCH, -1))
    del products
    outputs = outputs.view(TILE, TILE, rows, cols, -1).permute(2, 0, 3, 1, 4)  # (rows, 4, cols, 4, C_out)
    half = outputs.shape[-1] // 2
    glu = dest.view(rows, TILE, cols, TILE, half)
    torch.sigmoid(outputs[..., half:], out=glu)
    glu.mul_(outputs[..., :half])


def transformed_weights(conv: nn.Conv2d) -> torch.Tensor:
    """``G w G^T`` for every pair of channels, ``(36, C_in, C_out)``: one product with the
    weights as they lie (no float64 or per-pair copies, which took 100 MB more at the first
    chunk for htdemucs's widest layer)."""
    weight = conv.weight
    with _TRANSFORMED_LOCK:
        cached = _TRANSFORMED.get(weight)
        if cached is not None and cached[0] == weight._version:
            return cached[1]
        taps = weight.detach().permute(2, 3, 1, 0).reshape(9, conv.in_channels * conv.out_channels)
        transformed = torch.mm(_FILTER_2D, taps).view(PATCH * PATCH, conv.in_channels, conv.out_channels)
        _TRANSFORMED[weight] = (weight._version, transformed)
        return transformed
