"""Model inference on one window, owned by the worker thread."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from stemdeck.engine.worker.windows import WindowPlan
from stemdeck.models.bag import BagOfModels
from stemdeck.models.bandwidth import share_high_band
from stemdeck.models.nets.htdemucs import HTDemucs
from stemdeck.models.precision import forward_context, prepare_model
from stemdeck.models.precision_choice import remembered_precision
from stemdeck.models.separate import resample


def _is_mono(window: np.ndarray) -> bool:
    return window.shape[0] == 2 and np.array_equal(window[0], window[1])


def _set_train_segment(model: nn.Module, pad_to_segment: bool) -> None:
    for module in model.modules():
        if isinstance(module, HTDemucs):
            module.use_train_segment = pad_to_segment


class WindowSeparator:
    """``(C, window)`` float32 in, ``(S, C, window)`` float32 out, on a private model copy.

    The model normalises each window itself, so no track-wide statistics are needed. Torch's
    thread count is the process's, set once at its entry point (:mod:`engine.runtime`).
    """

    def __init__(
        self,
        model: nn.Module,
        plan: WindowPlan,
        precision: str = "auto",
        device: str = "cpu",
        stream_rate: int | None = None,
    ):
        self.device = torch.device(device)
        self.precision = remembered_precision(model, precision, self.device)  # auto: int8 where measured faster
        stream_rate = int(stream_rate or model.samplerate)
        segment_frames = int(float(model.segment) * stream_rate)
        if plan.pad_to_segment and _has_htdemucs(model) and plan.window_frames > segment_frames:
            raise ValueError(
                f"window of {plan.window_frames} frames is longer than the model's "
                f"segment ({segment_frames}); shorten it or set pad_to_segment=False"
            )
        model = copy.deepcopy(model).to(self.device).eval()
        _set_train_segment(model, plan.pad_to_segment)
        self.model = prepare_model(model, self.precision, self.device)
        self.sources = list(model.sources)
        self.plan = plan
        self.model_rate = int(model.samplerate)
        # a resampled window may come out a frame longer than the segment it must fit in
        self.max_model_frames = int(float(model.segment) * model.samplerate) if plan.pad_to_segment else None
        self.stream_rate = int(stream_rate or model.samplerate)
        self.last_seconds = 0.0

    def __call__(self, window: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        frames, mixture = window.shape[-1], window
        if self.stream_rate != self.model_rate:
            # whole windows: no added delay, and the edges where the filter rings carry no weight
            window = resample(window, self.stream_rate, self.model_rate)
            if self.max_model_frames is not None:
                window = window[:, : self.max_model_frames]
        with torch.inference_mode(), forward_context(self.precision, self.device):
            mix = torch.from_numpy(window)[None].to(self.device)
            stems = self.model(mix)[0].float().cpu().numpy()
        if self.stream_rate != self.model_rate:
            stems = np.stack([resample(stem, self.model_rate, self.stream_rate, frames) for stem in stems])
            stems = share_high_band(mixture, stems, self.stream_rate, self.model_rate)
        if _is_mono(mixture) and stems.shape[1] == 2:
            # a mono song (duplicated) or a mono input: mono stems, as `separate` writes them; the
            # model's channels differ a little (-27 dB), and a mono file played back wider than it is
            stems[:] = stems.mean(axis=1, keepdims=True)
        self.last_seconds = time.perf_counter() - start
        return stems

    def separate_short(self, window: np.ndarray) -> np.ndarray:
        """Like a call, on a window shorter than the plan's, run at its own length (not padded
        to the training segment): the deck's quick first stems."""
        _set_train_segment(self.model, False)
        try:
            return self(window)
        finally:
            _set_train_segment(self.model, self.plan.pad_to_segment)

    def warm_up(self, runs: int = 1) -> float:
        """Run the model on silence; returns the slowest run in seconds."""
        silence = np.zeros((self.model_channels, self.plan.window_frames), np.float32)
        slowest = 0.0
        for _ in range(runs):
            self(silence)
            slowest = max(slowest, self.last_seconds)
        return slowest

    @property
    def model_channels(self) -> int:
        return int(getattr(self.model, "audio_channels", 2))


def _has_htdemucs(model: nn.Module) -> bool:
    if isinstance(model, BagOfModels):
        return any(isinstance(m, HTDemucs) for m in model.models)
    return isinstance(model, HTDemucs)
