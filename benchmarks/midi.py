"""MIDI to audio: how long from a Note On leaving a controller to the mute taking effect in the output.

A JACK dummy server at 44.1 kHz with 256-frame periods. A probe client (its own process) sends
Note On 39 (vocals' mute in the default mapping) at a known JACK frame and records the engine's
output; the deck plays a constant 0.5 through the pass-through model, so the output leaves its
level on the very sample the mute's ramp starts. Onset = first changed
frame − frame the message was sent; settled = when the 10 ms ramp has arrived.
Bar (issue): onset within one audio period, settled within one period plus the ramp.
Usage: python benchmarks/midi.py [--presses 40] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import jack_dummy_server

RATE, PERIOD = 44100, 256
LEVEL = 0.5
NOTE = 36 + 3  # mute vocals
CHANGE = 1e-4  # far under the ramp's first step (the vocals' level / 441 frames)
PROBE = "midi-probe"


def probe(server: str, presses: int, spacing_cycles: int, result: str) -> None:
    """The controller and the recorder in one JACK client, so both share one clock."""
    import jack

    client = jack.Client(PROBE, servername=server)
    pads = client.midi_outports.register("pads")
    audio = client.inports.register("in_0")
    cycles = (presses + 2) * spacing_cycles
    recorded = np.zeros(cycles * PERIOD, np.float32)
    state = {"cycle": -1, "start": None, "sent": []}

    @client.set_process_callback
    def process(frames):
        pads.clear_buffer()
        if state["cycle"] < 0:
            return
        cycle = state["cycle"]
        if cycle >= cycles:
            return
        if state["start"] is None:
            state["start"] = client.last_frame_time
        recorded[cycle * PERIOD : (cycle + 1) * PERIOD] = audio.get_array()
        if cycle > 0 and cycle % spacing_cycles == 0 and len(state["sent"]) < presses:
            pads.write_midi_event(0, bytes([0x90, NOTE, 100]))
            state["sent"].append(client.last_frame_time)
        elif cycle > 0 and cycle % spacing_cycles == 1:
            pads.write_midi_event(0, bytes([0x80, NOTE, 0]))
        state["cycle"] = cycle + 1

    with client:
        print("READY", flush=True)
        sys.stdin.readline()
        client.connect("stemdeck:master_L", audio)
        time.sleep(0.2)
        state["cycle"] = 0
        while state["cycle"] < cycles:
            time.sleep(0.05)
        np.savez(result, recorded=recorded, start=state["start"], sent=np.array(state["sent"]))
    print("DONE", flush=True)


def measure(recorded: np.ndarray, start: int, sent: np.ndarray, spacing_frames: int) -> list[dict]:
    """Per press: frames from the message to the output's first change, and to its new level (read
    just before the next press, so the pass-through model's stem levels need not be known here)."""
    rows = []
    for frame in sent:
        at = int(frame - start)
        before = recorded[at - 1]
        target = recorded[at + spacing_frames - 1]
        changed = np.nonzero(np.abs(recorded[at:] - before) > CHANGE)[0]
        arrived = np.nonzero(np.abs(recorded[at:] - target) < 1e-5)[0]
        rows.append({"onset_frames": int(changed[0]), "settled_frames": int(arrived[0])})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presses", type=int, default=40)
    parser.add_argument("--spacing-s", type=float, default=0.25)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--probe", nargs=2, metavar=("SERVER", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from stemdeck.engine.runtime import configure_process

    configure_process()  # as the command line does: this process runs the audio callback
    spacing_cycles = int(args.spacing_s * RATE / PERIOD)
    if args.probe:
        probe(args.probe[0], args.presses, spacing_cycles, args.probe[1])
        return 0

    from stemdeck.engine.config import EngineConfig
    from stemdeck.engine.engine import Engine
    from stemdeck.engine.midi import MidiConfig, MidiController, default_mapping
    from stemdeck.models.nets.passthrough import PassThrough

    seconds = (args.presses + 4) * args.spacing_s + 2
    result = Path(f"/tmp/stemdeck-midi-bench-{time.time_ns()}.npz")
    with jack_dummy_server(RATE, PERIOD) as server:
        engine = Engine(PassThrough(), EngineConfig(samplerate=RATE, cache_stems=False))
        engine.prepare("balanced", block_frames=PERIOD, calibrate_plan=False)
        engine.load_array(np.full((2, int(seconds * RATE)), LEVEL, np.float32))
        assert engine.wait_separated(int(seconds * RATE) - 1, timeout_s=120)
        probe_process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--presses",
                str(args.presses),
                "--spacing-s",
                str(args.spacing_s),
                "--probe",
                server,
                str(result),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert probe_process.stdout.readline().strip() == "READY"
        config = MidiConfig(input=f"{PROBE}:pads", api="jack")
        with MidiController(engine, default_mapping(4), config):
            engine.start_output(stem_outputs=False)
            engine.play()
            probe_process.stdin.write("go\n")
            probe_process.stdin.flush()
            assert probe_process.stdout.readline().strip() == "DONE"
            probe_process.wait(30)
        status = engine.status()
        engine.stop()
    data = np.load(result)
    result.unlink()
    rows = measure(data["recorded"], int(data["start"]), data["sent"], spacing_cycles * PERIOD)
    onset = np.array([r["onset_frames"] for r in rows])
    settled = np.array([r["settled_frames"] for r in rows])
    ramp = int(engine.config.ramp_ms * RATE / 1000)
    summary = {
        "presses": len(rows),
        "period_frames": PERIOD,
        "samplerate": RATE,
        "ramp_frames": ramp,
        "onset_frames": {"min": int(onset.min()), "median": float(np.median(onset)), "max": int(onset.max())},
        "settled_frames": {"min": int(settled.min()), "median": float(np.median(settled)), "max": int(settled.max())},
        "onset_ms_max": 1000 * onset.max() / RATE,
        "settled_ms_max": 1000 * settled.max() / RATE,
        "onset_periods_max": onset.max() / PERIOD,
        "bar_onset_frames": PERIOD,
        "bar_settled_frames": PERIOD + ramp,
        "meets_bar": bool(onset.max() <= PERIOD and settled.max() <= PERIOD + ramp),
        "xruns": status.xruns,
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"MIDI Note On → output, {len(rows)} presses, {PERIOD}-frame periods at {RATE} Hz, {ramp}-frame ramp")
    for key in ("onset_frames", "settled_frames"):
        v = summary[key]
        print(
            f"  {key[:-7]:<8} min {v['min']:>4}  median {v['median']:>6.1f}  max {v['max']:>4} frames "
            f"(max {1000 * v['max'] / RATE:.2f} ms, {v['max'] / PERIOD:.2f} periods)"
        )
    print(
        f"  bar: onset ≤ {PERIOD} frames, settled ≤ {PERIOD + ramp} frames → "
        f"{'met' if summary['meets_bar'] else 'NOT met'}; xruns {status.xruns}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
