"""Two decks: late windows on the deck on air while the other deck separates its whole track.

htdemucs-sized model (random weights) on a JACK dummy server, each deck with its own separation
process (SCHED_IDLE, as by default). Deck A is loaded, left paused ``--lead`` seconds (a DJ who
loaded it a while ago; ``--lead full``: until its whole track is separated; ``--lead cached``:
loaded with its stems, as from the stems cache or an NI STEM file), then played on
air; at once deck B is loaded (the next track), and its separation runs while A plays, until
B's whole track is separated or ``--seconds`` pass. Run
once with the decks' priority (B's separation stopped while A is less than the priority lead
ahead) and once without (both processes share the CPU). Reported per run: A's late windows,
xruns, how far A's separation was ahead at the least, and how much of B was separated.
Usage: python benchmarks/decks.py [--json] [--seconds 120] [--lead 30|full] [--modes priority,shared]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from _common import htdemucs_random, jack_dummy_server

from stemdeck.engine.audio.state import SEPARATED_FROM, STEMS_WRITTEN
from stemdeck.engine.config import EngineConfig
from stemdeck.engine.decks import Decks, DecksConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.runtime import configure_process
from stemdeck.models.demo import demo_stems
from stemdeck.models.nets.passthrough import PassThrough

SR = 44100


def _tracks(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Two different tracks of ``seconds`` from the demo stems (B: other stems' balance, reversed)."""
    stems = demo_stems(30.0)
    repeats = int(np.ceil(seconds / 30.0))
    a = np.tile(sum(stems.values()), (1, repeats))[:, : int(seconds * SR)]
    b = np.tile(stems["drums"] + 0.5 * stems["bass"] + stems["vocals"][:, ::-1], (1, repeats))[:, : int(seconds * SR)]
    return np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32)


def _separated_fraction(engine: Engine) -> float:
    worker = engine.shared.worker
    done = max(0, int(worker[STEMS_WRITTEN]) - int(worker[SEPARATED_FROM]))
    return done / (engine.track_seconds * SR)


def _wait_lead(engine: Engine, lead: str) -> None:
    """Paused ``lead`` seconds, or (``full``) until the whole track is separated."""
    if lead == "cached":
        return
    if lead != "full":
        time.sleep(float(lead))
        return
    while _separated_fraction(engine) < 1.0 and engine.status().worker_error is None:
        time.sleep(0.2)


def run(model, tracks, priority: bool, lead: str, seconds: float, precision: str) -> dict:
    config = EngineConfig(precision=precision, cache_stems=False, beat_tracking=False)
    decks = Decks(Engine(model, config), Engine(model, config), DecksConfig(priority=priority))
    a, b = decks.deck("A"), decks.deck("B")
    try:
        if lead == "cached":  # separated earlier: the stems cache hands them over at load
            stems = {name: tracks[0] / len(a.sources) for name in a.sources}
            decks.load_separated("A", tracks[0], stems, SR)
        else:
            decks.load_array("A", tracks[0])
        decks.start_output()
        waited = time.monotonic()
        _wait_lead(a, lead)
        waited_s = time.monotonic() - waited
        ahead_at_play = a.status().seconds_ahead
        a.play()
        decks.load_array("B", tracks[1])
        began, least_ahead, paused_s = time.monotonic(), ahead_at_play, 0.0
        while time.monotonic() - began < seconds and _separated_fraction(b) < 1.0:
            time.sleep(0.1)
            status = decks.status()
            least_ahead = min(least_ahead, status.decks[0].seconds_ahead)
            paused_s += 0.1 if status.paused_separation == "B" else 0.0
        status_a, status_b = a.status(), b.status()
        return {
            "priority": priority,
            "lead": lead,
            "waited_s": waited_s,
            "played_s": time.monotonic() - began,
            "a_ahead_at_play_s": ahead_at_play,
            "a_least_ahead_s": least_ahead,
            "a_late_windows": status_a.late_windows,
            "a_xruns": status_a.xruns,
            "a_separated": _separated_fraction(a),
            "b_separated": _separated_fraction(b),
            "b_paused_s": paused_s,
            "b_realtime_factor": status_b.realtime_factor,
            "a_realtime_factor": status_a.realtime_factor,
        }
    finally:
        decks.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=120.0, help="deck A's play, at most")
    parser.add_argument(
        "--lead",
        default="30",
        help="deck A paused this many seconds after its load (full: until separated; cached: loaded with stems)",
    )
    parser.add_argument("--track-seconds", type=float, default=90.0)
    parser.add_argument("--modes", default="priority,shared", help="priority, shared, or both (comma)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--model", choices=("htdemucs", "passthrough"), default="htdemucs")
    args = parser.parse_args(argv)
    configure_process()  # as the command line does: this process runs the audio callback
    model = htdemucs_random() if args.model == "htdemucs" else PassThrough()
    tracks = _tracks(args.track_seconds)
    with jack_dummy_server():
        runs = [
            run(model, tracks, mode == "priority", args.lead, args.seconds, args.precision)
            for mode in args.modes.split(",")
        ]
    if args.json:
        print(json.dumps({"model": args.model, "precision": args.precision, "runs": runs}))
        return 0
    print(f"two decks ({args.model}-sized model, {args.precision}, {args.track_seconds:.0f} s tracks, JACK dummy)")
    for r in runs:
        print(
            f"  {'priority' if r['priority'] else 'shared  '}, A paused {r['waited_s']:.0f} s: "
            f"A late windows {r['a_late_windows']}, xruns "
            f"{r['a_xruns']}; A ahead {r['a_ahead_at_play_s']:+.1f} s at play, least {r['a_least_ahead_s']:+.1f} s; "
            f"after {r['played_s']:.0f} s B separated {100 * r['b_separated']:.0f} % "
            f"(stopped {r['b_paused_s']:.0f} s), A {100 * r['a_separated']:.0f} %"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
