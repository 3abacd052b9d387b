"""Offline separation of a track that never sits in memory whole.

The same numbers as :func:`models.separate.separate`, computed block by block, so that the
memory a separation needs does not grow with the song's length:

1. a first pass reads the track, resamples it to the model's rate (soxr's stream) and takes the
   mono mix's mean and deviation (the reference's track-wide normalisation);
2. a second pass reads it again: each chunk of the overlap-add plan runs as soon as the audio
   it covers (with its padding) has arrived, and the stems before the next chunk's start are
   final; they are scaled back, resampled to the track's rate and given their share of the
   band above the model's Nyquist (:class:`models.bandwidth.HighBandStream`), then handed out.

A source is anything with ``samplerate``, ``channels``, ``frames`` and ``blocks()`` (consecutive
``(channels, n)`` float32 blocks, finite): :class:`ArraySource` for arrays,
:class:`models.audio.AudioFile` for files.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from stemdeck.models.bag import BagOfModels, models_of
from stemdeck.models.bandwidth import HighBandStream
from stemdeck.models.nets.inference_paths import allow_memory_for_speed
from stemdeck.models.precision import EXPORTED_BACKENDS, Network, prepare_network
from stemdeck.models.precision_choice import remembered_precision
from stemdeck.models.separate import (
    ChunkPlan,
    MixStatistics,
    Progress,
    _callback,
    center_trim,
    check_segment,
    match_channels,
    model_run_length,
    scale_back,
)

BLOCK_FRAMES = 1 << 16


class Source(Protocol):
    samplerate: int
    channels: int
    frames: int

    def blocks(self) -> Iterator[np.ndarray]: ...


@dataclass(frozen=True)
class ArraySource:
    """A ``(channels, frames)`` array as a source, read ``block_frames`` at a time."""

    audio: np.ndarray
    samplerate: int
    block_frames: int = BLOCK_FRAMES

    @property
    def channels(self) -> int:
        return self.audio.shape[0]

    @property
    def frames(self) -> int:
        return self.audio.shape[1]

    def blocks(self) -> Iterator[np.ndarray]:
        for start in range(0, self.frames, self.block_frames):
            block = np.asarray(self.audio[:, start : start + self.block_frames], np.float32)
            yield np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass(frozen=True)
class Settings:
    """What :func:`separate_stream` takes from :func:`models.separate.separate`'s keywords."""

    overlap: float = 0.25
    shifts: int = 0
    segment: float | None = None
    device: str | None = None
    seed: int | None = None
    precision: str = "auto"
    normalise: bool = True
    share_band: bool = True
    backend: str = "auto"  # models.precision.BACKENDS
    note: Callable[[str], None] | None = None  # hears of a first ONNX export (and, verbose, the backend)
    verbose: bool = False


MEMORY_MODES = ("low", "speed")  # stemdeck separate --memory: see apply_memory_mode
M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = -3, -1  # glibc's mallopt parameters
MMAP_THRESHOLD_BYTES = 8 << 20  # blocks this large and larger are mapped, and returned when freed
EXPORTED_MMAP_THRESHOLD_BYTES = 2 << 20  # the same where ONNX Runtime or OpenVINO holds the activations


def return_freed_memory_early(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Keep glibc's malloc from holding freed model activations in its heaps.

    glibc raises its mmap threshold (up to 32 MB) each time a large block is freed, after which
    such blocks come from heaps that keep their pages: with the model's activations and the
    stream's blocks interleaved, an htdemucs separation then peaks far above what it holds. A
    fixed threshold returns large blocks at once, at the price of page faults when they are
    mapped again. `stemdeck separate` of a 1-minute 48 kHz song with htdemucs-sized weights on 2
    cores, peak RSS and wall time by threshold (one fresh process each, two runs): 4 MB 841-856
    MB in 59-61 s, **8 MB 875-880 MB in 48-54 s**, 12 MB 900-916 MB in 49 s, 16 MB 950-992 MB in
    43-46 s, glibc's own 1017 MB in 38 s. 8 MB keeps the 1 GB of issue 13 with a margin of
    more than 100 MB for most of the speed. Returns whether it applied (glibc only; elsewhere
    nothing changes).

    An exported network (``--backend openvino`` or ``onnx``) keeps its activations in its
    runtime's own buffers, allocated once, so only the stream's and the iSTFT's blocks (0.5 to 8
    MB) come and go, and under 8 MB they leave holes in the heap: 56-72 MB of it free by the
    end of a 2-minute song. With OpenVINO, a 2-minute 48 kHz song, two runs each: 953-954 MB in
    21.0-22.1 s at 2 MB, against 976-977 MB in 19.8-21.0 s at 8 MB (1 MB took 6 MB more off
    than 2 before the stream's tail went in blocks). 2 MB buys margin under 1 GB for about 5 %.

    The heap's top is trimmed at the same size: a block over the threshold could otherwise come
    from free space there, which glibc keeps up to twice the largest threshold it had reached
    (up to 64 MB) before the fixed one was set, and stay in the heap when freed.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes) and libc.mallopt(M_TRIM_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):
        return False


