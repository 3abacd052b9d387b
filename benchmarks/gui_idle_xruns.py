"""xruns an idle mixer window counts: the real `stemdeck gui` on the real output, nothing playing.

Runs `stemdeck gui ARGS` in this process (a display is needed: a desktop, or Xvfb) and prints
the engine's xrun and late-window counters every ``--every`` seconds until ``--seconds``; with a
JACK server (`jackd -d dummy`, JACK_DEFAULT_SERVER) the output is JACK's. A DJ must read 0 when
nothing is wrong. Usage:
    python benchmarks/gui_idle_xruns.py [--seconds 60] [--every 10] -- gui --demo --model passthrough
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("gui_args", nargs="*", default=["gui", "--demo", "--model", "passthrough"])
    args = parser.parse_args()

    from PyQt6.QtCore import QTimer
    from PyQt6.QtWidgets import QApplication

    from stemdeck.cli import main as stemdeck

    app = QApplication(sys.argv[:1])
    samples: list[dict] = []
    started = [None]  # when the engine's output first ran

    def sample() -> None:
        window = next((w for w in app.topLevelWidgets() if hasattr(w, "session")), None)
        engine = window.session.engine if window is not None else None
        if engine is None or not engine.stream_active:
            return
        now = time.monotonic()
        started[0] = started[0] or now
        status = engine.status()
        elapsed_s = now - started[0]
        if not samples or elapsed_s >= samples[-1]["seconds"] + args.every - 0.05:
            samples.append(
                {
                    "seconds": round(elapsed_s, 1),
                    "xruns": status.xruns,
                    "late": status.late_windows,
                    "playing": status.playing,
                }
            )
            print(json.dumps(samples[-1]), flush=True)
        if elapsed_s >= args.seconds:
            app.quit()

    timer = QTimer()
    timer.timeout.connect(sample)
    timer.start(100)
    code = stemdeck(args.gui_args)
    print(
        json.dumps(
            {
                "idle_seconds": samples[-1]["seconds"] if samples else 0,
                "xruns": samples[-1]["xruns"] if samples else None,
            }
        ),
        flush=True,
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
