"""Offline separation speed and memory: stemdeck against the reference ``demucs.apply_model``.

Both run the ``htdemucs`` architecture with the same random weights (the official ones cannot
be downloaded here), on the same generated song, with the same overlap, in the same run:

* seconds per 7.8 s segment (one forward; the sides interleaved, ``--repeats`` rounds, best and
  median wall time, best process CPU time), its real-time factor and the time ratio to the
  reference, for our float32, int8 and (where the CPU runs it natively) bfloat16 in torch, and
  float32 in ONNX Runtime and OpenVINO where they are installed (``ours-onnx``,
  ``ours-openvino``: the network exported once, untimed, into a temporary cache unless
  ``$STEMDECK_ONNX_DIR`` names one; its STFT and iSTFT in torch, timed with it), and bfloat16 in
  OpenVINO where the CPU runs it natively (``ours-openvino-bf16``);
* the SNR of each precision's stems against our float32 stems, with the random weights as
  initialised and with the Transformer's LayerScales at 1 (their random initial 1e-4 hides the
  Transformer's contribution, and so int8's error there, which trained weights would not);
* a whole track (``--track-seconds``) through each side's chunked ``apply_model`` (the sides
  interleaved for ``--track-repeats`` rounds, best of each), with the SNR of our stems against
  the reference's float32 stems;
* peak RSS while separating a ``--rss-minutes`` track, each side in a fresh process;
* the CPU's vector extensions and the load average before and after (the machine may be shared).

``auto`` in the report is what ``--precision auto`` runs on this CPU by ``stemdeck separate``'s
rule (the fastest of int8 and, where native, bfloat16 that takes at most 0.95 of float32's time
at 40 dB or more), from this run.

Usage: python benchmarks/offline.py [--json] [--track-seconds 60] [--track-repeats 1] [--rss-minutes 10] [--repeats 5]
       [--sides reference,ours-fp32,ours-int8,ours-openvino,ours-openvino-bf16] [--isa avx2]
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

from _common import HTDEMUCS_KW, ISA_LIMITS, hold_to_isa, peak_rss_mb  # noqa: E402

from stemdeck.models import (  # noqa: E402
    HTDemucs,
    apply_model,
    load_checkpoint,
    onnx_backend,
    openvino_backend,
    save_safetensors,
)
from stemdeck.models.demo import demo_stems  # noqa: E402
from stemdeck.models.precision import (  # noqa: E402
    AVX2_CLASS_ISAS,
    cpu_has_native_bf16,
    cpu_info,
    forget_prepared_copy,
    forward_context,
    onednn_isa_limit,
    prepare_model,
    prepare_network,
    resolve_precision,
)
from stemdeck.models.precision_choice import SNR_BAR_DB, WIN_RATIO, verdict  # noqa: E402

SEGMENT_S = 7.8
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def sides() -> tuple[str, ...]:
    """The reference, then ours at every precision this CPU runs natively, and in ONNX Runtime and
    OpenVINO where they are installed."""
    precisions = ["fp32", "int8"] + (["bf16"] if cpu_has_native_bf16() else [])
    onnx = ["onnx"] if onnx_backend.available() else []
    openvino = ["openvino"] + (["openvino-bf16"] if cpu_has_native_bf16() else [])
    held_to_avx2 = onednn_isa_limit() in AVX2_CLASS_ISAS  # OpenVINO crashes so held on an AVX-512 CPU
    openvino = openvino if openvino_backend.available() and not held_to_avx2 else []
    return ("reference", *(f"ours-{p}" for p in precisions + onnx + openvino))


OTHER_BACKENDS = ("onnx", "openvino")  # sides run by another backend than torch: float32 unless named


def chosen(names: str) -> tuple[str, ...]:
    """The sides named (all when none is), the reference and our float32 always among them."""
    wanted = {name for name in names.split(",") if name} | {"reference", "ours-fp32"}
    unknown = wanted - set(sides())
    if unknown:
        raise SystemExit(f"--sides: {', '.join(sorted(unknown))} not available here; choose from {', '.join(sides())}")
    return tuple(side for side in sides() if not names or side in wanted)


def precision_of(side: str) -> str:
    """``ours-int8``: int8; ``ours-openvino``: fp32; ``ours-openvino-bf16``: bf16."""
    named = side.split("-")[1:]
    if backend_of(side) == "torch":
        return named[0]
    return named[1] if len(named) > 1 else "fp32"


def backend_of(side: str) -> str:
    named = side.split("-")[1:2]
    return named[0] if named and named[0] in OTHER_BACKENDS else "torch"


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
    return apply_model(model, mix, overlap=0.25, precision=precision_of(side), backend=backend_of(side))


def runnable(side: str, model):
    """What one segment's forward runs: our model prepared for its precision, or its ONNX network
    (exported, or loaded from the cache, here: untimed)."""
    if side == "reference":
        return model
    if backend_of(side) != "torch":
        return prepare_network(model, precision_of(side), torch.device("cpu"), backend=backend_of(side))
    return prepare_model(model, precision_of(side), torch.device("cpu"))


def forward(side: str, model, mix: torch.Tensor) -> torch.Tensor:
    if side == "reference" or backend_of(side) != "torch":  # as its users run it; another backend's own
        with torch.inference_mode():
            return model(mix)
    with torch.inference_mode(), forward_context(precision_of(side), torch.device("cpu")):
        return model(mix)


def time_segments(models: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds of one forward on one segment per side, the sides
    interleaved round by round so that a load change on a shared machine hits them alike (CPU
    seconds are the steadier measure there); the first round warms up."""
    mix = song(SEGMENT_S)
    times = {side: {"wall": [], "cpu": []} for side in models}
    for round_index in range(repeats + 1):
        for side, model in models.items():
            wall, cpu = time.perf_counter(), time.process_time()
            forward(side, model, mix)
            if round_index:
                times[side]["wall"].append(time.perf_counter() - wall)
                times[side]["cpu"].append(time.process_time() - cpu)
    return times