def apply_memory_mode(mode: str, backend: str = "torch") -> str:
    """This process's malloc policy for ``stemdeck separate --memory``; what it is, in words.

    ``"low"`` returns freed activations at once (:func:`return_freed_memory_early`; blocks from
    2 MB where ``backend`` is an exported network's, else from 8 MB), and the paths that hold
    memory for speed stand aside (Winograd's convs): htdemucs peaks under 1 GB however long the
    song. ``"speed"`` leaves glibc's own policy, which keeps them for the next chunk: no page
    faults to map them again, so less time on 2 cores, at about 170 MB more (a 10-minute 48 kHz
    song with htdemucs: 104 s at 983 MB against 138 s at 809 MB; ``benchmarks/separate_memory.py
    --memory low,speed``, stop 32). A process-wide setting: one
    mode per process (the threshold follows the backend once it is known)."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {mode!r}; choose {', '.join(MEMORY_MODES)}")
    allow_memory_for_speed(mode == "speed")
    if mode == "speed":
        return "speed (malloc keeps freed model memory for reuse)"
    threshold_bytes = EXPORTED_MMAP_THRESHOLD_BYTES if backend in EXPORTED_BACKENDS else MMAP_THRESHOLD_BYTES
    if return_freed_memory_early(threshold_bytes):
        return f"low (blocks of {threshold_bytes >> 20} MB and more go back to the system when freed)"
    return "low asked, but this C library has no mallopt: its own policy"


# -- blocks of frames --------------------------------------------------------------------------------


class FrameQueue:
    """Consecutive ``(..., n)`` blocks in, any number of frames out."""

    def __init__(self) -> None:
        self._blocks: deque[np.ndarray] = deque()
        self.frames = 0

    def push(self, block: np.ndarray) -> None:
        if block.shape[-1]:
            self._blocks.append(block)
            self.frames += block.shape[-1]

    def pop(self, frames: int) -> np.ndarray:
        """The next ``frames`` frames (fewer only if fewer are queued)."""
        parts, wanted = [], min(frames, self.frames)
        while wanted > 0:
            block = self._blocks.popleft()
            if block.shape[-1] > wanted:
                self._blocks.appendleft(block[..., wanted:])
                block = block[..., :wanted]
            parts.append(block)
            wanted -= block.shape[-1]
            self.frames -= block.shape[-1]
        return np.concatenate(parts, axis=-1) if len(parts) != 1 else parts[0]


class Resampler:
    """soxr HQ as a stream over ``(channels, n)`` blocks: the same samples as the one-shot
    ``models.separate.resample`` (delay-compensated), cut or zero-padded to ``frames``."""

    def __init__(self, from_rate: int, to_rate: int, channels: int, frames: int | None = None):
        import soxr

        self.frames, self.done = frames, 0
        self._stream = (
            None if from_rate == to_rate else soxr.ResampleStream(from_rate, to_rate, channels, "float32", "HQ")
        )

    def feed(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is not None:
            block = self._stream.resample_chunk(np.ascontiguousarray(block.T, np.float32), last=last).T
        if self.frames is not None:
            block = block[:, : self.frames - self.done]
        if last and self.frames is not None and self.done + block.shape[1] < self.frames:
            block = np.pad(block, ((0, 0), (0, self.frames - self.done - block.shape[1])))
        self.done += block.shape[1]
        return np.ascontiguousarray(block, np.float32)


def model_rate_blocks(source: Source, model_rate: int, model_channels: int) -> Iterator[np.ndarray]:
    """The source at the model's rate and channel count, ``(C_model, n)`` float32 blocks."""
    resampler = Resampler(source.samplerate, model_rate, source.channels)
    for block in source.blocks():
        yield match_channels(resampler.feed(block), model_channels)
    yield match_channels(resampler.feed(np.zeros((source.channels, 0), np.float32), last=True), model_channels)


