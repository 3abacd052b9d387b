"""HT Demucs (Rouard, Massa & Défossez, ICASSP 2023): the hybrid U-Net with a cross-domain
Transformer in place of its innermost layers."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import nn
from torch.nn import functional as F

from stemdeck.models.limits import check_sources
from stemdeck.models.nets.hdemucs import refuse
from stemdeck.models.nets.transformer import CrossTransformerEncoder
from stemdeck.models.nets.unet import HybridUNet


class HTDemucs(HybridUNet):
    """HT Demucs. Keyword names and defaults follow the official checkpoints' ``kwargs``.

    With ``use_train_segment`` (the official models), inputs shorter than the training segment
    are zero-padded to it, as in training, and the output cut back. Set it to ``False`` to run the
    transformer on the shorter sequence instead (less compute and latency, less context).
    """

    def __init__(
        self,
        sources: Sequence[str],
        audio_channels: int = 2,
        channels: int = 48,
        channels_time: int | None = None,
        growth: float = 2,
        nfft: int = 4096,
        wiener_iters: int = 0,
        end_iters: int = 0,
        wiener_residual: bool = False,
        cac: bool = True,
        depth: int = 4,
        rewrite: bool = True,
        multi_freqs: Sequence[float] | None = None,
        multi_freqs_depth: int = 3,
        freq_emb: float = 0.2,
        emb_scale: float = 10,
        emb_smooth: bool = True,
        kernel_size: int = 8,
        time_stride: int = 2,
        stride: int = 4,
        context: int = 1,
        context_enc: int = 0,
        norm_starts: int = 4,
        norm_groups: int = 4,
        dconv_mode: int = 1,
        dconv_depth: int = 2,
        dconv_comp: float = 8,
        dconv_init: float = 1e-3,
        # Transformer
        bottom_channels: int = 0,
        t_layers: int = 5,
        t_emb: str = "sin",
        t_hidden_scale: float = 4.0,
        t_heads: int = 8,
        t_dropout: float = 0.0,
        t_max_positions: int = 10000,
        t_norm_in: bool = True,
        t_norm_in_group: bool = False,
        t_group_norm: bool = False,
        t_norm_first: bool = True,
        t_norm_out: bool = True,
        t_max_period: float = 10000.0,
        t_weight_decay: float = 0.0,
        t_lr: float | None = None,
        t_layer_scale: bool = True,
        t_gelu: bool = True,
        t_weight_pos_embed: float = 1.0,
        t_sin_random_shift: int = 0,
        t_cape_mean_normalize: bool = True,
        t_cape_augment: bool = True,
        t_cape_glob_loc_scale: Sequence[float] = (5000.0, 1.0, 1.4),
        t_sparse_self_attn: bool = False,
        t_sparse_cross_attn: bool = False,
        t_mask_type: str = "diag",
        t_mask_random_seed: int = 42,
        t_sparse_attn_window: int = 500,
        t_global_window: int = 100,
        t_sparsity: float = 0.95,
        t_auto_sparsity: bool = False,
        t_cross_first: bool = False,
        # Init and metadata
        rescale: float = 0.1,
        samplerate: int = 44100,
        segment: float | Fraction = 10,
        use_train_segment: bool = True,
    ):
        super().__init__()
        refuse(not cac or wiener_iters or end_iters, "Wiener filtering instead of complex-as-channels")
        self.init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.sources = check_sources(sources)  # they become file names
        self.audio_channels, self.samplerate, self.segment = audio_channels, samplerate, segment
        self.use_train_segment = use_train_segment
        self.channels, self.bottom_channels = channels, bottom_channels
        self.t_weight_decay, self.t_lr = t_weight_decay, t_lr
        self._build_layers_from(self.init_kwargs)
        self._init_weights(rescale)

        transformer_channels = int(channels * growth ** (depth - 1))
        if bottom_channels:
            self.channel_upsampler = nn.Conv1d(transformer_channels, bottom_channels, 1)
            self.channel_downsampler = nn.Conv1d(bottom_channels, transformer_channels, 1)
            self.channel_upsampler_t = nn.Conv1d(transformer_channels, bottom_channels, 1)
            self.channel_downsampler_t = nn.Conv1d(bottom_channels, transformer_channels, 1)
            transformer_channels = bottom_channels
        self.crosstransformer = None
        if t_layers > 0:
            self.crosstransformer = CrossTransformerEncoder(
                dim=transformer_channels,
                emb=t_emb,
                hidden_scale=t_hidden_scale,
                num_heads=t_heads,
                num_layers=t_layers,
                cross_first=t_cross_first,
                dropout=t_dropout,
                max_positions=t_max_positions,
                norm_in=t_norm_in,
                norm_in_group=t_norm_in_group,
                group_norm=t_group_norm,
                norm_first=t_norm_first,
                norm_out=t_norm_out,
                max_period=t_max_period,
                layer_scale=t_layer_scale,
                gelu=t_gelu,
                sin_random_shift=t_sin_random_shift,
                weight_pos_embed=t_weight_pos_embed,
                cape_mean_normalize=t_cape_mean_normalize,
                cape_augment=t_cape_augment,
                cape_glob_loc_scale=tuple(t_cape_glob_loc_scale),
                sparse_self_attn=t_sparse_self_attn,
                sparse_cross_attn=t_sparse_cross_attn,
                mask_type=t_mask_type,
                mask_random_seed=t_mask_random_seed,
                sparse_attn_window=t_sparse_attn_window,
                global_window=t_global_window,
                auto_sparsity=t_auto_sparsity,
                sparsity=t_sparsity,
            )

    def valid_length(self, length: int) -> int:
        """The length the model runs at: the training segment, when that is used."""
        if not self.use_train_segment:
            return length
        train_length = int(self.segment * self.samplerate)
        if train_length < length:
            raise ValueError(
                f"input of {length} samples is longer than the model's training "
                f"segment ({train_length}); separate it in chunks"
            )
        return train_length

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """``(batch, channels, time)`` to ``(batch, sources, channels, time)``."""
        length = mix.shape[-1]
        if self.training and self.use_train_segment:
            self.segment = Fraction(length, self.samplerate)
        elif not self.training:
            padded = self.valid_length(length)
            if padded > length:
                return self._separate(F.pad(mix, (0, padded - length)))[..., :length]
        return self._separate(mix)

    def _bottleneck(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.crosstransformer is None:
            return x, xt
        batch, channels, freqs, frames = x.shape
        tokens = x.permute(0, 3, 2, 1).reshape(batch, frames * freqs, channels)
        tokens_t = xt.transpose(1, 2)
        if self.bottom_channels:
            tokens = _pointwise(self.channel_upsampler, tokens)
            tokens_t = _pointwise(self.channel_upsampler_t, tokens_t)
        tokens, tokens_t = self.crosstransformer(tokens, tokens_t, freqs, frames)
        if self.bottom_channels:
            tokens = _pointwise(self.channel_downsampler, tokens)
            tokens_t = _pointwise(self.channel_downsampler_t, tokens_t)
        x = tokens.view(batch, frames, freqs, channels).permute(0, 3, 2, 1)
        return x, tokens_t.transpose(1, 2)


def _pointwise(conv: nn.Conv1d, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution applied to ``(B, tokens, C)`` directly, saving two transposes."""
    return F.linear(tokens, conv.weight[..., 0], conv.bias)
