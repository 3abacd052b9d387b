"""SDR as the MDX challenge and demucs report it, per source and track, with the mixture baseline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SDR_DELTA = 1e-7  # keeps silent references finite, as the MDX definition does


def utterance_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """10·log10(‖s‖² / ‖s − ŝ‖²) over the whole track (all channels), in dB."""
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    signal = np.sum(reference**2) + SDR_DELTA
    error = np.sum((reference - estimate) ** 2) + SDR_DELTA
    return float(10.0 * np.log10(signal / error))


@dataclass
class Evaluation:
    sources: tuple[str, ...]
    tracks: dict[str, dict[str, float]] = field(default_factory=dict)  # track → source → SDR
    baseline: dict[str, dict[str, float]] = field(default_factory=dict)  # the mixture as every estimate
    museval_median: dict[str, float] | None = None  # BSSEval v4 median SDR, when museval is installed

    def average(self, table: dict | None = None) -> dict[str, float]:
        table = self.tracks if table is None else table
        per_source = {s: float(np.mean([t[s] for t in table.values()])) for s in self.sources}
        per_source["mean"] = float(np.mean([per_source[s] for s in self.sources]))
        return per_source

    def as_dict(self) -> dict:
        return {
            "sources": list(self.sources),
            "sdr": self.average(),
            "mixture_baseline": self.average(self.baseline),
            "tracks": self.tracks,
            "museval_median_sdr": self.museval_median,
        }

    def table(self) -> str:
        sdr, base = self.average(), self.average(self.baseline)
        names = [*self.sources, "mean"]
        lines = [
            "| | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
            "| model | " + " | ".join(f"{sdr[n]:.2f}" for n in names) + " |",
            "| mixture baseline | " + " | ".join(f"{base[n]:.2f}" for n in names) + " |",
            "| improvement | " + " | ".join(f"{sdr[n] - base[n]:+.2f}" for n in names) + " |",
        ]
        if self.museval_median:
            lines.append(
                "| BSSEval v4 median | "
                + " | ".join(f"{self.museval_median.get(n, float('nan')):.2f}" for n in names)
                + " |"
            )
        return "\n".join(lines)


def evaluate(
    model,
    root: Path,
    split: str = "test",
    *,
    overlap: float = 0.25,
    precision: str = "auto",
    with_museval: bool = True,
    progress: bool = False,
    max_seconds: float | None = None,
    device=None,
) -> Evaluation:
    """Separate every track of ``root/split`` (its first ``max_seconds``, if given) and score each
    source against its stem."""
    from stemdeck.models.separate import separate
    from stemdeck.models.training.dataset import read_stems, track_folders

    sources = tuple(model.sources)
    result = Evaluation(sources)
    museval_rows = []
    for track in track_folders(root, split, sources):
        stems, rate = read_stems(track, sources)  # scored at the files' rate, whatever the model's
        if max_seconds:
            stems = stems[..., : int(max_seconds * rate)]
        mixture = stems.sum(axis=0)
        separated = separate(
            model,
            mixture,
            rate,
            overlap=overlap,
            precision=precision,
            progress=progress,
            device=None if device is None else str(device),
            normalise=False,
        )
        estimate = np.stack([separated[s] for s in sources])
        result.tracks[track.name] = {s: utterance_sdr(stems[i], estimate[i]) for i, s in enumerate(sources)}
        result.baseline[track.name] = {s: utterance_sdr(stems[i], mixture) for i, s in enumerate(sources)}
        if with_museval:
            museval_rows.append(_museval(stems, estimate, rate))
    if with_museval and museval_rows and museval_rows[0] is not None:
        medians = {
            s: float(np.nanmedian(np.concatenate([row[i] for row in museval_rows]))) for i, s in enumerate(sources)
        }
        medians["mean"] = float(np.mean(list(medians.values())))
        result.museval_median = medians
    return result


def _museval(stems: np.ndarray, estimate: np.ndarray, samplerate: int):
    """Per-source framewise SDR from BSSEval v4, or None without museval."""
    try:
        import museval
    except ImportError:
        return None
    sdr, *_ = museval.evaluate(stems.transpose(0, 2, 1), estimate.transpose(0, 2, 1), win=samplerate, hop=samplerate)
    return sdr