def segment_snrs(models: dict) -> dict[str, float]:
    """Each precision's stems on one segment against our float32 stems, in dB."""
    mix = song(SEGMENT_S)
    outputs = {side: forward(side, model, mix) for side, model in models.items() if side != "reference"}
    return {side: snr_db(outputs["ours-fp32"], out) for side, out in outputs.items() if side != "ours-fp32"}


def full_strength(model):
    """A copy with the Transformer's LayerScales at 1: its residual branches at full weight, as a
    trained model has them far more than a fresh initialisation (1e-4), which would hide int8's
    error in them."""
    import copy

    from stemdeck.models.nets.transformer import layer_scales_at_one

    return layer_scales_at_one(copy.deepcopy(model))


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - estimate).pow(2).sum()))


def export_network(side: str, weights: Path) -> dict:
    """The checkpoint's ONNX Runtime or OpenVINO network, into the cache the RSS workers read
    (they load the checkpoint, so its own export); the seconds the export took and what it
    measured."""
    start = time.perf_counter()
    network = runnable(side, load_checkpoint(weights))
    return {"export_seconds": time.perf_counter() - start, "measured": vars(network.measured)}


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


def cpu_flags() -> list[str]:
    flags = cpu_info()[1]
    return [flag for flag in CPU_FLAGS if flag in flags]


def machine() -> dict:
    return {
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": _onnxruntime_version(),
        "openvino": openvino_backend.version() if openvino_backend.available() else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_flags(),
        "isa_limits": {name: os.environ[name] for name in ISA_LIMITS["avx2"] if name in os.environ},
        "load_average_before": os.getloadavg(),
    }


def _onnxruntime_version() -> str | None:
    if not onnx_backend.available():
        return None
    import onnxruntime

    return onnxruntime.__version__


