"""Offline separation of whole tracks: chunking, overlap-add, the shift trick, normalisation.

Chunks of one model segment are taken every ``(1 - overlap)`` segment, each padded to the
length the model runs at with the real audio around it (zeros only past the track's ends),
and cross-faded with triangular transition weights, as the reference ``apply_model`` does.
Progress goes to an optional callback (a fraction of the work done, rising to 1), so that the
library draws nothing: the command line turns it into a bar.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stemdeck.models.bag import BagOfModels
from stemdeck.models.bandwidth import share_high_band
from stemdeck.models.nets.htdemucs import HTDemucs
from stemdeck.models.precision import Network, prepare_network
from stemdeck.models.precision_choice import remembered_precision

Progress = Callable[[float], None]  # called with the fraction of the work done, rising to 1
MIN_SEGMENT_S = 0.1  # shorter chunks are all padding and overhead
StemsArray = TypeVar("StemsArray", torch.Tensor, np.ndarray)


@dataclass(frozen=True)
class Span:
    """``length`` samples of ``base`` from ``start``; padding reads real samples around it."""

    base: torch.Tensor  # (B, C, T)
    start: int
    length: int

    def sub(self, offset: int, length: int) -> Span:
        return Span(self.base, self.start + offset, min(length, self.length - offset))

    def padded(self, target_length: int) -> torch.Tensor:
        """Centred on the span, ``target_length`` long, zero only outside ``base``."""
        begin = self.start - (target_length - self.length) // 2
        end = begin + target_length
        total = self.base.shape[-1]
        window = self.base[..., max(0, begin) : min(total, end)]
        return F.pad(window, (max(0, begin) - begin, end - min(total, end)))


def transition_weights(segment_length: int, power: float = 1.0) -> torch.Tensor:
    """Triangular cross-fade weights, peak 1 in the middle, raised to ``power``."""
    half = segment_length // 2
    ramp = torch.cat([torch.arange(1, half + 1), torch.arange(segment_length - half, 0, -1)]).float()
    return (ramp / ramp.max()) ** power


def model_run_length(model: nn.Module, length: int, segment_s: float | None) -> int:
    """How many samples the model is fed for a chunk of ``length`` samples."""
    if isinstance(model, HTDemucs) and segment_s is not None:
        return int(segment_s * model.samplerate)
    valid_length = getattr(model, "valid_length", None)
    return valid_length(length) if valid_length else length


def center_trim(x: torch.Tensor, length: int) -> torch.Tensor:
    delta = x.shape[-1] - length
    return x[..., delta // 2 : delta // 2 + length]


@dataclass
class ChunkPlan:
    """Where the chunks of one pass go."""

    segment_length: int
    stride: int
    weights: torch.Tensor

    @classmethod
    def for_model(cls, model: nn.Module, segment_s: float, overlap: float, transition_power: float) -> ChunkPlan:
        segment_length = max(1, int(model.samplerate * segment_s))
        return cls(
            segment_length,
            max(1, int((1 - overlap) * segment_length)),
            transition_weights(segment_length, transition_power),
        )

    def offsets(self, length: int) -> range:
        return range(0, length, self.stride)


def apply_model(
    model: nn.Module,
    mix: torch.Tensor,
    *,
    overlap: float = 0.25,
    shifts: int = 0,
    segment: float | None = None,
    transition_power: float = 1.0,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
    seed: int | None = None,
    precision: str = "auto",
    backend: str = "auto",
    note: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Separate ``(B, C, T)`` into ``(B, S, C, T)`` with chunking, overlap-add and shifts.

    Mirrors the reference's numbers (with ``precision="fp32"``; ``"auto"`` uses bfloat16 where
    the hardware runs it natively, see :mod:`models.precision`). ``backend`` runs the network in
    torch or ONNX Runtime (:func:`models.precision.prepare_network`; ``note`` hears of a first
    export). ``shifts`` randomly offsets the input by up to half a second and averages (seeded by
    ``seed`` for repeatable runs). ``progress`` is called after every chunk with the fraction of
    the whole work done.
    """
    if transition_power < 1:
        raise ValueError("transition_power must be >= 1")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if shifts < 0:
        raise ValueError(f"shifts must be >= 0, got {shifts}")
    progress = _callback(progress)
    device = torch.device(device) if device is not None else mix.device
    if isinstance(model, BagOfModels):
        weights = model.source_weights()
        out = torch.zeros(mix.shape[0], len(model.sources), *mix.shape[1:])
        for index, (sub_model, sub_weights) in enumerate(zip(model.models, weights, strict=True)):
            stems = apply_model(
                sub_model,
                mix,
                overlap=overlap,
                shifts=shifts,
                segment=segment,
                transition_power=transition_power,
                device=device,
                progress=_part(progress, index, len(model.models)),
                seed=seed,
                precision=precision,
                backend=backend,
                note=note,
            )
            out += stems * sub_weights[None, :, None, None]
        return out
    model = model.to(device).eval()
    resolved = remembered_precision(model, precision, device, backend)  # auto: int8 where measured faster
    network = prepare_network(model, resolved, device, backend, segment, note)
    with torch.inference_mode():
        if shifts:
            return _apply_shifted(
                model, network, mix, shifts, random.Random(seed), overlap, segment, transition_power, device, progress
            )
        span = Span(mix, 0, mix.shape[-1])
        return _apply_chunked(model, network, span, overlap, segment, transition_power, device, progress)