def mix_statistics(source: Source, model_rate: int, model_channels: int) -> MixStatistics:
    """The first pass: the model-rate mix's length and mono statistics."""
    stats = MixStatistics()
    for block in model_rate_blocks(source, model_rate, model_channels):
        stats.add(block)
    return stats


# -- the chunks -----------------------------------------------------------------------------------------


class MixWindow:
    """The part of the normalised model-rate mix that chunks still need, ``(1, C, n)``."""

    def __init__(self, frames: int):
        self.frames = frames  # the whole mix's length
        self.start = 0
        self._data: torch.Tensor | None = None

    @property
    def end(self) -> int:
        return self.start + (0 if self._data is None else self._data.shape[-1])

    def append(self, block: torch.Tensor) -> None:
        self._data = block if self._data is None else torch.cat([self._data, block], dim=-1)

    def read(self, begin: int, end: int) -> torch.Tensor:
        """Frames ``begin`` to ``end`` of the mix, zero outside it (as ``Span.padded``)."""
        low, high = max(begin, 0), min(end, self.frames)
        window = self._data[..., low - self.start : high - self.start]
        return torch.nn.functional.pad(window, (low - begin, end - high))

    def trim(self, start: int) -> None:
        start = min(start, self.end)
        if start > self.start and self._data is not None:
            self._data = self._data[..., start - self.start :].clone()
            self.start = start


@dataclass
class Lane:
    """One pass of one model over the mix, led by ``lead`` zeros (a shift), as overlap-add.

    Chunks run in order; after each, the stems before the next chunk's start are final and
    queue up in ``ready`` (``(S, C, n)``, the lead dropped, in the mix's frames).
    """

    model: nn.Module
    plan: ChunkPlan
    segment: float | None
    lead: int
    length: int  # the led mix: lead + mix frames
    network: Network  # runs the model's chunks
    next_chunk: int = 0
    ready: FrameQueue = field(default_factory=FrameQueue)
    _sum: torch.Tensor | None = None  # (1, S, C, n) weighted stems from _sum_start
    _weights: torch.Tensor | None = None
    _sum_start: int = 0
    _first_needed: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        begins = [self.chunk_bounds(index)[3] for index in range(len(self.offsets))]
        # the last chunks are shorter, padded more: one may read further back than those before it
        self._first_needed = list(np.minimum.accumulate(begins[::-1])[::-1]) if begins else []

    @property
    def offsets(self) -> range:
        return self.plan.offsets(self.length)

    def chunk_bounds(self, index: int) -> tuple[int, int, int, int]:
        """Offset, length, run length, and the first mix frame the chunk reads (padding included)."""
        offset = self.offsets[index]
        length = min(self.plan.segment_length, self.length - offset)
        run_length = model_run_length(self.model, length, self.segment)
        return offset, length, run_length, offset - (run_length - length) // 2 - self.lead

    def wants(self, mix_frames: int) -> int:
        """The last mix frame (exclusive) the next chunk reads, capped at the mix's end."""
        _, _, run_length, begin = self.chunk_bounds(self.next_chunk)
        return min(begin + run_length, mix_frames)

    def first_needed(self) -> int:
        """The first mix frame any chunk still to run reads."""
        return int(self._first_needed[self.next_chunk]) if not self.finished else self.length

    @property
    def finished(self) -> bool:
        return self.next_chunk >= len(self.offsets)

    def run_next(self, window: MixWindow, device: torch.device) -> None:
        offset, length, run_length, begin = self.chunk_bounds(self.next_chunk)
        chunk = window.read(begin, begin + run_length).to(device)
        with torch.inference_mode():
            stems = center_trim(self.network(chunk), length).float().cpu()
        self._accumulate(offset, stems)
        self.next_chunk += 1
        self._release(self.offsets[self.next_chunk] if not self.finished else self.length)

    def _accumulate(self, offset: int, stems: torch.Tensor) -> None:
        end = offset + stems.shape[-1]
        if self._sum is None:
            self._sum = torch.zeros(*stems.shape[:-1], 0)
            self._weights, self._sum_start = torch.zeros(0), offset
        grow = end - self._sum_start - self._sum.shape[-1]
        if grow > 0:
            self._sum = torch.cat([self._sum, torch.zeros(*self._sum.shape[:-1], grow)], dim=-1)
            self._weights = torch.cat([self._weights, torch.zeros(grow)])
        chunk_weights = self.plan.weights[: stems.shape[-1]]
        where = slice(offset - self._sum_start, end - self._sum_start)
        self._sum[..., where].addcmul_(stems, chunk_weights)
        self._weights[where] += chunk_weights

    def _release(self, final: int) -> None:
        """Hand out the stems before ``final`` (led frames): no later chunk reaches them."""
        count = final - self._sum_start
        if count <= 0:
            return
        done = self._sum[..., :count].div_(self._weights[:count])[0]
        skip = max(0, self.lead - self._sum_start)
        self.ready.push(done[..., skip:].numpy())
        self._sum, self._weights = self._sum[..., count:].clone(), self._weights[count:].clone()
        self._sum_start = final


