"""DConv's residual branches at inference, without the full-size expanded tensor.

A plain branch (conv, GroupNorm, GELU, 1x1 expansion to ``2C`` channels, GroupNorm, GLU,
LayerScale) spends most of its time on memory, not arithmetic: the expansion's ``(N, 2C, T)``
output is the widest tensor of the layer (66 MB at the spectral branch's first layer), freshly
mapped on every call, then read and written again by the bias, the norm, the GLU and the
residual add. Here it never exists whole:

* the dilated conv is one batched product of the stacked taps, then shifted adds (oneDNN ran
  this 48-to-6-channel conv at a tenth of its usual rate);
* the second GroupNorm (one group per sample) is folded into the expansion: its per-sample
  mean and variance follow exactly from the small hidden tensor's mean and covariance, so each
  sample gets its own expansion weights and bias, with the norm's affine and the LayerScale in
  them (statistics in float64);
* the expansion, GLU and residual add then run block by block, each block small enough to stay
  in cache, writing straight into the output.

Same numbers as the module's own forward within float32 rounding (about 130 dB); used only in
float32 eval without gradients, outside ONNX/TorchScript export (:func:`usable`).
"""

from __future__ import annotations

import torch
from torch import nn

from stemdeck.models.nets.inference_paths import float32_eager_inference

BLOCK_BYTES = 1 << 20  # one block of the expanded tensor: fits the L2 cache of common CPUs
# Below this the expanded tensor is cheap to make whole (no page faults, few blocks' worth), and
# the per-block calls cost more than they save: at htdemucs's 8.3 MB layers this path was 20-50 %
# slower, at 16.5 MB even, at 33-66 MB 2-3x faster (one 7.8 s forward, 2 threads).
MIN_EXPANDED_BYTES = 12 << 20


def usable(layers: nn.ModuleList, x: torch.Tensor) -> bool:
    """Whether every branch of a DConv can run here and pays: plain with a foldable norm,
    float32 eager inference (:func:`float32_eager_inference`), its expanded tensor at least
    :data:`MIN_EXPANDED_BYTES`."""
    if 2 * x.numel() * x.element_size() < MIN_EXPANDED_BYTES:
        return False
    return float32_eager_inference(x, layers) and all(_foldable(layer) for layer in layers)


def is_plain(layer: nn.Sequential) -> bool:
    """A branch without LSTM or local attention: conv, norm, GELU, 1x1 conv, norm, GLU, scale."""
    return len(layer) == 7 and isinstance(layer[3], nn.Conv1d)