def segment_report(models: dict, repeats: int) -> dict:
    ready = {side: runnable(side, model) for side, model in models.items()}
    times = time_segments(ready, repeats)
    reference = {kind: min(values) for kind, values in times["reference"].items()}
    report = {}
    for side, measured in times.items():
        best, cpu = min(measured["wall"]), min(measured["cpu"])
        report[side] = {
            "seconds": best,
            "median_seconds": float(np.median(measured["wall"])),
            "cpu_seconds": cpu,
            "rtf": best / SEGMENT_S,
            "time_ratio": best / reference["wall"],
            "cpu_time_ratio": cpu / reference["cpu"],
            "backend": backend_of(side) if side != "reference" else "reference",
            "network": ready[side].describe() if backend_of(side) != "torch" else None,
        }
    ours = {side: runnable(side, model) for side, model in models.items() if side != "reference"}
    strong = {side: runnable(side, full_strength(model)) for side, model in models.items() if side != "reference"}
    for side, snr in segment_snrs(ours).items():
        report[side]["snr_db_vs_fp32"] = snr
    for side, snr in segment_snrs(strong).items():
        report[side]["snr_db_vs_fp32_full_layer_scale"] = snr
    return report


def auto_choice(segment: dict) -> dict:
    """What ``--precision auto`` runs on this CPU by the rule ``stemdeck separate`` applies
    (:func:`models.precision_choice.verdict`), from this run's segment times and the SNR with the
    LayerScales at 1 (the trained-like case): the fastest of int8 and (where native) bfloat16
    within the bar, else float32."""
    if "ours-int8" not in segment:
        return {"precision": resolve_precision("auto", torch.device("cpu")), "rule": "int8 not measured in this run"}
    fp32_s, int8 = segment["ours-fp32"]["seconds"], segment["ours-int8"]
    bf16 = segment.get("ours-bf16") if cpu_has_native_bf16() else None
    snr = int8["snr_db_vs_fp32_full_layer_scale"]
    bf16_s = bf16["seconds"] if bf16 else None
    bf16_snr = bf16["snr_db_vs_fp32_full_layer_scale"] if bf16 else None
    choice = {
        "precision": verdict(fp32_s, int8["seconds"], snr, bf16_s, bf16_snr),
        "rule": f"the fastest of int8{' and bf16' if bf16 else ''} taking <= {WIN_RATIO:g} of float32's time "
        f"at >= {SNR_BAR_DB:g} dB, else fp32",
        "int8_over_fp32": int8["seconds"] / fp32_s,
        "int8_snr_db": snr,
    }
    if bf16:
        choice.update(bf16_over_fp32=bf16_s / fp32_s, bf16_snr_db=bf16_snr)
    openvino = segment.get("ours-openvino-bf16")
    if openvino:  # what --backend auto runs (models.track_job.settle_backend's rule, this run's times):
        # under --memory speed at once, under low once the network is exported and measured
        torch_s = segment[f"ours-{choice['precision']}"]["seconds"]
        wins = openvino["seconds"] <= WIN_RATIO * torch_s and openvino["snr_db_vs_fp32_full_layer_scale"] >= SNR_BAR_DB
        choice["backend_auto"] = "openvino-bf16" if wins else f"torch-{choice['precision']}"
    return choice


def track_report(models: dict, seconds: float, repeats: int = 1) -> dict:
    """Each side's whole track, the sides interleaved for ``repeats`` rounds, best of each
    (one round's ±15 % on a quiet 2-core machine decided nothing)."""
    mix = song(seconds)
    report: dict = {"seconds": seconds, "repeats": repeats}
    outputs, times = {}, {side: [] for side in models}
    for _ in range(repeats):
        for side, model in models.items():
            forget_prepared_copy()  # each run makes its int8 or bfloat16 copy, as one `separate` does
            start = time.perf_counter()
            outputs[side] = separate_with(side, model, mix)
            times[side].append(time.perf_counter() - start)
    for side, measured in times.items():
        report[side] = {"seconds": min(measured), "all_seconds": measured, "rtf": min(measured) / seconds}
    for side in models:
        report[side]["time_ratio"] = report[side]["seconds"] / report["reference"]["seconds"]
        if side != "reference":
            report[side]["snr_db_vs_reference"] = snr_db(outputs["reference"], outputs[side])
    return report


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        os.environ.setdefault(onnx_backend.CACHE_ENV, cache)  # the RSS workers inherit it
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    report = {"machine": machine()}
    models = {side: build(side) for side in chosen(args.sides)}
    report["segment"] = segment_report(models, args.repeats)
    report["auto"] = auto_choice(report["segment"])
    report["track"] = track_report(models, args.track_seconds, args.track_repeats) if args.track_seconds > 0 else {}
    report["rss"] = {"minutes": args.rss_minutes}
    if args.rss_minutes > 0:
        with tempfile.TemporaryDirectory() as folder:
            weights = Path(folder) / "htdemucs-random.safetensors"
            save_safetensors(models["ours-fp32"], weights)
            del models
            for side in chosen(args.sides):
                if backend_of(side) != "torch":
                    report[f"{side}_export"] = export_network(side, weights)
            for side in chosen(args.sides):
                report["rss"][side] = measure_rss(side, args.rss_minutes, weights)
    report["machine"]["load_average_after"] = os.getloadavg()
    return report


