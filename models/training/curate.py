"""Dataset curation as the HT Demucs paper does it: drop mostly-silent stems, flag leaking ones.

1. Silence: a stem is cut in 1-second segments; a segment is silent when its RMS over both
   channels is below −40 dBFS. A track is kept only if each stem is non-silent ≥ 30 % of the time.
2. Cross-separation: a separator f splits each isolated stem x_i; with perfect labels and a
   perfect f, f(x_i)_j = x_i δ_ij. The leakage of stem i is the share of f(x_i)'s energy that
   lands outside source i, Σ_{j≠i} ‖f(x_i)_j‖² / Σ_j ‖f(x_i)_j‖². Above the threshold the stem is
   flagged (mislabelled, or bleeding another instrument). Nothing is ever deleted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SEGMENT_S = 1.0
SILENCE_DB = -40.0
MIN_ACTIVE_FRACTION = 0.30
LEAKAGE_THRESHOLD = 0.5


@dataclass
class StemReport:
    active_fraction: float  # share of 1-s segments at or above −40 dBFS RMS
    leakage: float | None = None  # share of the separator's output outside this source
    verdict: str = "kept"  # kept | dropped | flagged
    reason: str = ""


@dataclass
class TrackReport:
    track: str
    kept: bool
    stems: dict[str, StemReport] = field(default_factory=dict)


def active_fraction(
    stem: np.ndarray, samplerate: int, segment_s: float = SEGMENT_S, silence_db: float = SILENCE_DB
) -> float:
    """Share of ``segment_s`` segments whose RMS (dBFS, all channels) is at least ``silence_db``."""
    size = int(segment_s * samplerate)
    count = max(1, stem.shape[-1] // size)
    segments = (
        stem[..., : count * size].reshape(stem.shape[0], count, size) if stem.shape[-1] >= size else stem[..., None, :]
    )
    rms = np.sqrt(np.mean(segments.astype(np.float64) ** 2, axis=(0, 2)))
    db = 20 * np.log10(np.maximum(rms, 1e-12))
    return float(np.mean(db >= silence_db))


def leakage(separator, stem: np.ndarray, index: int, samplerate: int) -> float:
    from stemdeck.models.separate import separate

    outputs = separate(separator, stem, samplerate, precision="fp32")
    energy = np.array([np.sum(outputs[s].astype(np.float64) ** 2) for s in separator.sources])
    total = energy.sum()
    return float((total - energy[index]) / total) if total > 0 else 0.0


def curate(
    root: Path,
    separator=None,
    splits=("train", "test"),
    threshold: float = LEAKAGE_THRESHOLD,
    samplerate: int = 44100,
    sources: tuple[str, ...] = ("drums", "bass", "other", "vocals"),
) -> list[TrackReport]:
    from stemdeck.models.training.dataset import load_stems, track_folders

    reports = []
    for split in splits:
        if not (Path(root) / split).is_dir():
            continue
        for track in track_folders(root, split, sources):
            stems = load_stems(track, sources, samplerate)
            report = TrackReport(f"{split}/{track.name}", kept=True)
            for i, name in enumerate(sources):
                stem = StemReport(active_fraction(stems[i], samplerate))
                if stem.active_fraction < MIN_ACTIVE_FRACTION:
                    stem.verdict = "dropped"
                    stem.reason = (
                        f"non-silent {100 * stem.active_fraction:.0f} % of the time "
                        f"(< {100 * MIN_ACTIVE_FRACTION:.0f} %)"
                    )
                    report.kept = False
                elif separator is not None and name in separator.sources:
                    stem.leakage = leakage(separator, stems[i], list(separator.sources).index(name), samplerate)
                    if stem.leakage > threshold:
                        stem.verdict = "flagged"
                        stem.reason = f"{100 * stem.leakage:.0f} % of it separates into other sources"
                report.stems[name] = stem
            reports.append(report)
    return reports


def write_report(reports: list[TrackReport], path: Path) -> str:
    """JSON at ``path``; returns the readable table."""
    path.write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    lines = [f"{'track':<32} {'stem':<8} {'active':>7} {'leakage':>8}  verdict"]
    for report in reports:
        for name, stem in report.stems.items():
            leak = "-" if stem.leakage is None else f"{100 * stem.leakage:.0f} %"
            lines.append(
                f"{report.track:<32} {name:<8} {100 * stem.active_fraction:>6.0f}% {leak:>8}  "
                f"{stem.verdict}{': ' + stem.reason if stem.reason else ''}"
            )
    kept = sum(r.kept for r in reports)
    lines.append(
        f"{kept} of {len(reports)} tracks kept; "
        f"{sum(s.verdict == 'flagged' for r in reports for s in r.stems.values())} stems flagged"
    )
    return "\n".join(lines)
