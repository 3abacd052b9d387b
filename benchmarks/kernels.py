"""Two kernels of an htdemucs forward against the alternatives tried for them, on the model's shapes.

* attention: torch's fused ``scaled_dot_product_attention`` against blocks of queries with
  ``matmul``, an in-place ``exp`` and one division per row after the product with the values;
* the decoders' transposed convolutions (kernel 8, stride 4 along the bins): oneDNN on
  channels-last input against one matrix product per layer plus the overlap of its two taps.

Prints the best of ``--repeats`` (after a warm-up) per side, side by side, and each alternative's
largest difference from torch's own result.

Usage: python benchmarks/kernels.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from _common import best_seconds
from torch import nn
from torch.nn import functional as F

HEADS, HEAD_DIM = 8, 64
FREQ_TOKENS, TIME_TOKENS = 2688, 1344  # htdemucs on a 7.8 s segment: 8 bins x 336 frames, and 1344 samples
ATTENTION_SHAPES = ((FREQ_TOKENS, FREQ_TOKENS), (TIME_TOKENS, TIME_TOKENS), (FREQ_TOKENS, TIME_TOKENS))
QUERY_BLOCKS = (128, 256, 512)
FRAMES = 336
TRANSPOSED_LAYERS = ((384, 192, 8), (192, 96, 32), (96, 48, 128), (48, 16, 512))  # in, out channels, bins in
KERNEL, STRIDE = 8, 4
TRIM = KERNEL // 4  # rows the decoder drops at each end


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int) -> torch.Tensor:
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    keys_t, scaled = k.transpose(-1, -2), q * q.shape[-1] ** -0.5
    for start in range(0, q.shape[2], rows):
        stop = min(q.shape[2], start + rows)
        weights = torch.matmul(scaled[:, :, start:stop], keys_t)
        weights.sub_(weights.amax(-1, keepdim=True)).exp_()
        totals = weights.sum(-1, keepdim=True)
        torch.div(torch.matmul(weights, v), totals, out=out[:, :, start:stop])
    return out


def heads(tokens: int, generator: torch.Generator) -> torch.Tensor:
    """``(1, heads, tokens, head_dim)`` as the model's projections leave them: a transposed view."""
    x = torch.randn(1, tokens, HEADS * HEAD_DIM, generator=generator)
    return x.view(1, tokens, HEADS, HEAD_DIM).transpose(1, 2)


def attention_rows(repeats: int) -> None:
    generator = torch.Generator().manual_seed(0)
    print("attention (8 heads of 64)   fused          " + "  ".join(f"blocks of {r:<4d}" for r in QUERY_BLOCKS))
    for queries, keys in ATTENTION_SHAPES:
        q, k, v = heads(queries, generator), heads(keys, generator), heads(keys, generator)
        exact = F.scaled_dot_product_attention(q, k, v)
        fused_s = best_seconds(lambda: F.scaled_dot_product_attention(q, k, v), repeats)  # noqa: B023
        gflop = 4 * queries * keys * HEADS * HEAD_DIM / 1e9
        cells = [f"{fused_s * 1e3:7.1f} ms ({gflop / fused_s:3.0f} GF/s)"]
        for rows in QUERY_BLOCKS:
            error = float((blocked_attention(q, k, v, rows) - exact).abs().max())
            seconds = best_seconds(lambda: blocked_attention(q, k, v, rows), repeats)  # noqa: B023
            cells.append(f"{seconds * 1e3:7.1f} ms ({error:.0e})")
        print(f"  {queries:4d} x {keys:4d}             " + "  ".join(cells))


def transposed_by_product(conv: nn.ConvTranspose2d, y: torch.Tensor) -> torch.Tensor:
    """The layer's output rows ``TRIM:-TRIM`` from one product and the overlap of its two taps."""
    _, channels_in, bins, frames = y.shape
    channels_out = conv.out_channels
    weight = conv.weight[..., 0].permute(0, 2, 1).reshape(channels_in, KERNEL * channels_out)
    product = (y.permute(0, 2, 3, 1).reshape(bins * frames, channels_in) @ weight).view(
        bins, frames, 2, STRIDE, channels_out
    )
    full = y.new_empty(bins + 1, STRIDE, frames, channels_out)
    full[:bins].copy_(product[:, :, 0].permute(0, 2, 1, 3))
    full[bins:].zero_()
    full[1:].add_(product[:, :, 1].permute(0, 2, 1, 3))
    full += conv.bias
    rows = full.view((bins + 1) * STRIDE, frames, channels_out)[TRIM : TRIM + bins * STRIDE]
    return rows.unsqueeze(0).permute(0, 3, 1, 2)


def transposed_rows(repeats: int) -> None:
    torch.manual_seed(0)
    print("transposed conv (8x1, /4)    oneDNN channels-last      product + overlap")
    for channels_in, channels_out, bins in TRANSPOSED_LAYERS:
        conv = nn.ConvTranspose2d(channels_in, channels_out, (KERNEL, 1), (STRIDE, 1))
        conv = conv.to(memory_format=torch.channels_last)
        y = torch.randn(1, channels_in, bins, FRAMES).to(memory_format=torch.channels_last)
        exact = conv(y)[..., TRIM:-TRIM, :]
        error = float((transposed_by_product(conv, y) - exact).abs().max())
        onednn_s = best_seconds(lambda: conv(y), repeats)  # noqa: B023
        product_s = best_seconds(lambda: transposed_by_product(conv, y), repeats)  # noqa: B023
        gflop = 2 * channels_in * channels_out * KERNEL * bins * FRAMES / 1e9
        print(
            f"  {channels_in:3d} -> {channels_out:3d} over {bins:3d} bins   {onednn_s * 1e3:6.1f} ms "
            f"({gflop / onednn_s:3.0f} GF/s)       {product_s * 1e3:6.1f} ms "
            f"({gflop / product_s:3.0f} GF/s, {error:.0e})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        attention_rows(args.repeats)
        transposed_rows(args.repeats)


if __name__ == "__main__":
    main()
