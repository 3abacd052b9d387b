"""Multitrack datasets in the MUSDB18-HQ layout, random training segments, and their augmentations.

``ROOT/{train,test}/<track>/{mixture,drums,bass,other,vocals}.wav`` (plus guitar and piano
for 6-source sets). Every augmentation acts on the stems; the mixture is always their sum
afterwards, so a training pair is exact whatever was switched on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "test")


class DatasetError(ValueError):
    pass


def track_folders(root: Path, split: str, sources: tuple[str, ...]) -> list[Path]:
    """The track folders of ``split`` that have every source; a clear error when there are none."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DatasetError(
            f"{folder} does not exist; a dataset has train/ and test/ folders of tracks "
            "(MUSDB18-HQ layout), e.g. from `stemdeck dataset synth`"
        )
    tracks = sorted(p for p in folder.iterdir() if p.is_dir())
    complete = [t for t in tracks if all((t / f"{s}.wav").exists() for s in sources)]
    if not complete:
        raise DatasetError(f"no track in {folder} has all of {', '.join(f'{s}.wav' for s in sources)}")
    return complete


def read_stems(track: Path, sources: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """``(sources, channels, frames)`` float32 at the files' own rate, and that rate."""
    from stemdeck.models.audio import read_audio

    stems, rates = [], set()
    for source in sources:
        audio, rate = read_audio(track / f"{source}.wav")
        stems.append(audio)
        rates.add(rate)
    if len(rates) != 1:
        raise DatasetError(
            f"the stems of {track} differ in sample rate ({', '.join(map(str, sorted(rates)))} Hz); "
            f"re-export them together"
        )
    if len({s.shape[-1] for s in stems}) != 1 or len({s.shape[0] for s in stems}) != 1:
        raise DatasetError(f"the stems of {track} differ in length or channels; re-export them together")
    return np.stack(stems).astype(np.float32), rates.pop()


def load_stems(track: Path, sources: tuple[str, ...], samplerate: int) -> np.ndarray:
    """``(sources, channels, frames)`` float32, every stem resampled (soxr) to ``samplerate``."""
    from stemdeck.models.separate import resample

    stems, rate = read_stems(track, sources)
    if rate == samplerate:
        return stems
    return np.stack([resample(stem, rate, samplerate) for stem in stems])  # float32, as resample gives


@dataclass(frozen=True)
class Augment:
    """The HT Demucs training augmentations; each can be switched off."""

    shift_s: float = 0.5  # each stem starts up to this much later, independently
    channel_swap: bool = True
    sign_flip: bool = True
    gain_range: tuple[float, float] | None = (0.25, 1.25)
    remix: bool = True  # each source from a different track of the batch
    tempo_range: tuple[float, float] | None = None  # e.g. (0.88, 1.12): speed change by resampling


class SegmentSampler:
    """Random training segments, deterministic in (seed, step) so a resumed run sees the same data."""

    def __init__(
        self,
        tracks: list[np.ndarray],
        segment_frames: int,
        samplerate: int,
        augment: Augment = Augment(),
        seed: int = 0,
    ):
        self.tracks, self.segment_frames, self.samplerate = tracks, segment_frames, samplerate
        self.augment, self.seed = augment, seed
        self.shift_frames = int(augment.shift_s * samplerate)
        longest_need = segment_frames + self.shift_frames
        if max(t.shape[-1] for t in tracks) < longest_need:
            raise DatasetError(f"tracks are shorter than a training segment ({longest_need / samplerate:.1f} s)")

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """``(batch, sources, channels, frames)`` stems for training step ``step``."""
        rng = np.random.default_rng([self.seed, step])
        items = [self._segment(rng) for _ in range(batch_size)]
        stems = np.stack(items)
        stems = self._augment(stems, rng)
        return torch.from_numpy(np.ascontiguousarray(stems, dtype=np.float32))

    def _segment(self, rng: np.random.Generator) -> np.ndarray:
        need = self.segment_frames + self.shift_frames
        usable = [t for t in self.tracks if t.shape[-1] >= need]
        track = usable[rng.integers(len(usable))]
        start = rng.integers(track.shape[-1] - need + 1)
        window = track[..., start : start + need]
        if self.augment.tempo_range is not None:
            window = self._tempo(window, rng)
        offsets = (
            rng.integers(self.shift_frames + 1, size=window.shape[0])
            if self.shift_frames
            else np.zeros(window.shape[0], int)
        )
        return np.stack([window[s, :, o : o + self.segment_frames] for s, o in enumerate(offsets)])

    def _tempo(self, window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import soxr

        low, high = self.augment.tempo_range
        factor = rng.uniform(low, high)
        need = window.shape[-1]
        out_rate = self.samplerate / factor  # played back at samplerate: speed × factor
        stretched = np.stack([soxr.resample(stem.T, self.samplerate, out_rate).T for stem in window])
        if stretched.shape[-1] < need:
            stretched = np.pad(stretched, ((0, 0), (0, 0), (0, need - stretched.shape[-1])))
        return stretched[..., :need].astype(np.float32)

    def _augment(self, stems: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        batch, sources = stems.shape[:2]
        a = self.augment
        if a.remix and batch > 1:
            for s in range(sources):
                stems[:, s] = stems[rng.permutation(batch), s]
        if a.channel_swap and stems.shape[2] == 2:
            swap = rng.random((batch, sources)) < 0.5
            stems[swap] = stems[swap][:, ::-1]
        if a.sign_flip:
            stems *= np.where(rng.random((batch, sources, 1, 1)) < 0.5, -1.0, 1.0).astype(np.float32)
        if a.gain_range is not None:
            stems *= rng.uniform(*a.gain_range, size=(batch, sources, 1, 1)).astype(np.float32)
        return stems