def _foldable(layer: nn.Sequential) -> bool:
    """Plain, its conv stride 1 and 'same' padded with an odd kernel (what :func:`taps_conv1d`
    computes), its expansion 1x1, its second norm one GroupNorm group (what
    :func:`folded_expansion` folds)."""
    if not is_plain(layer):
        return False
    conv, _, _, expand, norm_out, _, _ = layer
    return (
        isinstance(conv, nn.Conv1d)
        and conv.groups == 1
        and conv.stride == (1,)
        and conv.padding == (conv.dilation[0] * (conv.kernel_size[0] // 2),)
        and conv.kernel_size[0] % 2 == 1
        and expand.kernel_size == (1,)
        and isinstance(norm_out, nn.GroupNorm)
        and norm_out.num_groups == 1
    )


def run(layers: nn.ModuleList, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """``x`` plus each branch in turn, as ``DConv.forward``; ``x`` itself is left as it is unless
    ``in_place`` (each branch reads all of its input before its first block is written)."""
    out = x if in_place else torch.empty_like(x)  # empty_like keeps x's (channels-last view's) strides
    for index, layer in enumerate(layers):
        _branch_into(layer, x if index == 0 else out, out)
    return out


def _branch_into(layer: nn.Sequential, x: torch.Tensor, out: torch.Tensor) -> None:
    conv, norm, activation, expand, norm_out, _, scale = layer
    hidden = activation(norm(taps_conv1d(conv, x)))
    weight, bias = folded_expansion(expand.weight[:, :, 0], expand.bias, norm_out, scale.scale, hidden)
    expanded = weight.shape[1]
    samples, frames = x.shape[0], x.shape[-1]
    if samples > 1:
        per_block = max(1, BLOCK_BYTES // (4 * expanded * frames))
        block = x.new_empty(per_block * expanded * frames)  # one buffer for every block
        for start in range(0, samples, per_block):
            rows = slice(start, start + per_block)
            count = min(per_block, samples - start)
            y = block[: count * expanded * frames].view(count, expanded, frames)
            torch.baddbmm(bias[rows, :, None], weight[rows], hidden[rows], out=y)
            _glu_add(y, x[rows], out[rows])
        return
    per_block = max(1, BLOCK_BYTES // (4 * expanded))
    block = x.new_empty(expanded * per_block)
    for start in range(0, frames, per_block):
        span = slice(start, start + per_block)
        count = min(per_block, frames - start)
        y = block[: expanded * count].view(1, expanded, count)
        torch.baddbmm(bias[:, :, None], weight, hidden[..., span], out=y)
        _glu_add(y, x[..., span], out[..., span])


def _glu_add(y: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> None:
    """``out = x + glu(y)``, the gate's sigmoid taken in place in the (cached) block."""
    value, gate = y.chunk(2, dim=1)
    torch.addcmul(x, value, gate.sigmoid_(), out=out)


def taps_conv1d(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A stride-1, 'same'-padded, dilated ``conv`` of ``(N, C, T)``: one batched product of all
    taps at once, then each tap's rows added at its offset (zero beyond the ends). The products,
    ``kernel`` times the output, are made for a block of samples at a time in one scratch buffer
    (11.8 MB at htdemucs's 512 bins, never made whole)."""
    hidden, _, kernel = conv.weight.shape
    samples, frames = x.shape[0], x.shape[-1]
    stacked = conv.weight.permute(2, 0, 1).reshape(kernel * hidden, -1)
    out = x.new_empty(samples, hidden, frames)
    per_block = max(1, BLOCK_BYTES // (x.element_size() * kernel * hidden * frames))
    scratch = x.new_empty(min(per_block, samples) * kernel * hidden * frames)
    for start in range(0, samples, per_block):
        count = min(per_block, samples - start)
        products = scratch[: count * kernel * hidden * frames].view(count, kernel * hidden, frames)
        torch.bmm(stacked.expand(count, -1, -1), x[start : start + count], out=products)
        _add_taps(products, conv, out[start : start + count])
    return out


def _add_taps(products: torch.Tensor, conv: nn.Conv1d, out: torch.Tensor) -> None:
    """``out``: the middle tap's rows plus the bias, then every other tap's rows at its offset."""
    hidden, _, kernel = conv.weight.shape
    dilation, middle, frames = conv.dilation[0], kernel // 2, out.shape[-1]
    torch.add(products[:, middle * hidden : (middle + 1) * hidden], conv.bias[None, :, None], out=out)
    for tap in range(kernel):
        offset = dilation * (tap - middle)
        if tap == middle or abs(offset) >= frames:
            continue
        rows = products[:, tap * hidden : (tap + 1) * hidden]
        if offset > 0:
            out[..., : frames - offset] += rows[..., offset:]
        else:
            out[..., -offset:] += rows[..., : frames + offset]


def folded_expansion(
    weight: torch.Tensor,
    bias: torch.Tensor,
    norm: nn.GroupNorm,
    value_scale: torch.Tensor,
    hidden: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ``(N, 2C, h)`` weights and ``(N, 2C)`` biases equal to the 1x1 expansion
    ``weight``/``bias`` followed by ``norm`` (one group) and ``value_scale`` on the GLU's first
    half. The norm's statistics of ``y = W h + b`` over channels and frames come from the
    hidden tensor's per-sample mean ``mu`` and covariance ``S``: channel ``c`` has mean
    ``W_c mu + b_c`` and variance ``W_c S W_c``; the sample's variance is the mean of those
    plus the variance of the channel means."""
    w64, b64 = weight.double(), bias.double()
    h64 = hidden.double()
    mean_hidden = h64.mean(-1)  # (N, h)
    centred = h64 - mean_hidden[..., None]
    covariance = torch.bmm(centred, centred.transpose(1, 2)) / hidden.shape[-1]  # (N, h, h)
    channel_means = mean_hidden @ w64.T + b64  # (N, 2C)
    channel_vars = ((w64 @ covariance) * w64).sum(-1)  # (N, 2C): W_c S W_c
    sample_mean = channel_means.mean(-1, keepdim=True)
    sample_var = channel_vars.mean(-1, keepdim=True) + (channel_means - sample_mean).pow(2).mean(-1, keepdim=True)
    layer_gain = torch.cat([value_scale, torch.ones_like(value_scale)]).double()
    per_sample_gain = layer_gain * norm.weight.double() * torch.rsqrt(sample_var + norm.eps)  # (N, 2C)
    folded_weight = per_sample_gain[..., None] * w64
    folded_bias = (b64 - sample_mean) * per_sample_gain + norm.bias.double() * layer_gain
    return folded_weight.float(), folded_bias.float()
