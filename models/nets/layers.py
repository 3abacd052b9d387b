"""Building blocks shared by Hybrid Demucs and HT Demucs.

Attribute names and ``nn.Sequential`` positions follow the official checkpoints, so their
state dicts load with ``strict=True``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from stemdeck.models.nets import dconv_blocked


class LayerScale(nn.Module):
    """Per-channel residual scale (Touvron et al. 2021), started near zero."""

    def __init__(self, channels: int, init: float = 0.0, channel_last: bool = False):
        super().__init__()
        self.channel_last = channel_last
        self.scale = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x if self.channel_last else self.scale[:, None] * x


class FrequencyEmbedding(nn.Module):
    """Learnt per-frequency-bin embedding whose learning rate is boosted by ``scale``."""

    def __init__(self, num_freqs: int, channels: int, scale: float = 10.0, smooth: bool = True):
        super().__init__()
        self.embedding = nn.Embedding(num_freqs, channels, _weight=torch.empty(num_freqs, channels))
        self.scale = scale
        if self.embedding.weight.device.type == "meta":
            # only shapes wanted (a checkpoint checked before anything is allocated); the init's
            # normal_ and cumsum on meta tensors import torch._dynamo, 68 MB kept for good
            return
        weight = nn.init.normal_(self.embedding.weight.data)  # nn.Embedding's own init, same draws
        if smooth:
            # Cumulative sum makes neighbouring bins similar; divide by sqrt(n) to keep unit scale.
            weight = torch.cumsum(weight, dim=0)
            weight = weight / torch.arange(1, num_freqs + 1).to(weight).sqrt()[:, None]
            self.embedding.weight.data[:] = weight
        self.embedding.weight.data /= scale

    def forward(self, bins: torch.Tensor) -> torch.Tensor:
        return self.embedding(bins) * self.scale


def frame_signal(x: torch.Tensor, width: int, stride: int) -> torch.Tensor:
    """``(..., time)`` to ``(..., frames, width)`` with ``frames = ceil(time / stride)``."""
    length = x.shape[-1]
    frames = math.ceil(length / stride)
    x = F.pad(x, (0, (frames - 1) * stride + width - length)).contiguous()
    return x.unfold(-1, width, stride)


class BLSTM(nn.Module):
    """Bidirectional LSTM over time, run on overlapping chunks of ``max_steps`` when longer."""

    def __init__(self, dim: int, layers: int = 1, max_steps: int | None = None, skip: bool = False):
        super().__init__()
        self.max_steps = max_steps
        self.lstm = nn.LSTM(bidirectional=True, num_layers=layers, hidden_size=dim, input_size=dim)
        self.linear = nn.Linear(2 * dim, dim)
        self.skip = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, length = x.shape
        chunked = self.max_steps is not None and length > self.max_steps
        y = x
        if chunked:
            width, stride = self.max_steps, self.max_steps // 2
            frames = frame_signal(x, width, stride)  # (B, C, F, W)
            num_frames = frames.shape[2]
            y = frames.permute(0, 2, 1, 3).reshape(-1, channels, width)
        y = self.linear(self.lstm(y.permute(2, 0, 1))[0]).permute(1, 2, 0)
        if chunked:
            y = self._stitch(y.reshape(batch, num_frames, channels, width), stride // 2)[..., :length]
        return x + y if self.skip else y

    @staticmethod
    def _stitch(frames: torch.Tensor, margin: int) -> torch.Tensor:
        """Keep the centre of each chunk (and the outer edges of the first and last ones)."""
        last = frames.shape[1] - 1
        parts = [frames[:, k, :, (0 if k == 0 else margin) : (None if k == last else -margin)] for k in range(last + 1)]
        return torch.cat(parts, -1)


class LocalState(nn.Module):
    """Content-based attention over time with a learnt, decaying locality penalty."""

    def __init__(self, channels: int, heads: int = 4, ndecay: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"LocalState: {channels} channels do not split into {heads} heads")
        self.heads = heads
        self.ndecay = ndecay
        self.content = nn.Conv1d(channels, channels, 1)
        self.query = nn.Conv1d(channels, channels, 1)
        self.key = nn.Conv1d(channels, channels, 1)
        self.query_decay = nn.Conv1d(channels, heads * ndecay, 1)
        self.query_decay.weight.data *= 0.01
        self.query_decay.bias.data[:] = -2
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, length = x.shape
        heads = self.heads
        positions = torch.arange(length, device=x.device, dtype=x.dtype)
        distance = (positions[:, None] - positions[None, :]).abs()
        queries = self.query(x).view(batch, heads, -1, length)
        keys = self.key(x).view(batch, heads, -1, length)
        # scores[b, h, key, query]
        scores = torch.einsum("bhct,bhcs->bhts", keys, queries) / math.sqrt(keys.shape[2])
        decays = torch.arange(1, self.ndecay + 1, device=x.device, dtype=x.dtype)
        decay_kernel = -decays.view(-1, 1, 1) * distance / math.sqrt(self.ndecay)
        decay_q = torch.sigmoid(self.query_decay(x).view(batch, heads, -1, length)) / 2
        scores = scores + torch.einsum("fts,bhfs->bhts", decay_kernel, decay_q)
        scores.masked_fill_(torch.eye(length, device=x.device, dtype=torch.bool), -100)
        weights = torch.softmax(scores, dim=2)
        content = self.content(x).view(batch, heads, -1, length)
        result = torch.einsum("bhts,bhct->bhcs", weights, content)
        return x + self.proj(result.reshape(batch, -1, length))


class DConv(nn.Module):
    """Residual branch of dilated convolutions inside every encoder/decoder layer.

    Each of the ``depth`` sub-branches compresses the channels by ``compress``, optionally runs a
    BiLSTM and local attention, expands with a GLU, and is scaled by a LayerScale.
    """

    def __init__(
        self,
        channels: int,
        compress: float = 4,
        depth: int = 2,
        init: float = 1e-4,
        norm: bool = True,
        attn: bool = False,
        heads: int = 4,
        ndecay: int = 4,
        lstm: bool = False,
        gelu: bool = True,
        kernel: int = 3,
    ):
        super().__init__()
        dilate = depth > 0
        hidden = int(channels / compress)
        self.layers = nn.ModuleList()
        for d in range(abs(depth)):
            dilation = 2**d if dilate else 1
            mods: list[nn.Module] = [
                nn.Conv1d(channels, hidden, kernel, dilation=dilation, padding=dilation * (kernel // 2)),
                _norm(norm, hidden),
                nn.GELU() if gelu else nn.ReLU(),
                nn.Conv1d(hidden, 2 * channels, 1),
                _norm(norm, 2 * channels),
                nn.GLU(1),
                LayerScale(channels, init),
            ]
            if attn:
                mods.insert(3, LocalState(hidden, heads=heads, ndecay=ndecay))
            if lstm:
                mods.insert(3, BLSTM(hidden, layers=2, max_steps=200, skip=True))
            self.layers.append(nn.Sequential(*mods))

    def forward(self, x: torch.Tensor, consume: bool = False) -> torch.Tensor:
        """``consume``: ``x`` is the caller's to lose; the blocked path then writes over it."""
        if not self.training and dconv_blocked.usable(self.layers, x):
            return dconv_blocked.run(self.layers, x, in_place=consume)
        for layer in self.layers:
            plain = dconv_blocked.is_plain(layer) and not self.training
            x = x + (_plain_branch(layer, x) if plain else layer(x))
        return x


