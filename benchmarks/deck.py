"""The file deck: time from play to first separated audio, and how far separation runs ahead.

htdemucs-sized model (random weights) on a JACK dummy server; the track is loaded and played
at once, as a DJ who did not wait would. Usage: python benchmarks/deck.py [--json] [--seconds 30]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from _common import htdemucs_random, jack_dummy_server

from engine.config import EngineConfig
from engine.engine import Engine
from engine.runtime import configure_process
from models.demo import demo_stems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=30.0, help="playback before reading the lead")
    parser.add_argument("--preset", default="balanced")
    args = parser.parse_args(argv)
    configure_process()  # as the command line does: this process runs the audio callback
    track = sum(demo_stems(30.0).values())
    track = np.ascontiguousarray(np.tile(track, (1, 3)), dtype=np.float32)  # 90 s
    engine = Engine(htdemucs_random(), EngineConfig())
    with jack_dummy_server():
        try:
            engine.prepare(args.preset, block_frames=256)
            engine.load_array(track)
            engine.start_output()
            engine.play()
            first = None
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                status = engine.status()
                if first is None and status.first_stems_s is not None:
                    first = status.first_stems_s
                time.sleep(0.005)
            status = engine.status()
        finally:
            engine.stop()
    report = {"preset": args.preset, "first_stems_s": first, "seconds_ahead": status.seconds_ahead,
              "after_s": args.seconds, "xruns": status.xruns, "late_windows": status.late_windows,
              "worker_load": status.realtime_factor}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"deck ({args.preset}, htdemucs-sized model, JACK dummy 44.1 kHz / 256 frames)")
        print(f"  play -> first separated audio: {first:.3f} s" if first is not None else "  no stems yet")
        print(f"  separated ahead of the playhead after {args.seconds:.0f} s: {status.seconds_ahead:.1f} s")
        print(f"  xruns {status.xruns}, blocks played dry while separating {status.late_windows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
