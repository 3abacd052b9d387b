"""A stand-in separator whose stems are known: fixed fractions of the input.

Stem ``s`` is ``fractions[s] * mix``; the fractions sum to one, so the stems add back up to the
mix exactly. Tests and benchmarks use it to check latency, alignment, gains, mute and solo
exactly, without weights and without inference time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4)


class PassThrough(nn.Module):
    def __init__(
        self,
        sources: Sequence[str] = ("drums", "bass", "other", "vocals"),
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        samplerate: int = 44100,
        audio_channels: int = 2,
        segment: float = 7.8,
    ):
        super().__init__()
        if len(sources) != len(fractions):
            raise ValueError("one fraction per source")
        self.sources = list(sources)
        self.samplerate, self.audio_channels, self.segment = samplerate, audio_channels, segment
        self.register_buffer("fractions", torch.tensor(fractions, dtype=torch.float32))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` to ``(B, S, C, T)``."""
        return mix[:, None] * self.fractions[None, :, None, None].to(mix.dtype)