def make_lanes(
    model: nn.Module, mix_frames: int, settings: Settings, device: torch.device
) -> tuple[list[list[Lane]], torch.Tensor | None]:
    """Lanes by model (one per shift), and the bag's ``(models, sources)`` weights, if a bag."""
    models = models_of(model)
    bag_weights = model.source_weights() if isinstance(model, BagOfModels) else None
    lanes = []
    for sub_model in models:
        segment_s = check_segment(sub_model, settings.segment)
        plan = ChunkPlan.for_model(sub_model, segment_s, settings.overlap, 1.0)
        network = _network(sub_model.to(device).eval(), settings, device)
        lanes.append(
            [
                Lane(sub_model, plan, settings.segment, lead, lead + mix_frames, network)
                for lead in shift_leads(sub_model, settings.shifts, settings.seed)
            ]
        )
    return lanes, bag_weights


def _network(model: nn.Module, settings: Settings, device: torch.device) -> Network:
    precision = remembered_precision(model, settings.precision, device, settings.backend)
    network = prepare_network(model, precision, device, settings.backend, settings.segment, settings.note)
    if settings.verbose and settings.note is not None:
        settings.note(f"network: {network.describe()}")
    return network


def shift_leads(model: nn.Module, shifts: int, seed: int | None) -> list[int]:
    """How many zeros lead each shifted pass (``apply_model``'s random offsets, same seed)."""
    if not shifts:
        return [0]
    max_shift = int(0.5 * model.samplerate)
    rng = random.Random(seed)
    return [max_shift - rng.randint(0, max_shift) for _ in range(shifts)]


def combine(lanes: list[list[Lane]], bag_weights: torch.Tensor | None, frames: int) -> torch.Tensor:
    """The next ``frames`` of every lane, averaged over shifts and weighted over the bag's models,
    in ``apply_model``'s order of operations."""
    out = None
    for index, model_lanes in enumerate(lanes):
        total = 0
        for lane in model_lanes:
            total = total + torch.from_numpy(lane.ready.pop(frames))
        if len(model_lanes) > 1:
            total = total / len(model_lanes)
        if bag_weights is None:
            return total
        if out is None:
            out = torch.zeros_like(total)
        out += total * bag_weights[index][:, None, None]
    return out


# -- the whole pipeline ----------------------------------------------------------------------------------


