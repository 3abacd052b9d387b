"""Streaming fidelity: SDR of each preset's streamed stems against offline ``models.separate``.

Same model (htdemucs-sized, random weights), same input (the generated demo song); the stream is
driven block by block without a device, as fast as the worker allows, and shifted by its latency.
Usage: python benchmarks/fidelity.py [--json] [--seconds 20]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from _common import htdemucs_random

from engine.config import PRESETS, EngineConfig
from engine.engine import Engine
from models import separate
from models.demo import demo_stems

BLOCK = 256


def sdr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / max(np.sum((reference - estimate) ** 2), 1e-20)))


def stream(model, preset: str, mix: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
    engine = Engine(model, EngineConfig(worker="thread"))
    engine.prepare(preset, block_frames=BLOCK)
    engine.start_live_headless()
    latency = engine.latency_samples
    feed = np.concatenate([mix, np.zeros((2, latency + BLOCK), np.float32)], axis=1)
    out = np.zeros((feed.shape[1], 2 * (1 + len(model.sources))), np.float32)
    for position in range(0, feed.shape[1] - BLOCK + 1, BLOCK):
        engine.wait_separated(position + BLOCK - latency, timeout_s=600)
        block = np.ascontiguousarray(feed[:, position : position + BLOCK].T)
        engine.process_live_block(block, out[position : position + BLOCK])
    engine.stop()
    frames = mix.shape[1]
    return {name: out[latency : latency + frames, 2 + 2 * k : 4 + 2 * k].T
            for k, name in enumerate(model.sources)}, latency


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    model = htdemucs_random()
    mix = sum(demo_stems(args.seconds).values()).astype(np.float32)
    offline = separate(model, mix, 44100)
    rows = []
    for preset in PRESETS:
        streamed, latency = stream(model, preset, mix)
        # the stream has no context before its first frame: leave out its first window
        skip = int(PRESETS[preset].resolved(7.8).window_s * 44100)
        sdr = {name: sdr_db(offline[name][:, skip:], streamed[name][:, skip:]) for name in model.sources}
        rows.append({"preset": preset, "latency_samples": latency, "sdr_db": sdr,
                     "mean_sdr_db": float(np.mean(list(sdr.values())))})
    if args.json:
        print(json.dumps({"seconds": args.seconds, "presets": rows}))
        return 0
    print(f"streamed vs offline stems, same model and input ({args.seconds:.0f} s demo song), SDR in dB")
    print(f"{'preset':<12} " + " ".join(f"{name:>8}" for name in model.sources) + f" {'mean':>8}")
    for r in rows:
        print(f"{r['preset']:<12} " + " ".join(f"{v:>8.1f}" for v in r["sdr_db"].values()) + f" {r['mean_sdr_db']:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
