"""Bags of models: several separators averaged with per-source weights (``htdemucs_ft``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from stemdeck.models.limits import MAX_BAG_MODELS, SEGMENT_RANGE_S, shown
from stemdeck.models.nets.htdemucs import HTDemucs


class BagOfModels(nn.Module):
    """Models with the same sources, combined source by source with ``weights[model][source]``.

    ``segment`` overrides each model's segment (never lengthening an HT Demucs beyond the one
    it was trained on).
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        weights: Sequence[Sequence[float]] | None = None,
        segment: float | None = None,
    ):
        super().__init__()
        if not 1 <= len(models) <= MAX_BAG_MODELS:
            raise ValueError(f"a bag needs 1 to {MAX_BAG_MODELS} models, not {len(models)}")
        _check_segment(segment)
        first = models[0]
        if weights is None:
            weights = [[1.0] * len(first.sources) for _ in models]
        self.weights = _checked_weights(weights, len(models), len(first.sources))
        for model in models:
            if (model.sources, model.samplerate, model.audio_channels) != (
                first.sources,
                first.samplerate,
                first.audio_channels,
            ):
                raise ValueError("all models of a bag must share sources, sample rate and channels")
            if segment is not None and (not isinstance(model, HTDemucs) or segment <= model.segment):
                model.segment = segment
        self.models = nn.ModuleList(models)
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
        for model, model_weights in zip(self.models, weights, strict=True):
            out = out + model(mix) * model_weights[None, :, None, None]
        return out


def models_of(model: nn.Module) -> list[nn.Module]:
    """A bag's models, or the model itself."""
    return list(model.models) if isinstance(model, BagOfModels) else [model]


def _check_segment(segment: Any) -> None:
    low, high = SEGMENT_RANGE_S
    if segment is not None and (
        not isinstance(segment, (int, float))
        or isinstance(segment, bool)
        or not math.isfinite(segment)
        or not low <= segment <= high
    ):
        raise ValueError(f"bag segment must be a number of seconds from {low:g} to {high:g}, not {shown(segment)}")


def _checked_weights(weights: Any, num_models: int, num_sources: int) -> list[list[float]]:
    """``num_models`` rows of ``num_sources`` finite weights >= 0, every source weighted by some model
    (a source whose weights sum to zero would divide by zero)."""
    shape_ok = (
        isinstance(weights, (list, tuple))
        and len(weights) == num_models
        and all(isinstance(row, (list, tuple)) and len(row) == num_sources for row in weights)
    )
    values_ok = shape_ok and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
        for row in weights
        for w in row
    )
    if not values_ok:
        raise ValueError(
            f"bag weights must be {num_models} lists of {num_sources} finite numbers >= 0, not {shown(weights)}"
        )
    if any(sum(row[source] for row in weights) <= 0 for source in range(num_sources)):
        raise ValueError("bag weights give some source a total weight of 0; every source needs a model")
    return [[float(w) for w in row] for row in weights]