def _apply_shifted(model, network, mix, shifts, rng, overlap, segment, transition_power, device, progress):
    max_shift = int(0.5 * model.samplerate)
    length = mix.shape[-1]
    padded = F.pad(mix, (max_shift, max_shift))
    out = 0
    for index in range(shifts):
        offset = rng.randint(0, max_shift)
        span = Span(padded, offset, length + max_shift - offset)
        part = _part(progress, index, shifts)
        stems = _apply_chunked(model, network, span, overlap, segment, transition_power, device, part)
        out = out + stems[..., max_shift - offset :]
    return out / shifts


def _apply_chunked(
    model: nn.Module,
    network: Network,
    span: Span,
    overlap: float,
    segment: float | None,
    transition_power: float,
    device: torch.device,
    progress: Progress | None,
) -> torch.Tensor:
    segment_s = check_segment(model, segment)
    plan = ChunkPlan.for_model(model, segment_s, overlap, transition_power)
    batch, channels = span.base.shape[:2]
    out = torch.zeros(batch, len(model.sources), channels, span.length)
    weight_sum = torch.zeros(span.length)
    chunks = len(plan.offsets(span.length))
    for done, (offset, stems) in enumerate(_run_chunks(model, network, span, plan, segment, device), 1):
        chunk_weights = plan.weights[: stems.shape[-1]]
        out[..., offset : offset + stems.shape[-1]].addcmul_(stems.cpu(), chunk_weights)
        weight_sum[offset : offset + stems.shape[-1]] += chunk_weights
        if progress is not None:
            progress(done / chunks)
    if progress is not None and chunks == 0:
        progress(1.0)
    return out.div_(weight_sum)


def check_segment(model: nn.Module, segment: float | None) -> float:
    """The chunk length in seconds: positive, finite, and no longer than an HT Demucs was trained on."""
    segment_s = float(segment if segment is not None else model.segment)
    if not math.isfinite(segment_s) or segment_s < MIN_SEGMENT_S:
        raise ValueError(f"segment must be at least {MIN_SEGMENT_S:g} s, got {segment}")
    if isinstance(model, HTDemucs) and model.use_train_segment and segment_s > float(model.segment):
        raise ValueError(
            f"segment {segment_s:g} s is longer than the {float(model.segment):g} s this "
            "HT Demucs was trained on; give a shorter one"
        )
    return segment_s


def _run_chunks(
    model: nn.Module, network: Network, span: Span, plan: ChunkPlan, segment: float | None, device: torch.device
) -> Iterator[tuple[int, torch.Tensor]]:
    for offset in plan.offsets(span.length):
        chunk = span.sub(offset, plan.segment_length)
        run_length = model_run_length(model, chunk.length, segment)
        stems = network(chunk.padded(run_length).to(device))
        yield offset, center_trim(stems, chunk.length).float()


def _callback(progress) -> Progress | None:
    if progress is None or progress is False:
        return None
    if not callable(progress):
        raise TypeError("progress must be a callable taking the fraction done, or None")
    return progress


def _part(progress: Progress | None, index: int, count: int) -> Progress | None:
    """The callback for part ``index`` of ``count`` equal parts of the work."""
    if progress is None:
        return None
    return lambda fraction: progress((index + fraction) / count)


# -- numpy API -----------------------------------------------------------------------------------