def separate_stream(
    model: nn.Module, source: Source, settings: Settings = Settings(), progress: Progress | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Stems of ``source`` in consecutive blocks, ``{name: (channels, n)}`` at its rate.

    Equal to :func:`models.separate.separate` of the whole track within float rounding; the
    memory it needs depends on the model and its segment, not on the track's length.
    """
    progress = _callback(progress)
    _check_settings(settings)
    if source.channels not in (1, 2):
        raise ValueError(f"audio must have 1 or 2 channels, got {source.channels}")
    if source.frames == 0:
        if progress is not None:
            progress(1.0)
        yield {name: np.zeros((source.channels, 0), np.float32) for name in model.sources}
        return
    device = torch.device(settings.device) if settings.device is not None else torch.device("cpu")
    stats = mix_statistics(source, model.samplerate, model.audio_channels)
    mean, std = stats.normalisation() if settings.normalise else (0.0, 1.0)
    lanes, bag_weights = make_lanes(model, stats.frames, settings, device)
    chunks = ChunkCounter(sum(len(lane.offsets) for model_lanes in lanes for lane in model_lanes), progress)
    model_stems = _model_rate_stems(source, model, stats.frames, (mean, std), lanes, bag_weights, device, chunks)
    yield from _to_source_rate(model_stems, source, model, settings.share_band)


@dataclass
class ChunkCounter:
    """Calls ``progress`` with the fraction of all lanes' chunks done, after each one."""

    total: int
    progress: Progress | None
    done: int = 0

    def __call__(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done / self.total)


def _check_settings(settings: Settings) -> None:
    if not 0 <= settings.overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {settings.overlap}")
    if settings.shifts < 0:
        raise ValueError(f"shifts must be >= 0, got {settings.shifts}")


def _model_rate_stems(source, model, mix_frames, normalisation, lanes, bag_weights, device, chunk_done):
    """The second pass: ``(S, C_model, n)`` stems at the model's rate, scaled back, as they become final."""
    mean, std = normalisation
    window = MixWindow(mix_frames)
    every_lane = [lane for model_lanes in lanes for lane in model_lanes]
    for block in model_rate_blocks(source, model.samplerate, model.audio_channels):
        if block.shape[1]:
            window.append(((torch.from_numpy(block) - mean) / std)[None])
        for lane in every_lane:
            while not lane.finished and window.end >= lane.wants(mix_frames):
                lane.run_next(window, device)
                chunk_done()
        window.trim(min(lane.first_needed() for lane in every_lane))
        ready = min(lane.ready.frames for lane in every_lane)
        while ready:  # in blocks: the resampler's, the band share's and the writer's copies stay small
            frames = min(ready, BLOCK_FRAMES)
            with torch.inference_mode():
                yield scale_back(combine(lanes, bag_weights, frames), mean, std).numpy()
            ready -= frames


def _to_source_rate(model_stems, source, model, share_band: bool):
    """Model-rate stems to the source's rate and channels, with their share of the high band."""
    sources, channels = len(model.sources), source.channels
    resampler = Resampler(model.samplerate, source.samplerate, sources * channels, source.frames)
    band = HighBandStream(source.samplerate, model.samplerate, source.frames, enabled=share_band)
    mixture = _Frames(source.blocks())
    for stems in model_stems:
        block = np.stack([match_channels(stem, channels) for stem in stems]).reshape(sources * channels, -1)
        yield from _shared(band, mixture, resampler.feed(block), model.sources)
    rest = resampler.feed(np.zeros((sources * channels, 0), np.float32), last=True)
    yield from _shared(band, mixture, rest, model.sources)


def _shared(band: HighBandStream, mixture: _Frames, stems: np.ndarray, names: list[str]):
    """``(S * C, n)`` stems at the source's rate, with their share of the band, as blocks by name."""
    if not stems.shape[1]:
        return
    stems = stems.reshape(len(names), -1, stems.shape[1])
    final = band.feed(mixture.take(stems.shape[-1]) if band.active else None, stems)
    if final.shape[-1]:
        yield dict(zip(names, final, strict=True))


class _Frames:
    """A block iterator served ``n`` frames at a time."""

    def __init__(self, blocks: Iterator[np.ndarray]):
        self._blocks, self._queue = blocks, FrameQueue()

    def take(self, frames: int) -> np.ndarray:
        while self._queue.frames < frames:
            block = next(self._blocks, None)
            if block is None:
                break
            self._queue.push(block)
        return self._queue.pop(frames)
