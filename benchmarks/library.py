"""Files per hour through the library queue: ``stemdeck separate DIR -r`` with ``--jobs 1`` and
``--jobs 2``, and on a local Ray cluster with 1 and 2 workers, side by side.

The files are short generated songs (44.1 kHz stereo); the model has the htdemucs architecture
with seeded random weights (the official weights cannot be downloaded here), saved as a
checkpoint that every worker loads. Each row is a fresh output folder, timed from the command's
start to its end, so worker start-up and model loading count (as they do for a user); the Ray
cluster is started once before its rows (its own start-up, ~15 s here, is not counted).

The machine's load average is printed before and after: on a shared machine the figures move
with the neighbours' work.

Every run writes float32 stems; the last column is the largest sample difference from the first
row's stems (the runs differ in torch threads per separation, which changes summation order).

Usage: python benchmarks/library.py [--files 4] [--seconds 8] [--rows jobs1,jobs2,ray1,ray2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import htdemucs_random  # noqa: E402

SAMPLERATE = 44100
ROWS = ("jobs1", "jobs2", "ray1", "ray2")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=4, help="songs in the library (default 4)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each song (default 8)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"which runs, from {','.join(ROWS)}")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    return parser


def write_library(folder: Path, files: int, seconds: float) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SAMPLERATE)) / SAMPLERATE
    for index in range(files):
        tone = 0.15 * np.sin(2 * np.pi * (220 + 20 * index) * t) + 0.2 * np.sin(2 * np.pi * 55 * t)
        noise = 0.05 * rng.standard_normal((2, t.size)) * (np.floor(t * 4) % 2 == 0)
        path = folder / f"album{index % 2}" / f"song{index}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), (tone + noise).T, SAMPLERATE, subtype="PCM_16")


def checkpoint(folder: Path) -> Path:
    from stemdeck.models import save_safetensors

    path = folder / "htdemucs-random.safetensors"
    save_safetensors(htdemucs_random(), path)
    return path


def run_row(row: str, library: Path, out: Path, model: Path) -> float:
    """Wall seconds of one ``stemdeck separate`` over the library."""
    from stemdeck.cli import main

    extra = ["--jobs", row[-1]] + (["--ray", "auto"] if row.startswith("ray") else [])
    start = time.perf_counter()
    code = main(["separate", str(library), "-r", "-o", str(out), "--model", str(model), "--bits", "32f", *extra])
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{row}: stemdeck separate failed (exit {code})")
    return elapsed


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    rows = [row for row in args.rows.split(",") if row]
    if unknown := [row for row in rows if row not in ROWS]:
        raise SystemExit(f"unknown rows {unknown}; choose from {','.join(ROWS)}")
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory(prefix="stemdeck-library-") as tmp:
        folder = Path(tmp)
        write_library(folder / "library", args.files, args.seconds)
        model = checkpoint(folder)
        for row in rows:
            if row.startswith("ray"):
                start_ray()
            results[row] = run_row(row, folder / "library", folder / f"out-{row}", model)
        differences = {row: max_difference(folder / f"out-{rows[0]}", folder / f"out-{row}") for row in rows}
    stop_ray()
    report(args, results, differences, load_before, os.getloadavg())


def max_difference(first: Path, other: Path) -> float:
    """The largest sample difference between two runs' stems (float32 files)."""
    worst = 0.0
    for path in sorted(first.rglob("*.wav")):
        a, _ = sf.read(str(path), dtype="float32")
        b, _ = sf.read(str(other / path.relative_to(first)), dtype="float32")
        worst = max(worst, float(np.abs(a - b).max()))
    return worst
    return 0


def start_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def stop_ray() -> None:
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


def report(args, results: dict[str, float], differences: dict[str, float], load_before, load_after) -> None:
    audio_s = args.files * args.seconds
    figures = {
        row: {
            "wall_s": round(wall, 1),
            "files_per_hour": round(args.files / wall * 3600),
            "x_realtime": round(audio_s / wall, 3),
            "max_difference": differences[row],
        }
        for row, wall in results.items()
    }
    summary = {
        "files": args.files,
        "seconds_each": args.seconds,
        "cores": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "rows": figures,
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{args.files} files x {args.seconds:g} s, htdemucs-sized random weights, {os.cpu_count()} cores")
    print(f"load average before {summary['load_before']}, after {summary['load_after']}")
    first = next(iter(figures), "")
    print(f"{'run':<8} {'wall s':>8} {'files/hour':>11} {'x realtime':>11} {'max diff vs ' + first:>18}")
    for row, figure in figures.items():
        print(
            f"{row:<8} {figure['wall_s']:>8.1f} {figure['files_per_hour']:>11} {figure['x_realtime']:>11.2f} "
            f"{figure['max_difference']:>18.2g}"
        )


if __name__ == "__main__":
    sys.exit(main())
