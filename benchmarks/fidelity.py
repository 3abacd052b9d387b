"""Streaming fidelity: SDR of each preset's streamed stems against offline ``models.separate``.

Same model (htdemucs-sized, random weights), same input (the generated demo song); the stream is
driven block by block without a device, as fast as the worker allows, and shifted by its latency.
With ``--model`` (a trained one, e.g. the bundled ``tiny``) the input is a generated song with
known stems, from a seed no recipe trains on, and both the offline and the streamed stems are
also scored against those true stems: what separating live costs in quality.
Usage: python benchmarks/fidelity.py [--json] [--seconds 20] [--model tiny]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from _common import htdemucs_random

from stemdeck.engine.config import PRESETS, EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.models import separate
from stemdeck.models.demo import demo_stems
from stemdeck.models.training.evaluate import utterance_sdr

BLOCK = 256
UNSEEN_SONG_SEED = 987_654  # no recipe's training songs use it


def stream(model, preset: str, mix: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
    engine = Engine(model, EngineConfig(worker="thread"))
    engine.prepare(preset, block_frames=BLOCK)
    engine.start_live_headless()
    latency = engine.latency_frames
    feed = np.concatenate([mix, np.zeros((2, latency + BLOCK), np.float32)], axis=1)
    out = np.zeros((feed.shape[1], 2 * (1 + len(model.sources))), np.float32)
    for position in range(0, feed.shape[1] - BLOCK + 1, BLOCK):
        engine.wait_separated(position + BLOCK - latency, timeout_s=600)
        block = np.ascontiguousarray(feed[:, position : position + BLOCK].T)
        engine.process_live_block(block, out[position : position + BLOCK])
    engine.stop()
    frames = mix.shape[1]
    return {
        name: out[latency : latency + frames, 2 + 2 * k : 4 + 2 * k].T for k, name in enumerate(model.sources)
    }, latency


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--model", help="a trained model's name or file (default: htdemucs-sized random weights)")
    args = parser.parse_args(argv)
    truth = None
    if args.model:
        from stemdeck.models import load_model
        from stemdeck.models.training.synth import synth_song

        model = load_model(args.model)
        truth = synth_song(UNSEEN_SONG_SEED, args.seconds)
        mix = sum(truth.values()).astype(np.float32)
    else:
        model = htdemucs_random()
        mix = sum(demo_stems(args.seconds).values()).astype(np.float32)
    offline = separate(model, mix, 44100)
    # the stream has no context before its first frame: every score leaves out the longest first window
    skip = max(int(PRESETS[p].resolved(float(model.segment)).window_s * 44100) for p in PRESETS)
    rows = [score("offline", 0, offline, offline, truth, skip)] if truth else []
    for preset in PRESETS:
        streamed, latency = stream(model, preset, mix)
        rows.append(score(preset, latency, streamed, offline, truth, skip))
    if args.json:
        print(json.dumps({"seconds": args.seconds, "model": args.model or "htdemucs-random", "presets": rows}))
        return 0
    song = f"generated song, seed {UNSEEN_SONG_SEED}" if truth else "demo song"
    print(
        f"model {args.model or 'htdemucs-sized, random weights'}; {args.seconds:.0f} s {song}; "
        f"first {skip / 44100:.1f} s left out; SDR in dB"
    )
    for key, title in (
        ("sdr_vs_offline_db", "streamed vs offline stems"),
        ("sdr_vs_truth_db", "against the true stems"),
    ):
        if key not in rows[-1]:
            continue
        print(title)
        print(f"  {'':<12} " + " ".join(f"{name:>8}" for name in model.sources) + f" {'mean':>8}")
        for r in rows:
            if r["preset"] == "offline" and key == "sdr_vs_offline_db":
                continue
            values = list(r[key].values())
            print(f"  {r['preset']:<12} " + " ".join(f"{v:>8.1f}" for v in values) + f" {np.mean(values):>8.1f}")
    return 0


def score(preset: str, latency: int, stems: dict, offline: dict, truth: dict | None, skip: int) -> dict:
    row = {
        "preset": preset,
        "latency_samples": latency,
        "sdr_vs_offline_db": {n: utterance_sdr(offline[n][:, skip:], stems[n][:, skip:]) for n in offline},
    }
    if truth is not None:
        row["sdr_vs_truth_db"] = {n: utterance_sdr(truth[n][:, skip:], stems[n][:, skip:]) for n in offline}
    return row


if __name__ == "__main__":
    sys.exit(main())
