"""Offline separation speed and memory: stemdeck against the reference ``demucs.apply_model``.

Both run the ``htdemucs`` architecture with the same random weights (the official ones cannot
be downloaded here), on the same generated song, with the same overlap, in the same run:

* seconds per 7.8 s segment (one forward, best of ``--repeats``) and its real-time factor;
* a whole track (``--track-seconds``) through each side's chunked ``apply_model``, with the SNR of
  our stems against the reference's float32 stems;
* peak RSS while separating a ``--rss-minutes`` track, each side in a fresh process.

Usage: python benchmarks/offline.py [--json] [--track-seconds 60] [--rss-minutes 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stemdeck.models import HTDemucs, apply_model, load_checkpoint, save_safetensors  # noqa: E402
from stemdeck.models.demo import demo_stems  # noqa: E402
from stemdeck.models.precision import autocast, prepare_model, resolve_precision  # noqa: E402

SEGMENT_S = 7.8
HTDEMUCS_KW = dict(
    sources=["drums", "bass", "other", "vocals"],
    channels=48,
    depth=4,
    dconv_mode=3,
    t_layers=5,
    bottom_channels=512,
    segment=7.8,
)
SIDES = ("reference", "ours-fp32", "ours-auto")


def build(side: str):
    """The model for ``side``; every side gets the same weights (seed 0)."""
    from demucs.htdemucs import HTDemucs as Reference

    torch.manual_seed(0)
    reference = Reference(**HTDEMUCS_KW).eval()
    if side == "reference":
        return reference
    ours = HTDemucs(**HTDEMUCS_KW).eval()
    ours.load_state_dict(reference.state_dict())
    return ours


def song(seconds: float) -> torch.Tensor:
    """A music-like test signal: the generated demo song, normalised as the reference API does."""
    mix = torch.from_numpy(sum(demo_stems(min(seconds, 30.0)).values()))
    reps = int(np.ceil(seconds / 30.0))
    mix = mix.repeat(1, reps)[:, : int(seconds * 44100)]
    mono = mix.mean(0)
    return ((mix - mono.mean()) / (mono.std() + 1e-8))[None]


def separate_with(side: str, model, mix: torch.Tensor) -> torch.Tensor:
    if side == "reference":
        from demucs.apply import apply_model as reference_apply

        return reference_apply(model, mix, shifts=0, overlap=0.25)
    return apply_model(model, mix, overlap=0.25, precision=side.split("-")[1])


def time_segment(side: str, model, repeats: int) -> float:
    """One forward on one segment, as each side's apply_model runs it."""
    mix = song(SEGMENT_S)
    device = torch.device("cpu")
    precision = "auto" if side == "ours-auto" else "fp32"
    if side != "reference":
        model = prepare_model(model, precision, device)
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        with torch.inference_mode(), autocast(precision, device):
            start = time.perf_counter()
            model(mix)
            times.append(time.perf_counter() - start)
    return min(times[1:])


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - estimate).pow(2).sum()))


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Unlike ru_maxrss it does not inherit the parent's peak
    through fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def rss_worker(side: str, minutes: float, weights: Path) -> None:
    """Separate a long track in this fresh process and report its peak RSS."""
    if side == "reference":
        model = build(side)
    else:
        model = load_checkpoint(weights)
    mix = song(minutes * 60)
    baseline_mb = peak_rss_mb()
    start = time.perf_counter()
    separate_with(side, model, mix)
    elapsed = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    print(json.dumps({"peak_rss_mb": peak_mb, "before_separation_mb": baseline_mb, "seconds": elapsed}))


def measure_rss(side: str, minutes: float, weights: Path) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--rss-worker", side, "--rss-minutes", str(minutes), "--weights", str(weights)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu")
    report = {
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "auto_precision": resolve_precision("auto", device),
        },
        "segment": {},
        "track": {"seconds": args.track_seconds},
        "rss": {"minutes": args.rss_minutes},
    }
    models = {side: build(side) for side in SIDES}
    for side in SIDES:
        seconds = time_segment(side, models[side], args.repeats)
        report["segment"][side] = {"seconds": seconds, "rtf": seconds / SEGMENT_S}
    mix = song(args.track_seconds)
    outputs = {}
    for side in SIDES:
        start = time.perf_counter()
        outputs[side] = separate_with(side, models[side], mix)
        elapsed = time.perf_counter() - start
        report["track"][side] = {"seconds": elapsed, "rtf": elapsed / args.track_seconds}
    for side in SIDES[1:]:
        report["track"][side]["snr_db_vs_reference"] = snr_db(outputs["reference"], outputs[side])
    if args.rss_minutes > 0:
        with tempfile.TemporaryDirectory() as folder:
            weights = Path(folder) / "htdemucs-random.safetensors"
            save_safetensors(models["ours-fp32"], weights)
            del models, outputs
            for side in SIDES:
                report["rss"][side] = measure_rss(side, args.rss_minutes, weights)
    ref_seg, ref_track = report["segment"]["reference"]["seconds"], report["track"]["reference"]["seconds"]
    report["speedup"] = {
        side: {
            "segment": ref_seg / report["segment"][side]["seconds"],
            "track": ref_track / report["track"][side]["seconds"],
        }
        for side in SIDES[1:]
    }
    return report


def print_table(report: dict) -> None:
    print(
        f"HT Demucs (htdemucs size, random weights), {report['machine']['cpu_threads']} threads, "
        f"torch {report['machine']['torch']}, auto precision = {report['machine']['auto_precision']}"
    )
    print(
        f"{'side':<12} {'s/segment':>10} {'RTF':>7} {'track s':>9} {'RTF':>7} {'speedup':>8} "
        f"{'SNR dB':>7} {'peak RSS MB':>12}"
    )
    for side in SIDES:
        seg, track = report["segment"][side], report["track"][side]
        speed = report["speedup"].get(side, {}).get("track", 1.0)
        snr = track.get("snr_db_vs_reference")
        rss = report["rss"].get(side, {}).get("peak_rss_mb")
        print(
            f"{side:<12} {seg['seconds']:>10.3f} {seg['rtf']:>7.3f} {track['seconds']:>9.2f} "
            f"{track['rtf']:>7.3f} {speed:>7.2f}x {'-' if snr is None else f'{snr:.1f}':>7} "
            f"{'-' if rss is None else f'{rss:.0f}':>12}"
        )
    print(
        f"segment = {SEGMENT_S} s; track = {report['track']['seconds']} s; "
        f"RSS over a {report['rss']['minutes']}-minute track, each side in its own process"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--track-seconds", type=float, default=60.0)
    parser.add_argument("--rss-minutes", type=float, default=10.0, help="0 skips the memory runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_worker:
        rss_worker(args.rss_worker, args.rss_minutes, args.weights)
        return 0
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
