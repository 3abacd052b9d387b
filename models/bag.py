"""Bags of models: several separators averaged with per-source weights (``htdemucs_ft``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .htdemucs import HTDemucs


class BagOfModels(nn.Module):
    """Models with the same sources, combined source by source with ``weights[model][source]``.

    ``segment`` overrides each model's segment (never lengthening an HT Demucs beyond the one
    it was trained on).
    """

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[Sequence[float]] | None = None,
                 segment: float | None = None):
        super().__init__()
        if not models:
            raise ValueError("a bag needs at least one model")
        first = models[0]
        for model in models:
            if (model.sources, model.samplerate, model.audio_channels) != (
                    first.sources, first.samplerate, first.audio_channels):
                raise ValueError("all models of a bag must share sources, sample rate and channels")
            if segment is not None and (not isinstance(model, HTDemucs) or segment <= model.segment):
                model.segment = segment
        if weights is None:
            weights = [[1.0] * len(first.sources) for _ in models]
        if len(weights) != len(models) or any(len(w) != len(first.sources) for w in weights):
            raise ValueError(f"bag weights must be {len(models)} lists of {len(first.sources)} numbers")
        self.models = nn.ModuleList(models)
        self.weights = [[float(w) for w in row] for row in weights]
        self.sources, self.samplerate = list(first.sources), first.samplerate
        self.audio_channels = first.audio_channels

    @property
    def segment(self) -> float:
        """The longest chunk every model of the bag can take."""
        return min(float(model.segment) for model in self.models)

    def source_weights(self) -> torch.Tensor:
        """``(models, sources)`` weights normalised so each source's weights sum to one."""
        weights = torch.tensor(self.weights)
        return weights / weights.sum(dim=0, keepdim=True)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` to ``(B, S, C, T)``: the weighted average of the models' outputs."""
        weights = self.source_weights().to(mix)
        out = 0
        for model, model_weights in zip(self.models, weights):
            out = out + model(mix) * model_weights[None, :, None, None]
        return out
