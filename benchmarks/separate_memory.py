"""Peak memory of ``stemdeck separate`` by song length: the whole-track path against block by block.

Each run is a fresh process separating a synthetic 48 kHz stereo song (written 10 s at a time)
and reporting its peak RSS (VmHWM, which a child does not inherit from its parent):

* ``new``: the command line as it is, reading, separating and writing block by block
  (``models.streaming``);
* ``old``: the whole-track path the command used before (``read_audio``, ``models.separate``
  on the whole array, ``write_stems_atomically``), still callable, so measured in the same run.

Models: ``tiny`` (the bundled 22.05 kHz one), ``htdemucs`` (the htdemucs architecture with
random weights, as ``benchmarks/offline.py`` builds it; the official weights cannot be
downloaded here), ``passthrough`` (no inference: the reading, resampling, band split and writing
alone). The old path is run only up to ``--old-max-minutes``: beyond, its arrays grow past what
a shared machine should be asked for (about 2.3 GB per minute of 48 kHz stereo with tiny),
and the table says "not run".

``--backend`` is passed to the new path's command line (``openvino``, say; an ONNX Runtime or
OpenVINO export is made on first use, into ``$STEMDECK_ONNX_DIR`` if set). ``--memory low,speed``
runs the new path once per ``stemdeck separate --memory`` mode, side by side (columns ``new`` for
low, ``new-speed``).

Usage: python benchmarks/separate_memory.py [--rows tiny:3,tiny:10,htdemucs:10,passthrough:60]
       [--old-max-minutes 10] [--backend auto] [--memory low,speed] [--json]
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
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SAMPLERATE = 48000
DEFAULT_ROWS = "tiny:3,tiny:10,tiny:60,htdemucs:3,htdemucs:10,htdemucs:60"


def write_song(path: Path, minutes: float) -> None:
    """Tones, a bass and gated noise, 48 kHz stereo 16-bit, written 10 s at a time."""
    block, total = 10 * SAMPLERATE, int(minutes * 60 * SAMPLERATE)
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", SAMPLERATE, 2, "PCM_16") as out:
        for start in range(0, total, block):
            t = (start + np.arange(min(block, total - start))) / SAMPLERATE
            gate = np.floor(t * 4) % 2 == 0
            tone = 0.15 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 55 * t)
            left = tone + 0.05 * rng.standard_normal(t.size) * gate
            out.write(np.stack([left, 0.8 * tone + 0.05 * rng.standard_normal(t.size) * gate], axis=1))


def htdemucs_checkpoint(folder: Path) -> Path:
    import torch
    from _common import HTDEMUCS_KW  # the released htdemucs's architecture

    from stemdeck.models import HTDemucs, save_safetensors

    torch.manual_seed(0)
    path = folder / "htdemucs-random.safetensors"
    save_safetensors(HTDemucs(**HTDEMUCS_KW).eval(), path)
    return path


def worker(path: str, model: str, song: Path, out: Path, backend: str = "auto", memory: str = "low") -> None:
    """One separation in this fresh process; prints its peak RSS and seconds as JSON."""
    start = time.perf_counter()
    if path == "new":
        from stemdeck.cli import main

        options = ["--force", "--backend", backend, "--memory", memory]
        code = main(["separate", str(song), "-o", str(out), "--model", model, *options])
        if code:
            raise SystemExit(code)
    else:
        from stemdeck.models.audio import OutputFormat, read_audio, write_stems_atomically
        from stemdeck.models.cli import load_for_command
        from stemdeck.models.separate import separate

        loaded, _ = load_for_command(model)
        audio, samplerate = read_audio(song)
        stems = separate(loaded, audio, samplerate)
        write_stems_atomically(stems, samplerate, out / song.stem, OutputFormat())
    seconds = time.perf_counter() - start
    from _common import peak_rss_mb  # after the separation: torch and the models are loaded already

    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "seconds": seconds}))


def measure(path: str, model: str, song: Path, out: Path, backend: str = "auto", memory: str = "low") -> dict:
    command = [sys.executable, __file__, "--worker", path, "--model", model, "--song", str(song), "--out", str(out)]
    result = subprocess.run(
        [*command, "--backend", backend, "--memory", memory],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def column(path: str, memory: str) -> str:
    """``old``, ``new`` (``--memory low``) or ``new-<mode>``."""
    return path if path == "old" or memory == "low" else f"{path}-{memory}"


def run(
    rows: list[tuple[str, float]],
    old_max_minutes: float,
    report_row,
    backend: str = "auto",
    memory_modes: tuple[str, ...] = ("low",),
) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        songs: dict[float, Path] = {}
        checkpoint = None
        for model, minutes in rows:
            if minutes not in songs:
                songs[minutes] = folder / f"song-{minutes:g}min.wav"
                write_song(songs[minutes], minutes)
            if model == "htdemucs" and checkpoint is None:
                checkpoint = htdemucs_checkpoint(folder)
            name = str(checkpoint) if model == "htdemucs" else model
            row = {"model": model, "minutes": minutes}
            for path, memory in [("old", "low")] + [("new", mode) for mode in memory_modes]:
                key = column(path, memory)
                if path == "old" and minutes > old_max_minutes:
                    row[key] = {"error": "not run"}
                    continue
                row[key] = measure(path, name, songs[minutes], folder / f"out-{key}", backend, memory)
            results.append(row)
            report_row(row)
    return results


def print_row(row: dict) -> None:
    cells = []
    for key, result in row.items():
        if key in ("model", "minutes"):
            continue
        if "error" in result:
            cells.append(f"{result['error'][:28]:>14} {'-':>7}")
        else:
            cells.append(f"{result['peak_rss_mb']:>14.0f} {result['seconds']:>7.0f}")
    print(f"{row['model']:<12} {row['minutes']:>7g} {' '.join(cells)}", flush=True)


def parse_rows(text: str) -> list[tuple[str, float]]:
    rows = []
    for item in text.split(","):
        model, _, minutes = item.partition(":")
        if model not in ("tiny", "htdemucs", "passthrough") or not minutes:
            raise SystemExit(f"--rows {item!r}: give MODEL:MINUTES with MODEL tiny, htdemucs or passthrough")
        rows.append((model, float(minutes)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"MODEL:MINUTES,... (default {DEFAULT_ROWS})")
    parser.add_argument("--old-max-minutes", type=float, default=10.0, help="longest song the old path runs")
    parser.add_argument("--json", action="store_true", help="print one JSON list at the end")
    parser.add_argument("--backend", default="auto", help="the new path's --backend (auto, torch, onnx, openvino)")
    parser.add_argument(
        "--memory", default="low", help="the new path's --memory modes, comma-separated (low, speed; default low)"
    )
    parser.add_argument("--worker", choices=("old", "new"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--song", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.model, args.song, args.out, args.backend, args.memory)
        return 0
    memory_modes = tuple(args.memory.split(","))
    if not args.json:
        print(f"peak RSS (MB) and seconds of `stemdeck separate`, 48 kHz stereo, {os.cpu_count()} CPUs")
        columns = ["old"] + [column("new", mode) for mode in memory_modes]
        header = " ".join(f"{name + ' peak MB':>14} {name + ' s':>7}" for name in columns)
        print(f"{'model':<12} {'minutes':>7} {header}")
    report_row = (lambda row: None) if args.json else print_row
    results = run(parse_rows(args.rows), args.old_max_minutes, report_row, args.backend, memory_modes)
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
