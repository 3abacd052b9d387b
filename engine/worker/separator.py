"""Model inference on one window, owned by the worker thread."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from stemdeck.engine.worker.windows import WindowPlan
from stemdeck.models.bag import BagOfModels, models_of
from stemdeck.models.bandwidth import share_high_band
from stemdeck.models.nets.htdemucs import HTDemucs
from stemdeck.models.precision import (
    BACKENDS,
    EXPORTED_BACKENDS,
    Network,
    forward_context,
    prepare_model,
    prepare_network,
)
from stemdeck.models.precision_choice import remembered_precision
from stemdeck.models.separate import resample
from stemdeck.models.sharing import copy_sharing_weights


def _is_mono(window: np.ndarray) -> bool:
    return window.shape[0] == 2 and np.array_equal(window[0], window[1])


def _set_train_segment(model: nn.Module, pad_to_segment: bool) -> None:
    for module in model.modules():
        if isinstance(module, HTDemucs):
            module.use_train_segment = pad_to_segment


def _private_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """The separator's own modules (it sets their segment rule) over the model's weights where they
    stay on the CPU: a deep copy held htdemucs's 168 MB twice in a deck's separation process. For
    another device, a deep copy moved there, so that the caller's model stays where it is."""
    if device.type == "cpu":
        return copy_sharing_weights(model)
    return copy.deepcopy(model).to(device)


class WindowSeparator:
    """``(C, window)`` float32 in, ``(S, C, window)`` float32 out, on a private model copy.

    The model normalises each window itself, so no track-wide statistics are needed. Torch's
    thread count is the process's, set once at its entry point (:mod:`engine.runtime`).
    With ``backend`` "openvino" or "onnx", an exported network runs the windows padded to the
    training segment (:func:`exported_network`); ``ValueError`` says in one line where it cannot.
    """

    def __init__(
        self,
        model: nn.Module,
        plan: WindowPlan,
        precision: str = "auto",
        device: str = "cpu",
        stream_rate: int | None = None,
        backend: str = "torch",
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
        self.network = exported_network(model, plan, precision, self.device, backend)
        model = _private_copy(model, self.device).eval()
        _set_train_segment(model, plan.pad_to_segment)
        self.model = prepare_model(model, self.precision, self.device)
        self.sources = list(model.sources)
        self.plan = plan
        self.model_rate = int(model.samplerate)
        # a resampled window may come out a frame longer than the segment it must fit in
        self.max_model_frames = int(float(model.segment) * model.samplerate) if plan.pad_to_segment else None
        self.stream_rate = int(stream_rate or model.samplerate)
        self.last_seconds = 0.0
        self._short = False

    def __call__(self, window: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        frames, mixture = window.shape[-1], window
        if self.stream_rate != self.model_rate:
            # whole windows: no added delay, and the edges where the filter rings carry no weight
            window = resample(window, self.stream_rate, self.model_rate)
            if self.max_model_frames is not None:
                window = window[:, : self.max_model_frames]
        stems = self._separate(window)
        if self.stream_rate != self.model_rate:
            stems = np.stack([resample(stem, self.model_rate, self.stream_rate, frames) for stem in stems])
            stems = share_high_band(mixture, stems, self.stream_rate, self.model_rate)
        if _is_mono(mixture) and stems.shape[1] == 2:
            # a mono song (duplicated) or a mono input: mono stems, as `separate` writes them; the
            # model's channels differ a little (-27 dB), and a mono file played back wider than it is
            stems[:] = stems.mean(axis=1, keepdims=True)
        self.last_seconds = time.perf_counter() - start
        return stems

    def _separate(self, window: np.ndarray) -> np.ndarray:
        """``(S, C, n)`` stems of a model-rate window."""
        mix = torch.from_numpy(window)[None]
        if self.network is not None and not self._short:
            with torch.inference_mode():
                return self.network(mix)[0].numpy()
        with torch.inference_mode(), forward_context(self.precision, self.device):
            return self.model(mix.to(self.device))[0].float().cpu().numpy()

    def separate_short(self, window: np.ndarray) -> np.ndarray:
        """Like a call, on a window shorter than the plan's, run at its own length (not padded
        to the training segment) by the torch model: the deck's quick first stems."""
        _set_train_segment(self.model, False)
        self._short = True
        try:
            return self(window)
        finally:
            self._short = False
            _set_train_segment(self.model, self.plan.pad_to_segment)

    def describe(self) -> str:
        """What runs the windows, in words."""
        if self.network is not None:
            return self.network.describe()
        return f"torch ({self.precision})"

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


def exported_network(
    model: nn.Module, plan: WindowPlan, precision: str, device: torch.device, backend: str
) -> Network | None:
    """The exported network that runs ``plan``'s windows for ``backend``, or ``None`` where torch
    runs them: for torch, and for plans whose windows run at their own length (live input's
    balanced and low-latency presets), since the network runs one length, the training segment,
    as the torch model pads windows to it (``plan.pad_to_segment``: a deck's and the quality
    preset's). ``ValueError`` in one line where the backend cannot run at all."""
    if backend in EXPORTED_BACKENDS and not plan.pad_to_segment:
        return None
    return backend_network(model, precision, device, backend)


def backend_network(model: nn.Module, precision: str, device: torch.device, backend: str, note=None) -> Network | None:
    """``model``'s exported network for ``backend`` (exported and measured the first time, which
    ``note`` hears of), ``None`` for torch, or ``ValueError`` in one line where it cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    if backend not in EXPORTED_BACKENDS:
        return None
    models = models_of(model)
    if len(models) != 1:
        raise ValueError(f"--backend {backend}: it runs one model, not a bag of {len(models)}; use --backend torch")
    precision = remembered_precision(model, precision, device, backend)
    return prepare_network(models[0].eval(), precision, device, backend, None, note)


def _has_htdemucs(model: nn.Module) -> bool:
    if isinstance(model, BagOfModels):
        return any(isinstance(m, HTDemucs) for m in model.models)
    return isinstance(model, HTDemucs)
