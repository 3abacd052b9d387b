"""The mix kernel per audio block against the same mix in NumPy, and its share of the block.

Usage: python benchmarks/ola.py [--json] [--block 256] [--stems 4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import best_seconds  # noqa: E402

from stemdeck.engine.audio.mixer import mix_block, mix_block_reference  # noqa: E402
from stemdeck.engine.audio.state import gain_state  # noqa: E402

SAMPLERATE = 44100


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--stems", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    capacity = 1 << 16
    stems = rng.standard_normal((args.stems, 2, capacity)).astype(np.float32)
    dry = rng.standard_normal((2, capacity)).astype(np.float32)
    out = np.zeros((args.block, 2), np.float32)
    levels = np.zeros((2, args.stems + 1), np.float32)
    state = gain_state(args.stems)
    gains = np.ones(args.stems + 1)
    start = 1000

    def kernel():
        mix_block(out, stems, start, dry, start, state, True, levels)

    def numpy_version():  # the same work: gains, mix, per-stem peaks and mean squares
        block = stems[..., start : start + args.block]
        mixed = mix_block_reference(block, dry[:, start : start + args.block], gains)
        weighted = block * gains[:-1, None, None]
        np.abs(weighted).max(axis=(1, 2)), (weighted**2).mean(axis=(1, 2))
        np.abs(mixed).max(), (mixed**2).mean()
        out[:] = mixed.T

    kernel_s = best_seconds(kernel, args.repeats)  # its warm-up call compiles the kernel
    numpy_s = best_seconds(numpy_version, args.repeats)
    block_s = args.block / SAMPLERATE
    report = {
        "block_frames": args.block,
        "stems": args.stems,
        "kernel_us": kernel_s * 1e6,
        "numpy_us": numpy_s * 1e6,
        "speedup_vs_numpy": numpy_s / kernel_s,
        "kernel_share_of_block": kernel_s / block_s,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"mix of {args.stems} stems, {args.block}-frame block ({block_s * 1e3:.2f} ms at {SAMPLERATE} Hz)")
        print(f"  numba kernel  {report['kernel_us']:8.1f} us   {report['kernel_share_of_block']:.3%} of the block")
        print(f"  numpy         {report['numpy_us']:8.1f} us   ratio numpy/kernel {report['speedup_vs_numpy']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
