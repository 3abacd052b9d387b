"""A sparse-attention HT Demucs made from a dense one: same parameters, the sparse pattern on.

Dense layers keep ``nn.MultiheadAttention``'s layout (one ``in_proj`` for q, k and v, and
``out_proj``); the reference's sparse layers have separate ``q``, ``k``, ``v`` and ``proj``
products. The numbers are the same, so a dense model's weights become a sparse model's by
splitting ``in_proj`` in three and renaming ``out_proj``: the starting point for fine-tuning the
sparse `tiny` from the dense one.
"""

from __future__ import annotations

import torch
from torch import nn

# The sparse `tiny`: a band of 2·64+1 keys around the diagonal (±0.74 s of the waveform tokens,
# ±0.37 s of the spectral ones at 22.05 kHz) and 16 global keys. The reference's default window
# (500) covers every pair of a 4 s `tiny` segment, so it would not be sparse at all.
SPARSE_TINY = dict(
    t_sparse_self_attn=True,
    t_sparse_cross_attn=True,
    t_mask_type="diag_global",
    t_sparse_attn_window=64,
    t_global_window=16,
)


def sparse_state_dict(dense: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``dense``'s tensors under the sparse layers' names (``in_proj`` split into q, k, v)."""
    out = {}
    for name, tensor in dense.items():
        prefix, _, leaf = name.rpartition(".")
        if leaf in ("in_proj_weight", "in_proj_bias"):
            kind = leaf.removeprefix("in_proj_")
            for part, chunk in zip(("q", "k", "v"), tensor.chunk(3, dim=0), strict=True):
                out[f"{prefix}.{part}.{kind}"] = chunk.clone()
        elif ".out_proj." in name and (name.endswith(".weight") or name.endswith(".bias")):
            out[name.replace(".out_proj.", ".proj.")] = tensor
        else:
            out[name] = tensor
    return out


def sparse_from_dense(dense: nn.Module, **pattern) -> nn.Module:
    """A copy of the dense HT Demucs ``dense`` with sparse attention (``SPARSE_TINY`` unless
    ``pattern`` gives the reference's ``t_*`` sparse arguments), loaded strictly."""
    from stemdeck.models.nets.htdemucs import HTDemucs

    if not isinstance(dense, HTDemucs):
        raise ValueError(f"only an HT Demucs has attention to make sparse, not {type(dense).__name__}")
    kwargs = {**dense.init_kwargs, **(pattern or SPARSE_TINY)}
    sparse = HTDemucs(**kwargs)
    sparse.load_state_dict(sparse_state_dict(dense.state_dict()), strict=True)
    return sparse.to(next(dense.parameters()).dtype)
