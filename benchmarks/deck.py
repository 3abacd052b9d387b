"""The file deck: time from play to first separated audio, how far separation runs ahead (or
behind), and its compute per second of music against offline separation.

htdemucs-sized model (random weights) on a JACK dummy server; the track is loaded and played
at once, as a DJ who did not wait would. The deck separates with the offline plan (the model's
segment, overlap 0.25) and a quick first window.
With ``--backends torch:int8,openvino:bf16`` each backend (at its precision; ``--precision``'s
where none is given) plays the same runs, one after another, in one run of the script (a side
named twice plays twice, interleaved with the others, for the machine's noise)
(OpenVINO's export made first, untimed, as `play --backend openvino` makes it).
Usage: python benchmarks/deck.py [--json] [--seconds 30] [--precision fp32] [--offline-seconds 15]
       [--backends torch:int8,openvino:bf16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from _common import htdemucs_random, jack_dummy_server, peak_rss_mb

from stemdeck.engine.audio.state import MEAN_INFERENCE_S, SEPARATED_FROM, STEMS_WRITTEN, WINDOWS_DONE
from stemdeck.engine.build import ready_network
from stemdeck.engine.config import EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.runtime import configure_process
from stemdeck.models.demo import demo_stems
from stemdeck.models.separate import separate

SR = 44100


def _watch(engine: Engine, seconds: float) -> tuple[float | None, float]:
    """Poll for ``seconds``: the first-stems time since the last play, and the most behind."""
    first, behind_s = None, 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        status = engine.status()
        if first is None and status.first_stems_s is not None:
            first = status.first_stems_s
        behind_s = min(behind_s, status.seconds_ahead)
        time.sleep(0.005)
    return first, behind_s


def _compute_per_music_s(engine: Engine) -> float | None:
    """Inference seconds per second of track separated in the current pass."""
    worker, times = engine.shared.worker, engine.shared.worker_seconds
    separated_s = (int(worker[STEMS_WRITTEN]) - int(worker[SEPARATED_FROM])) / SR
    compute_s = float(times[MEAN_INFERENCE_S]) * int(worker[WINDOWS_DONE])
    return compute_s / separated_s if separated_s > 0 else None


def play_deck(model, track: np.ndarray, seconds: float, precision: str, wait_s: float, backend: str = "torch") -> dict:
    """Load, wait ``wait_s`` paused (a DJ who loads and waits; 0: play at once), play ``seconds``
    (on the JACK server the caller started)."""
    engine = Engine(model, EngineConfig(precision=precision, cache_stems=False, network_backend=backend))
    try:
        loaded = time.perf_counter()
        engine.load_array(track)
        load_s = time.perf_counter() - loaded
        engine.start_output()
        time.sleep(wait_s)
        waited = engine.status().seconds_ahead
        compute = _compute_per_music_s(engine) if wait_s > 0 else None
        engine.play()
        first, behind_s = _watch(engine, seconds)
        status = engine.status()
        worker_peak_mb = _worker_peak_mb(engine)
    finally:
        engine.stop()
    return {
        "waited_s": wait_s,
        "ahead_after_wait_s": waited,
        "load_s": load_s,
        "first_stems_s": first,
        "seconds_ahead": status.seconds_ahead,
        "most_behind_s": behind_s,
        "after_s": seconds,
        "xruns": status.xruns,
        "late_windows": status.late_windows,
        "worker_load": status.realtime_factor,
        "compute_per_music_s": compute,
        "worker_peak_mb": worker_peak_mb,
    }


def _worker_peak_mb(engine: Engine) -> float | None:
    """The separation process's peak resident memory so far, in MB; None where it is not a
    process of its own, or the system does not say."""
    process = getattr(getattr(engine.backend, "process", None), "process", None)
    try:
        return peak_rss_mb(process.pid)
    except (AttributeError, OSError, RuntimeError):
        return None


def offline_compute_per_music_s(model, track: np.ndarray, seconds: float, precision: str) -> float:
    clip = np.ascontiguousarray(track[:, : int(seconds * SR)])
    start = time.perf_counter()
    separate(model, clip, SR, precision=precision)
    return (time.perf_counter() - start) / seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=30.0, help="playback before reading the lead")
    parser.add_argument("--precision", default="fp32", help="fp32 (the path without bf16), bf16 or auto")
    parser.add_argument("--wait", type=float, default=30.0, help="second run: paused this long after load")
    parser.add_argument(
        "--backends",
        default="torch",
        help="comma-separated BACKEND[:PRECISION]: torch, openvino, onnx (what runs the deck's windows)",
    )
    parser.add_argument(
        "--offline-seconds",
        type=float,
        default=15.0,
        help="music separated offline for the compute comparison (0: skip)",
    )
    args = parser.parse_args(argv)
    configure_process()  # as the command line does: this process runs the audio callback
    track = sum(demo_stems(30.0).values())
    track = np.ascontiguousarray(np.tile(track, (1, 3)), dtype=np.float32)  # 90 s
    model = htdemucs_random()
    sides = [(*side.split(":"), args.precision)[:2] for side in args.backends.split(",")]
    for backend, precision in sides:  # exported (and measured) before anything is timed
        ready_network(model, precision, backend, "process", note=lambda line: print(line, file=sys.stderr))
    with jack_dummy_server():
        runs = [
            {
                "side": f"{backend}:{precision}",
                "runs": [
                    play_deck(model, track, args.seconds, precision, wait_s, backend) for wait_s in (0.0, args.wait)
                ],
            }
            for backend, precision in sides
        ]
    offline = (
        offline_compute_per_music_s(model, track, args.offline_seconds, args.precision)
        if args.offline_seconds > 0
        else None
    )
    if args.json:
        print(json.dumps({"precision": args.precision, "runs": runs, "offline_compute_per_music_s": offline}))
        return 0
    for side in runs:
        _print_runs(side["side"], side["runs"], args.precision, offline)
    return 0


def _print_runs(side: str, runs: list[dict], precision: str, offline: float | None) -> None:
    print(f"deck (htdemucs-sized model, {side}, offline plan + quick start, JACK dummy 44.1 kHz / 256)")
    for run in runs:
        first = run["first_stems_s"]
        how = "played at once" if not run["waited_s"] else "waited {:.0f} s paused".format(run["waited_s"])
        print(
            f"  {how}: load {run['load_s']:.1f} s; ahead after the wait {run['ahead_after_wait_s']:+.1f} s; "
            + (f"first stems {first:.2f} s after play; " if first is not None else "no stems while playing; ")
            + f"ahead after {run['after_s']:.0f} s of play {run['seconds_ahead']:+.1f} s "
            f"(most behind {run['most_behind_s']:+.1f} s); xruns {run['xruns']}, late {run['late_windows']}, "
            f"worker load {run['worker_load']:.2f}"
            + (f", separation process peak {run['worker_peak_mb']:.0f} MB" if run["worker_peak_mb"] else "")
        )
    deck = runs[-1]["compute_per_music_s"]
    print(
        "  compute per second of music (paused deck, one pass): "
        + (f"{deck:.2f} s" if deck is not None else "(nothing separated)")
        + (f"; offline separation (torch {precision}) {offline:.2f} s" if offline is not None else "")
    )


if __name__ == "__main__":
    sys.exit(main())
