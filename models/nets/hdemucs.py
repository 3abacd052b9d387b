"""Hybrid Demucs (v3, Défossez 2021): the two U-Nets share their innermost layers."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch

from stemdeck.models.limits import check_sources
from stemdeck.models.nets.unet import HybridUNet


class UnsupportedModelError(ValueError):
    """A checkpoint asks for a model variant stemdeck does not implement."""


def refuse(condition: bool, what: str) -> None:
    if condition:
        raise UnsupportedModelError(f"this checkpoint uses {what}, which stemdeck does not support")


class HDemucs(HybridUNet):
    """Hybrid Demucs. Keyword names and defaults follow the official checkpoints' ``kwargs``."""

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
        depth: int = 6,
        rewrite: bool = True,
        hybrid: bool = True,
        hybrid_old: bool = False,
        multi_freqs: Sequence[float] | None = None,
        multi_freqs_depth: int = 2,
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
        dconv_comp: float = 4,
        dconv_attn: int = 4,
        dconv_lstm: int = 4,
        dconv_init: float = 1e-4,
        rescale: float = 0.1,
        samplerate: int = 44100,
        segment: float | Fraction = 4 * 10,
    ):
        super().__init__()
        refuse(not cac or wiener_iters or end_iters, "Wiener filtering instead of complex-as-channels")
        refuse(not hybrid or hybrid_old, "the spectrogram-only or MDX-2021 hybrid layout")
        self.init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.sources = check_sources(sources)  # they become file names
        self.audio_channels, self.samplerate, self.segment = audio_channels, samplerate, segment
        self.channels = channels
        self._build_layers_from(self.init_kwargs)
        self._init_weights(rescale)

    def _bottleneck(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The decoders rebuild everything from the skip connections.
        return torch.zeros_like(x), torch.zeros_like(x)

    def valid_length(self, length: int) -> int:
        return length

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """``(batch, channels, time)`` to ``(batch, sources, channels, time)``."""
        return self._separate(mix)