def print_table(report: dict) -> None:
    info = report["machine"]
    print(
        f"HT Demucs (htdemucs size, random weights), {info['cpu_threads']} threads, torch {info['torch']}, "
        f"onnxruntime {info['onnxruntime']}, openvino {info['openvino']} "
        f"({info['cpu_capability']}: {' '.join(info['cpu_flags'])}), auto precision = {report['auto']['precision']}"
        f"{', --backend auto runs ' + report['auto']['backend_auto'] if 'backend_auto' in report['auto'] else ''}, "
        f"load {info['load_average_before'][0]:.2f} -> {info['load_average_after'][0]:.2f}"
    )
    if info.get("isa_limits"):
        limits = " ".join(f"{name}={value}" for name, value in info["isa_limits"].items())
        print(f"held to older instructions ({limits}): an estimate of such a CPU, on this one's clocks and caches")
    print(
        f"{'side':<18} {'s/segment':>10} {'median':>7} {'RTF':>6} {'ratio':>6} {'CPU s':>6} {'ratio':>6} "
        f"{'SNR dB':>7} {'SNR LS=1':>8} "
        f"{'track s':>8} {'ratio':>6} {'peak RSS MB':>12}"
    )
    for side, seg in report["segment"].items():
        track = report["track"].get(side, {})
        rss = report["rss"].get(side, {}).get("peak_rss_mb")
        print(
            f"{side:<18} {seg['seconds']:>10.3f} {seg['median_seconds']:>7.3f} {seg['rtf']:>6.3f} "
            f"{seg['time_ratio']:>6.3f} {seg['cpu_seconds']:>6.2f} {seg['cpu_time_ratio']:>6.3f} "
            f"{_number(seg.get('snr_db_vs_fp32')):>7} "
            f"{_number(seg.get('snr_db_vs_fp32_full_layer_scale')):>8} {_number(track.get('seconds'), 2):>8} "
            f"{_number(track.get('time_ratio'), 3):>6} {_number(rss, 0):>12}"
        )
    print(
        f"segment = {SEGMENT_S} s (best of the interleaved rounds); SNR against our float32 stems; "
        f"track = {report['track'].get('seconds', 0)} s; RSS over a {report['rss']['minutes']}-minute track"
    )


def _number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--track-seconds", type=float, default=60.0, help="0 skips the track runs")
    parser.add_argument("--rss-minutes", type=float, default=10.0, help="0 skips the memory runs")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds after a warm-up one")
    parser.add_argument("--track-repeats", type=int, default=1, help="interleaved rounds of the track runs")
    parser.add_argument(
        "--sides", default="", help="comma-separated sides to run (default: all; reference and ours-fp32 always)"
    )
    parser.add_argument(
        "--isa",
        choices=sorted(ISA_LIMITS),
        help="hold torch, oneDNN, MKL and FBGEMM to these instructions (an AVX2 CPU's code paths measured on an "
        "AVX-512 one; OpenVINO is left out, as it crashes so held)",
    )
    parser.add_argument("--rss-worker", choices=sides(), help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    hold_to_isa(args.isa)
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
