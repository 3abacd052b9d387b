"""The xruns this machine's JACK server counts without stemdeck, beside those it counts with it.

A JACK server counts an xrun whenever any cycle finishes late: the driver's own timing, any
client, the kernel's scheduling. To tell what stemdeck adds, this runs the same dummy server
(44.1 kHz, 256 frames, real-time mode) for the same time in turns:

- ``empty``: no client but the observer that counts the xruns;
- ``python``: a Python client whose process callback writes silence to two ports, the least a
  Python audio callback can do (it takes the interpreter lock once per cycle, like ours);
- ``play``: ``stemdeck play`` with the pass-through model (the engine, its compiled callback,
  its separation process), the track looping for the whole turn;
- ``play-python``: the same with ``STEMDECK_PYTHON_CALLBACK=1`` (the block kernels called from
  a Python process callback, as before the compiled one).

    python benchmarks/jack_floor.py --seconds 60 --rounds 2

prints xruns per turn and per minute; the rows of one run are comparable, runs on different
loads are not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import jack_dummy_server  # noqa: E402

TURNS = ("empty", "python", "play", "play-python")


def count_xruns(seconds: float, name: str) -> int:
    """Xruns the server reports to a client that does nothing else, over ``seconds``."""
    import jack

    counted = [0]
    client = jack.Client(f"xrun-observer-{name}", no_start_server=True)
    client.set_xrun_callback(lambda delay_us: counted.__setitem__(0, counted[0] + 1))
    client.activate()
    time.sleep(seconds)
    client.deactivate()
    client.close()
    return counted[0]


def silent_python_client(stop: threading.Event) -> None:
    """A Python client writing silence to two ports until ``stop`` is set."""
    import jack

    client = jack.Client("silent-python", no_start_server=True)
    ports = [client.outports.register(f"out_{side}") for side in "LR"]

    @client.set_process_callback
    def process(frames: int) -> None:
        for port in ports:
            port.get_array().fill(0.0)

    client.activate()
    stop.wait()
    client.deactivate()
    client.close()


def run_turn(turn: str, seconds: float, track: Path) -> int:
    if turn == "empty":
        return count_xruns(seconds, turn)
    if turn == "python":
        stop = threading.Event()
        thread = threading.Thread(target=silent_python_client, args=(stop,), daemon=True)
        thread.start()
        time.sleep(1.0)
        try:
            return count_xruns(seconds, turn)
        finally:
            stop.set()
            thread.join(10)
    command = [sys.executable, "-m", "stemdeck", "play", str(track), "--model", "passthrough"]
    command += ["--loop", f"0:{sf.info(str(track)).duration - 0.5:.1f}", "--duration", str(seconds + 8)]
    env = {**os.environ, "STEMDECK_PYTHON_CALLBACK": "1" if turn == "play-python" else "0"}
    player = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        time.sleep(6.0)  # the model loaded and the deck playing before counting
        return count_xruns(seconds, turn)
    finally:
        player.terminate()
        player.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--turns", default=",".join(TURNS), help="comma-separated, from: " + ", ".join(TURNS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    turns = [t for t in args.turns.split(",") if t]
    unknown = sorted(set(turns) - set(TURNS))
    if unknown:
        parser.error(f"unknown turn(s) {', '.join(unknown)}; choose from {', '.join(TURNS)}")
    rows = []
    with tempfile.TemporaryDirectory() as folder, jack_dummy_server():
        track = Path(folder) / "track.wav"
        t = np.arange(44100 * 20) / 44100
        sf.write(track, np.stack([np.sin(2 * np.pi * 220 * t)] * 2, axis=1) * 0.3, 44100)
        for round_index in range(args.rounds):
            for turn in turns:
                load = os.getloadavg()[0]
                xruns = run_turn(turn, args.seconds, track)
                rows.append(dict(round=round_index + 1, turn=turn, xruns=xruns, load=round(load, 2)))
                print(
                    f"round {round_index + 1} {turn:7s} {xruns:4d} xruns in {args.seconds:.0f} s "
                    f"({xruns * 60 / args.seconds:.1f}/min), load {load:.2f}",
                    flush=True,
                )
    if args.json:
        print(json.dumps(dict(seconds=args.seconds, rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
