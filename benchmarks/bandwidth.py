"""What sharing the band above the bundled model's Nyquist costs per window, next to the window's
separation by that model (the streaming worker does both for every window).

Usage: python benchmarks/bandwidth.py [--json] [--window-s 4.0] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stemdeck.engine.worker.separator import WindowSeparator  # noqa: E402
from stemdeck.engine.worker.windows import WindowPlan  # noqa: E402
from stemdeck.models import load_model  # noqa: E402
from stemdeck.models.bandwidth import share_high_band  # noqa: E402

STREAM_RATE = 44100


def median_time(function, repeats: int) -> float:
    function()  # imports and first-call set-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--window-s", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = load_model("tiny")
    plan = WindowPlan.offline(STREAM_RATE, args.window_s)
    separator = WindowSeparator(model, plan, precision="auto", stream_rate=STREAM_RATE)
    window = np.random.default_rng(0).standard_normal((2, plan.window_frames)).astype(np.float32) * 0.1
    stems = separator(window)
    whole_s = median_time(lambda: separator(window), args.repeats)
    share_s = median_time(lambda: share_high_band(window, stems, STREAM_RATE, model.samplerate), args.repeats)
    result = {
        "window_s": args.window_s,
        "model_samplerate": model.samplerate,
        "stream_samplerate": STREAM_RATE,
        "separate_window_s": whole_s,
        "share_band_s": share_s,
        "share_fraction": share_s / whole_s,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.window_s:.1f} s window at {STREAM_RATE} Hz, bundled tiny model at {model.samplerate} Hz "
            f"(median of {args.repeats})"
        )
        print(f"  whole window (resample, model, resample back, share the band): {whole_s * 1000:.1f} ms")
        print(
            f"  of which sharing the band above {model.samplerate // 2} Hz:       {share_s * 1000:.1f} ms "
            f"({share_s / whole_s:.1%})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