def separate(
    model: nn.Module,
    audio: np.ndarray,
    samplerate: int,
    *,
    overlap: float = 0.25,
    shifts: int = 0,
    segment: float | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    seed: int | None = None,
    precision: str = "auto",
    backend: str = "auto",
    normalise: bool = True,
    share_band: bool = True,
) -> dict[str, np.ndarray]:
    """Split ``audio`` ``(channels, frames)`` into stems, each ``(channels, frames)`` at ``samplerate``.

    Mono or stereo in any sample rate; the mixture is resampled to the model's rate (soxr) and
    the stems back, sharing the band above the model's Nyquist among them (models.bandwidth;
    ``share_band=False`` leaves it out). The input is normalised by the mono mix's mean and
    standard deviation, as the reference does, and the stems scaled back (``normalise=False``
    feeds it as training does); a silent, constant or one-frame input has deviation 0 (+1e-8).
    Non-finite samples (NaN, infinity) are treated as silence. ``progress`` is called with the
    fraction of the work done; ``precision`` and ``backend`` as :func:`apply_model` takes them.
    """
    progress = _callback(progress)
    audio = np.asarray(audio, dtype=np.float32)
    if not np.all(np.isfinite(audio)):
        audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
    if audio.ndim != 2:
        raise ValueError(f"audio must be (channels, frames), got shape {audio.shape}")
    channels, frames = audio.shape
    if channels not in (1, 2):
        raise ValueError(
            f"audio must be (channels, frames) with 1 or 2 channels, got shape "
            f"{audio.shape}; transpose (frames, channels) arrays, downmix others"
        )
    if frames == 0:
        if progress is not None:
            progress(1.0)
        return {name: np.zeros((channels, 0), np.float32) for name in model.sources}
    mix = torch.from_numpy(match_channels(resample(audio, samplerate, model.samplerate), model.audio_channels))
    mean, std = normalisation(mix.numpy()) if normalise else (0.0, 1.0)
    stems = apply_model(
        model,
        ((mix - mean) / std)[None],
        overlap=overlap,
        shifts=shifts,
        segment=segment,
        device=device,
        progress=progress,
        seed=seed,
        precision=precision,
        backend=backend,
    )[0]
    del mix  # long tracks: every copy of the whole track counts
    stems = scale_back(stems, mean, std)
    stems = _to_input_layout(stems.numpy(), model.samplerate, samplerate, channels, frames)
    if share_band:
        stems = share_high_band(audio, stems, samplerate, model.samplerate)
    return dict(zip(model.sources, stems, strict=True))


def _to_input_layout(stems: np.ndarray, model_rate: int, samplerate: int, channels: int, frames: int) -> np.ndarray:
    """``(S, C_model, T_model)`` to ``(S, channels, frames)`` at ``samplerate``, filled stem by stem."""
    out = np.empty((len(stems), channels, frames), np.float32)
    for index in range(len(stems)):
        out[index] = resample(match_channels(stems[index], channels), model_rate, samplerate, frames)
    return out


def scale_back(stems: StemsArray, mean: float, std: float) -> StemsArray:
    """``(S, C, T)`` stems of the normalised mix back to the mix's scale, in place: a tensor
    (offline) or an array (the file deck's windows).

    The mix's mean (a DC offset) is shared equally among the stems, so that they add back up to
    the mix. The reference adds all of it to every stem: four stems of a file with a DC offset
    then sum to four times that offset."""
    with torch.inference_mode():  # what the model returned is an inference tensor
        stems *= std
        stems += mean / len(stems)
    return stems


NORMALISATION_BLOCK_FRAMES = 1 << 16  # the mono sum in float64 a block at a time: 512 kB, not the track's length


def normalisation(mix: np.ndarray) -> tuple[float, float]:
    """Mean and deviation (+1e-8, as the reference) of the ``(C, T)`` mix's mono sum.

    Computed in float64, so loud float files do not overflow, block by block: the whole mono sum
    and its deviations were 420 MB of float64 for a 10-minute track, made in a deck's worker
    process as it started, before its first stems (0.4 s there; 0.05 s block by block). Fewer
    than two frames have no deviation: 0.
    """
    stats = MixStatistics()
    for start in range(0, mix.shape[-1], NORMALISATION_BLOCK_FRAMES):
        stats.add(mix[..., start : start + NORMALISATION_BLOCK_FRAMES])
    return stats.normalisation()


@dataclass
class MixStatistics:
    """Frames, mean and M2 of the mono mix, merged block by block in float64 (Chan et al.)."""

    frames: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, mix: np.ndarray) -> None:
        mono = mix.mean(axis=0, dtype=np.float64)
        if not mono.size:
            return
        mean = float(mono.mean())
        mono -= mean
        m2 = float(np.dot(mono, mono))
        total = self.frames + mono.size
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.frames * mono.size / total
        self.mean += delta * mono.size / total
        self.frames = total

    def normalisation(self) -> tuple[float, float]:
        """The mean and deviation (+1e-8, as the reference) of what was added."""
        if self.frames == 0:
            return 0.0, 1.0
        deviation = math.sqrt(self.m2 / (self.frames - 1)) if self.frames > 1 else 0.0
        return self.mean, deviation + 1e-8


def match_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """``(C, T)`` to ``channels`` channels: mono is duplicated, stereo averaged to mono."""
    if audio.shape[0] == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    if audio.shape[0] == 1:
        return np.repeat(audio, channels, axis=0)
    raise ValueError(f"cannot map {audio.shape[0]} channels to {channels}")


def resample(audio: np.ndarray, from_rate: int, to_rate: int, frames: int | None = None) -> np.ndarray:
    """``(C, T)`` at another rate (soxr HQ, delay-compensated), cut or zero-padded to ``frames``."""
    if from_rate != to_rate:
        import soxr

        audio = soxr.resample(np.ascontiguousarray(audio.T), from_rate, to_rate, quality="HQ").T
    if frames is not None:
        audio = audio[:, :frames] if audio.shape[1] >= frames else np.pad(audio, ((0, 0), (0, frames - audio.shape[1])))
    return np.ascontiguousarray(audio, dtype=np.float32)
