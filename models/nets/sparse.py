"""Sparse attention of HT Demucs (the paper's best model): which keys each query may attend to,
and a plain-PyTorch kernel that computes only the blocks a pattern keeps.

The patterns follow the reference's ``get_elementary_mask`` (``demucs.transformer``) fact for
fact, for ``queries`` rows and ``keys`` columns (``T2`` and ``T1`` there), so that a model the
reference trained with ``t_sparse_self_attn``/``t_sparse_cross_attn`` sees the same pattern here:

- ``diag``: query ``i`` sees keys ``trunc(i * keys / queries + o)`` for ``o`` in ``[-window, window]``,
  clamped to the sequence (a band of ``2 * window + 1`` keys around the scaled diagonal).
- ``jmask``: the same around the diagonal, with the offsets ``0, 1, 3, 6, 10, ...`` (triangular
  numbers up to ``sqrt(2 * keys)``), both ways, on a grid padded by one token on every side.
- ``global``: every query sees the first ``global_window`` keys, and the first
  ``int(global_window * queries / keys)`` queries see every key.
- ``random``: ``torch.rand(queries * keys)`` from a generator seeded with the seed, on the
  device the model runs on (as the reference), kept where above ``sparsity``.
- Several kinds joined by ``_`` (``"diag_global_random"``) keep the union.

``auto sparsity`` (the reference's ``dynamic_sparse_attention``) hashes queries and keys with
32 random 2-D projections (4 buckets each: the argmax of ``[p, -p]``) and keeps a query-key pair
when they share a bucket in at least ``k`` of the 32 hashes. The reference hands the buckets to
an unreleased xformers kernel (``find_locations``); here ``k`` is the smallest count that keeps at
most ``1 - sparsity`` of the pairs of each attention matrix (the paper's description), and the
projections come from a generator seeded with the mask seed rather than the global one, so a
model separates the same way on every run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from stemdeck.models.limits import check_mask_type

LSH_HASHES = 32
LSH_PROJECTION = 2  # 2 projections, signed: 4 buckets per hash
QUERY_BLOCK = 128  # queries that share one gathered set of keys
GATHER_BLOCKS = 8  # query blocks whose keys are gathered at once
MASKED_ROWS = 1024  # queries of a masked dense product computed at once
GATHER_LIMIT = 0.5  # gather keys only when a block needs at most this share of them
MASK_ROWS = 256  # rows of a diagonal mask scattered at once
LSH_QUERY_CHUNK = 1024  # queries whose bucket counts are held at once


@dataclass(frozen=True)
class SparsePattern:
    """A fixed sparse pattern: the reference's ``t_mask_type`` and its parameters."""

    kinds: tuple[str, ...] = ("diag",)
    window: int = 500
    global_window: int = 100
    seed: int = 42
    sparsity: float = 0.95

    @classmethod
    def from_mask_type(cls, mask_type: str, **values) -> SparsePattern:
        """From the reference's ``t_mask_type`` (``"diag_global"``); a ``LimitError`` if unknown."""
        return cls(kinds=check_mask_type(mask_type), **values)

    def mask(self, queries: int, keys: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(queries, keys)`` booleans: True where a query may attend to a key."""
        allowed = torch.zeros(queries, keys, dtype=torch.bool, device=device)
        for kind in self.kinds:
            allowed |= _ELEMENTARY[kind](self, queries, keys, torch.device(device))
        return allowed


def diagonal_mask(pattern: SparsePattern, queries: int, keys: int, device: torch.device) -> torch.Tensor:
    # Offsets past +-keys land on the first or last key for every query: cut there, same mask.
    window = min(pattern.window, keys)
    offsets = torch.arange(-window, window + 1, device=device)
    allowed = torch.zeros(queries, keys, dtype=torch.bool, device=device)
    for start in range(0, queries, MASK_ROWS):
        rows = torch.arange(start, min(start + MASK_ROWS, queries), device=device)[:, None] * (keys / queries)
        allowed[start : start + MASK_ROWS].scatter_(1, (rows + offsets).long().clamp(0, keys - 1), True)
    return allowed


def jump_mask(pattern: SparsePattern, queries: int, keys: int, device: torch.device) -> torch.Tensor:
    steps = torch.arange(int((2 * keys) ** 0.5 + 1), device=device)
    triangular = (steps * (steps + 1) / 2).int()
    offsets = torch.cat([-triangular.flip(0)[:-1], triangular])
    rows = torch.arange(queries + 2, device=device)[:, None] * (keys / queries)
    padded = _scatter_columns(queries + 2, keys + 2, rows + offsets, device)
    return padded[1:-1, 1:-1]


def global_mask(pattern: SparsePattern, queries: int, keys: int, device: torch.device) -> torch.Tensor:
    allowed = torch.zeros(queries, keys, dtype=torch.bool, device=device)
    allowed[:, : pattern.global_window] = True
    allowed[: int(pattern.global_window * queries / keys), :] = True
    return allowed


def random_mask(pattern: SparsePattern, queries: int, keys: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device=device)
    generator.manual_seed(pattern.seed)
    return torch.rand(queries * keys, generator=generator, device=device).view(queries, keys) > pattern.sparsity


def _scatter_columns(rows: int, columns: int, positions: torch.Tensor, device: torch.device) -> torch.Tensor:
    allowed = torch.zeros(rows, columns, dtype=torch.bool, device=device)
    index = positions.long().clamp(0, columns - 1)
    allowed.scatter_(1, index, True)
    return allowed


_ELEMENTARY = {"diag": diagonal_mask, "jmask": jump_mask, "global": global_mask, "random": random_mask}


# -- the kernel -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockPlan:
    """How a fixed pattern is computed: per block of queries, the keys any of them needs.

    ``key_index`` ``(blocks, width)`` lists those keys (padded with key 0); ``allowed``
    ``(blocks, QUERY_BLOCK, width)`` says which of them each query sees; ``live`` ``(blocks,
    QUERY_BLOCK, 1, 1)`` is 0 for queries that see no key at all (their output is zero, a sparse
    kernel's sum over nothing), None when every query sees one. Without gathering (it would not save
    work) ``key_index`` is None, ``allowed`` the whole ``(queries, keys)`` mask and ``live``
    ``(queries, 1, 1)``; all three are None when the pattern keeps every pair.
    """

    queries: int
    keys: int
    key_index: torch.Tensor | None
    allowed: torch.Tensor | None
    live: torch.Tensor | None
    kept: float  # share of query-key pairs the pattern keeps


@functools.lru_cache(maxsize=16)
def block_plan(pattern: SparsePattern, queries: int, keys: int, device: torch.device) -> BlockPlan:
    """The plan for one shape, shared by every layer with that pattern (built once, on first use)."""
    with torch.inference_mode(False), torch.no_grad():
        allowed = pattern.mask(queries, keys, device)
        kept = torch.count_nonzero(allowed).item() / allowed.numel()
        if bool(allowed.all()):
            return BlockPlan(queries, keys, None, None, None, 1.0)
        return _gathered_plan(allowed, kept) or _masked_plan(allowed, kept)


def _gathered_plan(allowed: torch.Tensor, kept: float) -> BlockPlan | None:
    queries, keys = allowed.shape
    blocks = -(-queries // QUERY_BLOCK)
    padded = F.pad(allowed, (0, 0, 0, blocks * QUERY_BLOCK - queries)).view(blocks, QUERY_BLOCK, keys)
    needed = padded.any(dim=1)  # (blocks, keys)
    width = int(needed.sum(dim=1).max())
    if width > GATHER_LIMIT * keys:
        return None
    # Needed keys first, in order (a stable sort of "not needed"), then padding to the widest block.
    order = torch.sort((~needed).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    in_block = torch.gather(needed, 1, order)
    key_index = torch.where(in_block, order, 0)
    sub = torch.gather(padded, 2, key_index[:, None, :].expand(-1, QUERY_BLOCK, -1)) & in_block[:, None, :]
    live = sub.any(dim=2, keepdim=True)
    sub[..., :1] |= ~live  # a query with no key attends to one and is zeroed: no NaN in either pass
    # Padding queries are cut off after the product: zeroing is only needed for real ones.
    dead = bool((~live).view(-1)[:queries].any())
    return BlockPlan(queries, keys, key_index, sub, live[..., None].to(torch.float32) if dead else None, kept)


def _masked_plan(allowed: torch.Tensor, kept: float) -> BlockPlan:
    live = allowed.any(dim=1, keepdim=True)
    allowed[:, :1] |= ~live
    dead = not bool(live.all())
    return BlockPlan(*allowed.shape, None, allowed, live[..., None].to(torch.float32) if dead else None, kept)


def planned_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, dropout: float = 0.0
) -> torch.Tensor:
    """Attention of ``q`` ``(B, queries, H, D)`` over ``k``/``v`` ``(B, keys, H, D)`` under
    ``plan``; token-major in and out, so that keys are gathered as whole rows."""
    if plan.allowed is None:
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout
        ).transpose(1, 2)
    if plan.key_index is None:
        return _masked_rows(q, k, v, plan, dropout)
    batch, queries, heads, dim = q.shape
    out = q.new_empty(batch, plan.key_index.shape[0] * QUERY_BLOCK, heads, dim)
    qb = F.pad(q, (0, 0, 0, 0, 0, out.shape[1] - queries))
    # A few blocks at a time: the gathered keys and values stay small (a copy of every block's
    # keys at once would take more memory than dense attention, which never holds its scores).
    for first in range(0, plan.key_index.shape[0], GATHER_BLOCKS):
        blocks = slice(first, first + GATHER_BLOCKS)
        rows = slice(first * QUERY_BLOCK, (first + GATHER_BLOCKS) * QUERY_BLOCK)
        out[:, rows] = _gathered_blocks(qb[:, rows], k, v, plan, blocks, dropout)
    return out[:, :queries]


def _masked_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, dropout: float) -> torch.Tensor:
    """Masked dense attention, ``MASKED_ROWS`` queries at a time (the mask's float form stays small)."""
    out = torch.empty_like(q)
    heads_first = k.transpose(1, 2), v.transpose(1, 2)
    for start in range(0, q.shape[1], MASKED_ROWS):
        rows = slice(start, start + MASKED_ROWS)
        part = F.scaled_dot_product_attention(
            q[:, rows].transpose(1, 2), *heads_first, attn_mask=plan.allowed[rows], dropout_p=dropout
        )
        part = part.transpose(1, 2)
        out[:, rows] = part if plan.live is None else part * plan.live[rows].to(part.dtype)
    return out


def _gathered_blocks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, blocks: slice, dropout: float
) -> torch.Tensor:
    """Attention of the query blocks ``blocks`` (``q`` holds their rows) over their own keys."""
    batch, _, heads, dim = q.shape
    key_index = plan.key_index[blocks]
    count, width = key_index.shape
    # Each block of queries is one batch entry of the product, with its own keys and mask.
    qb = q.reshape(batch * count, QUERY_BLOCK, heads, dim)
    kb = k.index_select(1, key_index.reshape(-1)).view(batch * count, width, heads, dim)
    vb = v.index_select(1, key_index.reshape(-1)).view(batch * count, width, heads, dim)
    allowed = plan.allowed[blocks, None]  # (count, 1, QUERY_BLOCK, width), for every batch entry
    allowed = allowed if batch == 1 else allowed.repeat(batch, 1, 1, 1)
    out = F.scaled_dot_product_attention(
        qb.transpose(1, 2), kb.transpose(1, 2), vb.transpose(1, 2), attn_mask=allowed, dropout_p=dropout
    ).transpose(1, 2)
    if plan.live is not None:
        out = out * plan.live[blocks].repeat(batch, 1, 1, 1).to(out.dtype)
    return out.reshape(batch, count * QUERY_BLOCK, heads, dim)


# -- locality-sensitive hashing (the reference's auto sparsity) ------------------------------------


def lsh_projections(dim: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(dim, LSH_HASHES, LSH_PROJECTION)`` random projections from ``seed`` (drawn on the CPU,
    so the CPU and a GPU hash alike)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dim, LSH_HASHES, LSH_PROJECTION, generator=generator).to(device)


def lsh_buckets(x: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """``(..., tokens, LSH_HASHES)`` bucket of each token in each hash, 0 to ``2 * LSH_PROJECTION - 1``:
    the largest of the token's signed projections."""
    dim = projections.shape[0]
    projected = (x @ projections.reshape(dim, -1).to(x.dtype)).unflatten(-1, (LSH_HASHES, LSH_PROJECTION))
    return torch.cat([projected, -projected], dim=-1).argmax(dim=-1)


def bucket_codes(buckets: torch.Tensor) -> torch.Tensor:
    """``(..., tokens, LSH_HASHES * 4)`` one-hot codes: the product of a query's and a key's codes
    counts the hashes that put them in the same bucket (small integers, exact in float32)."""
    codes = torch.zeros(*buckets.shape, 2 * LSH_PROJECTION, device=buckets.device)
    return codes.scatter_(-1, buckets[..., None], 1.0).flatten(-2)


def shared_buckets(codes_q: torch.Tensor, codes_k: torch.Tensor) -> torch.Tensor:
    """``(..., queries, keys)`` float: how many hashes put each query and key in the same bucket."""
    return codes_q @ codes_k.transpose(-1, -2)


def lsh_histogram(codes_q: torch.Tensor, codes_k: torch.Tensor) -> torch.Tensor:
    """``(..., LSH_HASHES + 1)`` per attention matrix: how many query-key pairs share each
    number of buckets (counted a block of queries at a time)."""
    lead, levels = codes_q.shape[:-2], LSH_HASHES + 1
    matrices = lead.numel()
    # One histogram over every matrix at once: matrix m's counts are shifted to m * levels.
    offsets = (torch.arange(matrices, device=codes_q.device) * levels).view(*lead, 1, 1).float()
    histogram = torch.zeros(matrices * levels, dtype=torch.int64, device=codes_q.device)
    for start in range(0, codes_q.shape[-2], LSH_QUERY_CHUNK):
        counts = shared_buckets(codes_q[..., start : start + LSH_QUERY_CHUNK, :], codes_k) + offsets
        histogram += torch.bincount(counts.round_().long().flatten(), minlength=matrices * levels)
    return histogram.view(*lead, levels)


def lsh_threshold(histogram: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``(...)`` the smallest number of shared buckets that keeps at most ``1 - sparsity`` of the
    pairs of each matrix; at least 1, at most every hash."""
    kept_at_least = histogram.flip(-1).cumsum(-1).flip(-1)  # [c]: pairs sharing c buckets or more
    budget = (1.0 - sparsity) * histogram.sum(dim=-1, keepdim=True)
    too_many = (kept_at_least[..., 1:] > budget).sum(dim=-1)  # thresholds 1, 2, ... that keep too much
    return (too_many + 1).clamp(max=LSH_HASHES)


def lsh_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sparsity: float, projections: torch.Tensor, dropout: float = 0.0
) -> torch.Tensor:
    """Attention where each query sees the keys it shares enough LSH buckets with (see the module
    doc). The pattern differs per head and per input, so each block of queries is a masked dense
    product: the reference's answer, without the saving of its sparse CUDA kernel."""
    with torch.no_grad():
        codes_q = bucket_codes(lsh_buckets(q, projections))
        codes_k = bucket_codes(lsh_buckets(k, projections))
        threshold = lsh_threshold(lsh_histogram(codes_q, codes_k), sparsity)[..., None, None].float()
    outputs = []
    for start in range(0, q.shape[-2], LSH_QUERY_CHUNK):
        rows = slice(start, start + LSH_QUERY_CHUNK)
        with torch.no_grad():
            allowed = shared_buckets(codes_q[..., rows, :], codes_k) >= threshold
            live = allowed.any(dim=-1, keepdim=True)
            allowed[..., :1] |= ~live  # a query with no key attends to one and is zeroed
        out = F.scaled_dot_product_attention(q[..., rows, :], k, v, attn_mask=allowed, dropout_p=dropout)
        outputs.append(out * live.to(out.dtype))
    return torch.cat(outputs, dim=-2)