def _plain_branch(layer: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The same branch with less memory traffic, which is what it is bound by: the 1x1
    expansion as one batched matrix product (oneDNN runs it at half the speed on the
    ``(bins, C, frames)`` batches of the spectral branch) and the LayerScale folded into the
    affine part of the norm before the GLU, saving a pass over the widest tensor."""
    conv, norm, activation, expand, norm_out, _, scale = layer
    y = activation(norm(conv(x)))
    weight = expand.weight[:, :, 0].expand(y.shape[0], -1, -1)
    y = torch.baddbmm(expand.bias[None, :, None], weight, y)
    if isinstance(norm_out, nn.GroupNorm):
        ones = torch.ones_like(scale.scale)
        gain = torch.cat([scale.scale, ones])
        y = F.group_norm(y, norm_out.num_groups, norm_out.weight * gain, norm_out.bias * gain, norm_out.eps)
        return F.glu(y, dim=1)
    return scale(F.glu(norm_out(y), dim=1))


def _norm(enabled: bool, channels: int, groups: int = 1) -> nn.Module:
    return nn.GroupNorm(groups, channels) if enabled else nn.Identity()


def rescale_module(module: nn.Module, reference: float) -> None:
    """Initial weight rescaling of every convolution, which trains better (Défossez et al.).

    Nothing to rescale on the meta device (only shapes wanted), where ``std`` would import
    torch._dynamo (68 MB kept for good)."""
    if any(parameter.is_meta for parameter in module.parameters()):
        return
    for sub in module.modules():
        if isinstance(sub, (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d, nn.ConvTranspose2d)):
            scale = (sub.weight.std().detach() / reference) ** 0.5
            sub.weight.data /= scale
            if sub.bias is not None:
                sub.bias.data /= scale
