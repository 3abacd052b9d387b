"""Live separation on a JACK dummy server: latency, xruns and late windows for every preset.

htdemucs-sized model (random weights), 44.1 kHz, 256-frame periods, ``--seconds`` per preset.
The calibration may lengthen a preset's plan for this machine: the plan it chose is printed.
Usage: python benchmarks/live.py [--json] [--seconds 120] [--presets quality,balanced,low-latency]
[--precision fp32] [--model tiny] [--threads 1,2] [--scheduling nice,idle]

``--threads 1,2`` runs every preset once per inference thread count, side by side: on 2 cores,
whether the worker's second thread costs the audio callback xruns, or buys a lower latency.
``--scheduling nice,idle`` compares how the separation process yields the CPU to the audio path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _common import htdemucs_random, jack_dummy_server

from stemdeck.engine.config import PRESETS, EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.runtime import configure_process, inference_threads
from stemdeck.engine.worker.process import WorkerError
from stemdeck.models import load_model


def run_preset(
    model, preset: str, seconds: float, precision: str = "auto", threads: int | None = None, scheduling: str = "nice"
) -> dict:
    config = EngineConfig(precision=precision, inference_threads=threads, worker_scheduling=scheduling)
    engine = Engine(model, config)
    try:
        try:
            engine.prepare(preset, block_frames=256)
        except WorkerError as exc:  # calibration found no plan for this machine
            refused = {"offered": False, "reason": str(exc)}
            return {"preset": preset, "threads": threads, "scheduling": scheduling, **refused}
        engine.start_live()
        time.sleep(seconds)
        status = engine.status()
    finally:
        engine.stop()
    return {
        "preset": preset,
        "threads": threads,
        "scheduling": scheduling,
        "offered": True,
        "latency_samples": status.latency_frames,
        "latency_ms": status.latency_ms,
        "hop_s": engine.window.hop_s,
        "window_s": engine.window.window_s,
        "xruns": status.xruns,
        "late_windows": status.late_windows,
        "windows": status.windows_done,
        "forward_s": engine.calibration.forward_s,
        "worker_load": status.realtime_factor,
        "worker_headroom": status.headroom,
        "worst_load": status.max_realtime_factor,
        "worker_error": status.worker_error,
        "adapted": engine.calibration.adapted,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--precision", default="auto", help="fp32 forces the path without bf16")
    parser.add_argument("--model", help="a registry name or checkpoint instead of htdemucs-sized random weights")
    parser.add_argument(
        "--threads", default="", help="inference thread counts to compare, e.g. 1,2 (default: the engine's)"
    )
    parser.add_argument(
        "--scheduling", default="idle", help="the separation process's CPU policies to compare, e.g. nice,idle"
    )
    args = parser.parse_args(argv)
    configure_process()  # as the command line does: this process runs the audio callback
    model = load_model(args.model) if args.model else htdemucs_random()
    model_name = args.model or "htdemucs-sized model"
    thread_counts = [int(n) for n in args.threads.split(",") if n] or [None]
    with jack_dummy_server():
        rows = [
            run_preset(model, preset, args.seconds, args.precision, threads, scheduling)
            for preset in args.presets.split(",")
            for threads in thread_counts
            for scheduling in args.scheduling.split(",")
        ]
    if args.json:
        print(json.dumps({"model": model_name, "seconds_per_preset": args.seconds, "presets": rows}))
        return 0
    print(
        f"live, {model_name} ({args.precision}), JACK dummy 44.1 kHz / 256 frames, "
        f"{args.seconds:.0f} s per preset; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"{'preset':<12} {'threads':>7} {'sched':>5} {'latency ms':>10} {'hop s':>6} {'window s':>8} "
        f"{'xruns':>6} {'late':>5} "
        f"{'windows':>7} {'load':>6} {'headroom':>8} {'worst':>6}"
    )
    for r in rows:
        threads = str(r["threads"] or inference_threads())
        if not r["offered"]:
            print(f"{r['preset']:<12} {threads:>7} {r['scheduling']:>5} not offered on this machine: {r['reason']}")
            continue
        print(
            f"{r['preset']:<12} {threads:>7} {r['scheduling']:>5} {r['latency_ms']:>10.0f} "
            f"{r['hop_s']:>6.2f} {r['window_s']:>8.2f} "
            f"{r['xruns']:>6} "
            f"{r['late_windows']:>5} {r['windows']:>7} {r['worker_load']:>6.2f} {r['worker_headroom']:>8.0%} "
            f"{r['worst_load']:>6.2f}" + ("  (plan lengthened for this machine)" if r["adapted"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
