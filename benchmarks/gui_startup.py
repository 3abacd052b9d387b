"""Desktop mixer start-up: from launching `stemdeck gui` to a shown, painted window.

Side by side in one run, each launched fresh ``--runs`` times (offscreen Qt, no display needed):
- bare Qt: a Python process that imports PyQt6 and shows an empty QMainWindow (the floor);
- stemdeck: `python -m stemdeck gui`, which shows the full mixer window and then loads the
  model in the background (so the model's size does not count against the bar).
Bar (issue): a usable window in under 3 s on a 2-core machine.
Usage: python benchmarks/gui_startup.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAR_S = 3.0
BARE_QT = """
import time
from PyQt6.QtCore import QTimer
from PyQt6.QtWidgets import QApplication, QMainWindow
app = QApplication([])
window = QMainWindow()
window.resize(1280, 720)
window.show()
QTimer.singleShot(0, lambda: (print("STEMDECK_SHOWN", flush=True), app.quit()))
app.exec()
"""


def time_to_shown(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    for line in process.stdout:
        if line.startswith("STEMDECK_SHOWN"):
            shown = time.perf_counter() - start
            break
    else:
        raise RuntimeError(f"{command} exited without showing a window")
    process.wait(60)
    return shown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as config:
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": config}
        commands = {
            "bare Qt": [sys.executable, "-c", BARE_QT],
            "stemdeck gui": [sys.executable, "-m", "stemdeck", "gui", "--exit-when-shown"],
        }
        time_to_shown(commands["stemdeck gui"], env)  # Numba/pyc caches warm, as after installing
        times = {name: [] for name in commands}
        for _ in range(args.runs):  # interleaved, so machine noise hits both alike
            for name, command in commands.items():
                times[name].append(time_to_shown(command, env))
    summary = {name: {"median_s": statistics.median(v), "max_s": max(v), "runs": v} for name, v in times.items()}
    summary["bar_s"] = BAR_S
    summary["meets_bar"] = summary["stemdeck gui"]["max_s"] < BAR_S
    summary["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"time to a shown window, {args.runs} fresh launches each, {os.cpu_count()} CPUs, offscreen Qt")
    for name in commands:
        print(f"  {name:<14} median {summary[name]['median_s']:.2f} s   max {summary[name]['max_s']:.2f} s")
    ratio = summary["stemdeck gui"]["median_s"] / summary["bare Qt"]["median_s"]
    print(f"  stemdeck / bare Qt: {ratio:.2f}x; bar {BAR_S:.0f} s → {'met' if summary['meets_bar'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
