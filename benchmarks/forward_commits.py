"""One htdemucs forward at this working tree and at another commit, side by side: wall time,
page faults and CPU seconds, in either of ``stemdeck separate``'s memory modes.

Each side is its own process: one imports this working tree, the other a git worktree of
``--against`` (made in a temporary folder, removed after). Both build the htdemucs architecture
from the same seeded random weights (the official ones cannot be downloaded here) and separate
the same 7.8 s of the generated demo song. The sides alternate round by round, their order
swapped every round, so that a change in the machine's speed hits both alike; the first round
warms up. ``--memory low`` is the default of ``stemdeck separate``: every block of 8 MB or more
that a forward frees goes back to the system, and the next forward maps it and faults it in
again, which the page faults and the system CPU seconds show.

Prints, per side, the best and median wall time, the median page faults, system and user CPU
seconds of one forward, and the largest difference between the two sides' stems.

Usage: python benchmarks/forward_commits.py --against HEAD~1 [--precision int8] [--memory low]
       [--rounds 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEGMENT_S = 7.8


def worker(precision: str, memory: str, stems_path: str) -> None:
    """Build the model from whichever ``stemdeck`` this process imports; one forward per line read."""
    import torch

    from stemdeck.models import HTDemucs
    from stemdeck.models.demo import demo_stems
    from stemdeck.models.precision import prepare_model
    from stemdeck.models.streaming import apply_memory_mode

    # only names every commit has: offline.py (its song, its model builder) imports backends an
    # older commit may lack
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import HTDEMUCS_KW

    apply_memory_mode(memory)
    torch.manual_seed(0)
    model = prepare_model(HTDemucs(**HTDEMUCS_KW).eval(), precision, torch.device("cpu"))
    mix = torch.from_numpy(sum(demo_stems(SEGMENT_S).values()))[None]
    mix = (mix - mix.mean()) / mix.std()
    print(json.dumps({"ready": str(Path(__import__("stemdeck").__path__[0]).resolve())}), flush=True)
    for _ in sys.stdin:
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        with torch.inference_mode():
            stems = model(mix)
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        torch.save(stems, stems_path)
        print(
            json.dumps(
                {
                    "wall": wall,
                    "faults": after.ru_minflt - before.ru_minflt,
                    "system": after.ru_stime - before.ru_stime,
                    "user": after.ru_utime - before.ru_utime,
                }
            ),
            flush=True,
        )


def start_side(package_parent: Path, precision: str, memory: str, stems_path: Path) -> subprocess.Popen:
    """A worker importing ``stemdeck`` from ``package_parent`` (ahead of the editable install)."""
    command = [sys.executable, __file__, "--worker", precision, memory, str(stems_path)]
    env = {**os.environ, "PYTHONPATH": str(package_parent), "PYTHONWARNINGS": "ignore"}
    side = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd="/")
    json.loads(side.stdout.readline())  # ready: the model is built
    return side


def package_folder(folder: Path, tree: Path) -> Path:
    """A folder whose ``stemdeck`` is ``tree`` (the repository root is the package)."""
    folder.mkdir()
    (folder / "stemdeck").symlink_to(tree)
    return folder


def run(against: str, precision: str, memory: str, rounds: int) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tree = scratch / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), against], check=True)
        try:
            folders = {
                "this tree": package_folder(scratch / "here", ROOT),
                against: package_folder(scratch / "there", tree),
            }
            stems = {name: scratch / f"stems-{index}.pt" for index, name in enumerate(folders)}
            sides = {name: start_side(folder, precision, memory, stems[name]) for name, folder in folders.items()}
            measured: dict[str, list[dict]] = {name: [] for name in sides}
            for round_index in range(rounds + 1):
                order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
                for name in order:
                    sides[name].stdin.write("\n")
                    sides[name].stdin.flush()
                    result = json.loads(sides[name].stdout.readline())
                    if round_index:
                        measured[name].append(result)
            for side in sides.values():
                side.stdin.close()
                side.wait()
            outputs = [torch.load(path) for path in stems.values()]
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    report = {"against": against, "precision": precision, "memory": memory, "rounds": rounds, "sides": {}}
    for name, results in measured.items():
        walls = [result["wall"] for result in results]
        report["sides"][name] = {
            "best_s": min(walls),
            "median_s": statistics.median(walls),
            "faults": statistics.median(result["faults"] for result in results),
            "system_s": statistics.median(result["system"] for result in results),
            "user_s": statistics.median(result["user"] for result in results),
        }
    report["max_abs_difference"] = float((outputs[0] - outputs[1]).abs().max())
    return report


def print_table(report: dict) -> None:
    print(f"precision {report['precision']}, memory {report['memory']}, {report['rounds']} rounds")
    print("side | best s | median s | page faults | system CPU s | user CPU s")
    for name, side in report["sides"].items():
        print(
            f"{name} | {side['best_s']:.3f} | {side['median_s']:.3f} | {side['faults']:.0f} | "
            f"{side['system_s']:.3f} | {side['user_s']:.3f}"
        )
    print(f"largest difference between the stems: {report['max_abs_difference']:.3g}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(*argv[1:4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the commit to compare with (HEAD~1, a hash)")
    parser.add_argument("--precision", default="int8", choices=("fp32", "int8", "bf16"))
    parser.add_argument("--memory", default="low", choices=("low", "speed"))
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.against, args.precision, args.memory, args.rounds)
    print(json.dumps(report, indent=2)) if args.json else print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
