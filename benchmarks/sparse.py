"""Sparse against dense attention in an htdemucs-sized model: time and peak memory of the
transformer alone and of a whole forward, at 7.8 s, 15 s and 30 s segments.

Each model runs in a fresh process (random weights, seeded; the official ones cannot be fetched
here): the transformer alone (random tokens of the segment's shapes, best of two calls), then
one whole forward (one call: the machine is slow and shared), wall and process CPU seconds. Peak
memory is the peak during the call minus the RSS just before it (CPU, glibc returning freed
blocks at once as ``stemdeck separate`` does), or ``torch.cuda.max_memory_allocated`` (GPU). A
fixed sparse pattern's block plans (one per attention shape, shared by the layers, built on first
use) are built before the timed calls and their time shown apart. Variants:

* ``dense``: the official htdemucs attention;
* ``diag``: ``t_sparse_self_attn`` and ``t_sparse_cross_attn`` with ``t_mask_type="diag"`` and the
  reference's default window of 500 tokens (the block-gathered kernel);
* ``lsh``: ``t_auto_sparsity`` at ``t_sparsity=0.9`` (hashed per input; a masked dense product here).

Usage: python benchmarks/sparse.py [--segments 7.8,15,30] [--variants dense,diag,lsh]
       [--lsh-max-segment 7.8] [--device cpu|cuda] [--json]
       python benchmarks/sparse.py --kernels 2688,5376,10752 [--flex]   # the kernels alone (flex: first size)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import HTDEMUCS_KW, best_seconds  # noqa: E402

from stemdeck.models import HTDemucs  # noqa: E402
from stemdeck.models.nets import sparse  # noqa: E402
from stemdeck.models.streaming import return_freed_memory_early  # noqa: E402

SAMPLERATE = 44100
VARIANTS = {
    "dense": {},
    "diag": dict(t_sparse_self_attn=True, t_sparse_cross_attn=True, t_mask_type="diag", t_sparse_attn_window=500),
    "lsh": dict(t_sparse_self_attn=True, t_sparse_cross_attn=True, t_auto_sparsity=True, t_sparsity=0.9),
}
PARTS = ("transformer", "forward")
TRANSFORMER_REPEATS = 2  # the transformer alone is timed twice (best kept), the whole forward once


def token_counts(segment_s: float) -> tuple[int, int]:
    """(spectral, waveform) tokens at the transformer: frames x 8 bins, and samples / 4^4."""
    length = int(segment_s * SAMPLERATE)
    return math.ceil(length / 1024) * 8, math.ceil(length / 256)


def build(variant: str, segment_s: float, device: torch.device) -> HTDemucs:
    torch.manual_seed(0)
    return HTDemucs(**dict(HTDEMUCS_KW, segment=segment_s, **VARIANTS[variant])).eval().to(device)


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident memory (``VmRSS``) or its high-water mark since the last reset (``VmHWM``)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def reset_peak_rss() -> None:
    """Linux: restart the ``VmHWM`` high-water mark from the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_case(variant: str, segment_s: float, device: torch.device) -> list[dict]:
    """Both parts for one model, in this process: the plans built first (timed apart), then one
    timed call of the transformer alone and one of the whole forward, each with its own peak."""
    return_freed_memory_early()  # freed activations go back at once, so each peak below is its call's
    model = build(variant, segment_s, device)
    spectral, waveform = token_counts(segment_s)
    torch.manual_seed(1)
    width = HTDEMUCS_KW["bottom_channels"]
    x, xt = torch.randn(1, spectral, width, device=device), torch.randn(1, waveform, width, device=device)
    mix = torch.randn(1, 2, int(segment_s * SAMPLERATE), device=device)
    plans_s = build_plans(variant, spectral, waveform, device)
    calls = {"transformer": lambda: model.crosstransformer(x, xt, 8, spectral // 8), "forward": lambda: model(mix)}
    results = []
    for part, call in calls.items():
        seconds, cpu_s, peak = _timed(call, device, TRANSFORMER_REPEATS if part == "transformer" else 1)
        results.append(
            dict(
                variant=variant,
                segment_s=segment_s,
                part=part,
                seconds=seconds,
                cpu_s=cpu_s,
                plans_s=plans_s,
                peak_mb=peak / 2**20,
                tokens=[spectral, waveform],
                kept=_kept(variant, spectral, waveform),
            )
        )
    return results


def build_plans(variant: str, spectral: int, waveform: int, device: torch.device) -> float | None:
    """Seconds to build a fixed pattern's plans for the four attention shapes (once per shape)."""
    if variant != "diag":
        return None
    pattern = sparse.SparsePattern(("diag",), window=VARIANTS["diag"]["t_sparse_attn_window"])
    start = time.perf_counter()
    for queries, keys in _shapes(spectral, waveform):
        sparse.block_plan(pattern, queries, keys, device)
    return time.perf_counter() - start


def _shapes(spectral: int, waveform: int) -> list[tuple[int, int]]:
    return [(spectral, spectral), (waveform, waveform), (spectral, waveform), (waveform, spectral)]


def _timed(call, device: torch.device, repeats: int) -> tuple[float, float, int]:
    """Best wall and process CPU seconds (CPU time is steadier on a shared machine) of
    ``repeats`` calls, and the peak memory of the first: GPU bytes allocated, or the RSS above
    the RSS before it."""
    walls, cpus = [], []
    for repeat in range(repeats):
        before = rss_bytes()
        reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            _sync(device)
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
        if repeat == 0:
            peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else rss_bytes("VmHWM") - before
    return min(walls), min(cpus), peak


def _kept(variant: str, spectral: int, waveform: int) -> float | None:
    """Share of query-key pairs a fixed pattern keeps, over the four attention shapes."""
    if variant != "diag":
        return None
    pattern = sparse.SparsePattern(("diag",), window=VARIANTS["diag"]["t_sparse_attn_window"])
    shapes = _shapes(spectral, waveform)
    kept = sum(sparse.block_plan(pattern, q, k, torch.device("cpu")).kept * q * k for q, k in shapes)
    return kept / sum(q * k for q, k in shapes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_in_child(variant: str, segment_s: float, device: str) -> list[dict]:
    """A fresh process per model: peaks that are the case's own."""
    command = [sys.executable, __file__, "--case", f"{variant},{segment_s}", "--device", device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        error = done.stderr.strip().splitlines()[-1:]
        return [dict(variant=variant, segment_s=segment_s, part=part, error=error) for part in PARTS]
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    """Markdown: one row per segment and variant, the transformer and the whole forward side by side."""
    rows = [
        "| segment | variant | tokens (spec / wave) | pairs kept | transformer s (CPU s) | transformer peak MB "
        "| forward s (CPU s) | forward peak MB | plans built s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cases = {(r["segment_s"], r["variant"], r["part"]): r for r in results}
    for segment_s, variant in dict.fromkeys((r["segment_s"], r["variant"]) for r in results):
        t, f = cases.get((segment_s, variant, "transformer"), {}), cases.get((segment_s, variant, "forward"), {})
        tokens = t.get("tokens") or f.get("tokens") or ["?", "?"]
        kept = t.get("kept") or f.get("kept")
        rows.append(
            f"| {segment_s:g} s | {variant} | {tokens[0]} / {tokens[1]} | "
            f"{'all' if variant == 'dense' else f'{kept:.1%}' if kept else 'per input'} | "
            f"{_cell(t, 'seconds', '.1f')} ({_cell(t, 'cpu_s', '.1f')}) | {_cell(t, 'peak_mb', '.0f')} | "
            f"{_cell(f, 'seconds', '.1f')} ({_cell(f, 'cpu_s', '.1f')}) | {_cell(f, 'peak_mb', '.0f')} | "
            f"{_cell(t, 'plans_s', '.1f')} |"
        )
    return "\n".join(rows)


def _cell(result: dict, key: str, spec: str) -> str:
    if "error" in result:
        return "failed"
    value = result.get(key)
    return "-" if value is None else format(value, spec)


def kernel_comparison(tokens: int, flex: bool) -> dict[str, float]:
    """Seconds of one self-attention (8 heads of 64, ``tokens`` long) under the ``diag`` pattern
    (window 500) by each candidate kernel, against dense attention: what chose the gathered one."""
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, tokens, 8, 64) for _ in range(3))
    heads_first = [t.transpose(1, 2) for t in (q, k, v)]
    pattern = sparse.SparsePattern(("diag",), window=500)
    allowed = pattern.mask(tokens, tokens)
    gathered = sparse.block_plan(pattern, tokens, tokens, torch.device("cpu"))
    candidates = {
        "dense SDPA": lambda: torch.nn.functional.scaled_dot_product_attention(*heads_first),
        "masked SDPA": lambda: torch.nn.functional.scaled_dot_product_attention(*heads_first, attn_mask=allowed),
        "gathered blocks": lambda: sparse.planned_attention(q, k, v, gathered),
    }
    if flex:
        candidates.update(_flex_candidates(heads_first, tokens))
    return {name: _best_of(call) for name, call in candidates.items()}


def _flex_candidates(heads_first: list[torch.Tensor], tokens: int) -> dict:
    """flex_attention with the same pattern as a block mask: eager, and compiled (its compile
    and block-mask build timed apart, printed as they happen)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def band(batch, head, query, key):
        return (query - key).abs() <= 500

    start = time.perf_counter()
    block_mask = torch.compile(create_block_mask)(band, None, None, tokens, tokens, device="cpu")
    print(f"flex: block mask built (compiled) in {time.perf_counter() - start:.1f} s", flush=True)
    compiled = torch.compile(flex_attention, dynamic=False)
    start = time.perf_counter()
    compiled(*heads_first, block_mask=block_mask)
    print(f"flex: first compiled call (compiling) {time.perf_counter() - start:.1f} s", flush=True)
    return {
        "flex eager": lambda: flex_attention(*heads_first, block_mask=block_mask),
        "flex compiled": lambda: compiled(*heads_first, block_mask=block_mask),
    }


def _best_of(call, repeats: int = 3) -> float:
    with torch.inference_mode():
        return best_seconds(call, repeats)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", default="7.8,15,30", help="segment lengths in seconds")
    parser.add_argument("--variants", default="dense,diag,lsh", help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--lsh-max-segment", type=float, default=7.8, help="skip lsh above this segment (s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--kernels", help="instead: compare attention kernels at these token counts (2688,5376)")
    parser.add_argument("--flex", action="store_true", help="with --kernels: flex_attention too (compiles)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    if args.case:
        variant, segment_s = args.case.split(",")
        print(json.dumps(run_case(variant, float(segment_s), torch.device(args.device))))
        return 0
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before: {load}; torch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs")
    if args.kernels:
        for tokens in (int(t) for t in args.kernels.split(",")):
            times = kernel_comparison(tokens, args.flex and tokens == int(args.kernels.split(",")[0]))
            print(f"{tokens} tokens: " + ", ".join(f"{name} {s:.3f} s" for name, s in times.items()), flush=True)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 0
    results = []
    for segment_s in (float(s) for s in args.segments.split(",")):
        for variant in args.variants.split(","):
            if variant == "lsh" and segment_s > args.lsh_max_segment:
                continue
            for result in run_in_child(variant, segment_s, args.device):
                print(json.dumps(result), flush=True)
                results.append(result)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(table(results))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
