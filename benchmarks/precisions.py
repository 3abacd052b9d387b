"""One segment's forward at each precision this CPU offers, against the reference, side by side.

The sides, interleaved round by round (the first round warms up), all on the same random
htdemucs-sized weights and the same 7.8 s of the generated song (``offline.py``'s):

* ``reference``: the reference ``demucs`` HTDemucs in float32;
* ``fp32``: ours, as ``--precision fp32`` runs it;
* ``fp32-bf16math``: ours in float32 with oneDNN's convolutions and matrix products computing in
  bf16 (``torch.backends.mkldnn.{conv,matmul}.fp32_precision = "bf16"``): the CPU's bf16
  arithmetic without autocast's casts of the activations (no effect on CPUs without bf16);
* ``bf16``: ours under bf16 autocast, as ``--precision bf16`` (and ``auto`` where bf16 is
  native) runs it;
* ``int8``: ours with int8 Transformer products, as ``--precision int8`` runs it.

Prints, per side, the best and median wall time of one forward, their ratios to the reference,
and the SNR of its stems against our float32 stems with the weights as initialised and with the
Transformer's LayerScales at 1 (see ``offline.full_strength``). ``--profile K`` adds each side's
K operators with the most self CPU time (torch.profiler, one more forward each).

The threads are torch's default (every core); for two: ``OMP_NUM_THREADS=2 taskset -c 0,1``.

Usage: python benchmarks/precisions.py [--sides fp32,bf16] [--rounds 5] [--profile 12] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import offline  # noqa: E402

from stemdeck.models.precision import cpu_has_native_bf16, prepare_model  # noqa: E402

CPU = torch.device("cpu")
ONEDNN_BF16_MATH = "fp32-bf16math"


def default_sides() -> tuple[str, ...]:
    """bf16 and the bf16 math mode only where the CPU runs bf16 (elsewhere bf16 is emulated, and
    many times slower)."""
    bf16 = ("bf16", ONEDNN_BF16_MATH) if cpu_has_native_bf16() else ()
    return ("reference", "fp32", *bf16, "int8")


def precision_of(side: str) -> str:
    return "fp32" if side in ("reference", ONEDNN_BF16_MATH) else side


def onednn_math(side: str) -> None:
    """oneDNN's float32 arithmetic for ``side``: bf16 for the math-mode side, exact otherwise."""
    mode = "bf16" if side == ONEDNN_BF16_MATH else "none"
    for kind in ("conv", "matmul"):
        getattr(torch.backends.mkldnn, kind).fp32_precision = mode


def models_for(sides: tuple[str, ...], ours: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {
        side: offline.build("reference") if side == "reference" else prepare_model(ours, precision_of(side), CPU)
        for side in sides
    }


def forward(side: str, model: torch.nn.Module, mix: torch.Tensor) -> torch.Tensor:
    """``offline.forward``'s rule (the reference as its users run it, ours as stemdeck does),
    with oneDNN's bf16 math around the side that asks for it."""
    offline_side = "reference" if side == "reference" else f"ours-{precision_of(side)}"
    onednn_math(side)
    try:
        return offline.forward(offline_side, model, mix)
    finally:
        onednn_math("")


def time_sides(models: dict, mix: torch.Tensor, rounds: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {side: [] for side in models}
    for round_index in range(rounds + 1):
        for side, model in models.items():
            start = time.perf_counter()
            forward(side, model, mix)
            if round_index:
                seconds[side].append(time.perf_counter() - start)
    return seconds


def snrs(sides: tuple[str, ...], ours: torch.nn.Module, mix: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Each side's stems against our float32 stems: weights as initialised, LayerScales at 1."""
    result: dict[str, list[float]] = {side: [] for side in sides if side not in ("reference", "fp32")}
    for model in (ours, offline.full_strength(ours)):
        prepared = models_for(tuple(sides), model)
        exact = forward("fp32", prepared["fp32"], mix)
        for side in result:
            result[side].append(offline.snr_db(exact, forward(side, prepared[side], mix)))
    return {side: (values[0], values[1]) for side, values in result.items()}


def top_ops(side: str, model: torch.nn.Module, mix: torch.Tensor, count: int) -> list[tuple[str, float, int]]:
    """The ``count`` operators with the most self CPU seconds in one forward."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        forward(side, model, mix)
    events = sorted(profile.key_averages(), key=lambda e: -e.self_cpu_time_total)[:count]
    return [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in events]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", default="", help="comma-separated (reference and fp32 always run)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after a warm-up one")
    parser.add_argument("--profile", type=int, default=0, metavar="K", help="print each side's K costliest ops")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    named = [s for s in args.sides.split(",") if s]
    sides = ("reference", "fp32", *(s for s in named if s not in ("reference", "fp32"))) if named else default_sides()
    unknown = set(sides) - {"reference", "fp32", ONEDNN_BF16_MATH, "bf16", "int8"}
    if unknown:
        parser.error(f"unknown sides {sorted(unknown)}; choose among reference, fp32, {ONEDNN_BF16_MATH}, bf16, int8")

    mix = offline.song(offline.SEGMENT_S)
    ours = offline.build("ours-fp32")
    models = models_for(sides, ours)
    seconds = time_sides(models, mix, args.rounds)
    quality = snrs(sides, ours, mix)
    best_ref, median_ref = min(seconds["reference"]), statistics.median(seconds["reference"])
    rows = {
        side: {
            "seconds": min(times),
            "median_seconds": statistics.median(times),
            "time_ratio": min(times) / best_ref,
            "median_ratio": statistics.median(times) / median_ref,
            "snr_db_vs_fp32": quality.get(side, (None, None))[0],
            "snr_db_vs_fp32_full_layer_scale": quality.get(side, (None, None))[1],
            "top_ops": top_ops(side, models[side], mix, args.profile) if args.profile else [],
        }
        for side, times in seconds.items()
    }
    machine = offline.machine()
    machine["auto_precision"] = offline.auto_choice({f"ours-{side}": row for side, row in rows.items()})["precision"]
    if args.json:
        print(json.dumps({"machine": machine, "sides": rows}, indent=2))
        return
    print(
        f"{machine['cpu_threads']} threads, torch {machine['torch']}, {machine['cpu_capability']}: "
        f"{' '.join(machine['cpu_flags'])}, auto precision {machine['auto_precision']}"
    )
    for side, row in rows.items():
        snr, snr_full = row["snr_db_vs_fp32"], row["snr_db_vs_fp32_full_layer_scale"]
        quality_text = "" if snr is None else f"  SNR {snr:.1f} dB, LayerScales at 1 {snr_full:.1f} dB"
        print(
            f"{side:14s} best {row['seconds']:.3f} s  median {row['median_seconds']:.3f} s  "
            f"ratio {row['time_ratio']:.3f} (median {row['median_ratio']:.3f}){quality_text}"
        )
        for name, op_seconds, calls in row["top_ops"]:
            print(f"    {name[:50]:50s} {op_seconds:7.3f} s {calls:6d} calls")


if __name__ == "__main__":
    main()
