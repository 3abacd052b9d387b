"""Sparse attention (issue 17, part 1): the reference's sparse configurations load and separate,
their patterns are the reference's, and the kernel equals masked attention.

The reference builds sparse models without xformers (its kernels are imported only when a mask is
made or attention runs), so checkpoints are written here by the reference itself; its own mask
function (``demucs.transformer.get_elementary_mask``, plain PyTorch) is the oracle for patterns.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY_HT_KW
from torch.nn import functional as F

from stemdeck.models import CheckpointError, HTDemucs, load_checkpoint, save_safetensors
from stemdeck.models.checkpoint import _encode_json
from stemdeck.models.limits import LimitError, check_hyperparameters
from stemdeck.models.nets import sparse
from stemdeck.models.nets.sparse import SparsePattern, block_plan, planned_attention
from stemdeck.models.nets.transformer import Attention, SparseAttention

SPARSE_KW = dict(
    TINY_HT_KW,
    t_sparse_self_attn=True,
    t_sparse_cross_attn=True,
    t_mask_type="diag_global_random",
    t_sparse_attn_window=6,
    t_global_window=4,
    t_sparsity=0.9,
    segment=1,  # the 1 s the tests separate, unpadded: fewer tokens, faster tests
)
# (queries, keys): self-attention, and cross-attention both ways with awkward ratios.
SHAPES = [(64, 64), (200, 200), (130, 64), (64, 130), (343, 172), (97, 301)]


def reference_mask(kind: str, queries: int, keys: int, pattern: SparsePattern) -> torch.Tensor:
    from demucs.transformer import get_elementary_mask

    return get_elementary_mask(
        keys, queries, kind, pattern.window, pattern.global_window, pattern.seed, pattern.sparsity, "cpu"
    )


def _write_reference_th(model, folder):
    from demucs.states import save_with_checksum, serialize_model
    from omegaconf import OmegaConf

    package = serialize_model(model, OmegaConf.create({"dset": {"segment": 2}}), half=False)
    save_with_checksum(package, folder / "5a15e001.th")
    return next(folder.glob("5a15e001-*.th"))


def _separate(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(torch.randn(1, 2, 44100))


def _transformer_tokens(model, seed=0) -> torch.Tensor:
    """The spectral branch's tokens out of the transformer while ``model`` separates: where the
    attention pattern shows most (the decoder after it scales everything down)."""
    seen = []
    hook = model.crosstransformer.register_forward_hook(lambda module, args, out: seen.append(out[0]))
    try:
        _separate(model, seed)
    finally:
        hook.remove()
    return seen[0]


def _strong_transformer(model):
    """LayerScales at 1: at their initial 1e-4 the transformer barely touches the output, and a
    comparison of attention patterns through the whole model could not fail."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("crosstransformer") and ".gamma_" in name:
                parameter.fill_(1.0)
    return model


def _as_dense_state(state: dict) -> dict:
    """A sparse model's weights in the dense layout: q, k, v stacked into in_proj, proj as out_proj."""
    dense = {}
    for name, value in state.items():
        prefix, _, leaf = name.rpartition(".")
        owner, _, part = prefix.rpartition(".")
        if part in ("q", "k", "v") and owner.endswith("attn"):
            if part == "q":
                stack = [state[f"{owner}.{p}.{leaf}"] for p in ("q", "k", "v")]
                dense[f"{owner}.in_proj_{leaf}"] = torch.cat(stack)
        elif part == "proj" and owner.endswith("attn"):
            dense[f"{owner}.out_proj.{leaf}"] = value
        else:
            dense[name] = value
    return dense


# -- loading what the reference writes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},
        dict(t_sparse_cross_attn=False, t_mask_type="diag"),
        dict(t_sparse_self_attn=False, t_mask_type="jmask_global"),
        dict(t_auto_sparsity=True, t_sparsity=0.8),
    ],
    ids=["all-diag_global_random", "self-diag", "cross-jmask_global", "auto-lsh"],
)
def test_reference_sparse_checkpoint_loads_and_separates(tmp_path, changes):
    from demucs.htdemucs import HTDemucs as Reference

    kwargs = dict(SPARSE_KW, **changes)
    torch.manual_seed(3)
    reference = _strong_transformer(Reference(**kwargs))
    ours = load_checkpoint(_write_reference_th(reference, tmp_path))
    kinds = {type(module) for module in ours.crosstransformer.modules()}
    assert SparseAttention in kinds
    assert (Attention in kinds) == (not kwargs["t_sparse_self_attn"] or not kwargs["t_sparse_cross_attn"])
    mine = ours.state_dict()
    assert all(torch.equal(value, mine[name]) for name, value in reference.state_dict().items())
    out = _separate(ours)
    assert out.shape == (1, 4, 2, 44100) and torch.isfinite(out).all()
    # The pattern matters: the same weights with every key visible separate differently.
    everything = HTDemucs(**dict(kwargs, t_mask_type="diag", t_sparse_attn_window=10**5, t_auto_sparsity=False))
    everything.load_state_dict(mine)
    tokens = _transformer_tokens(ours)
    assert (_transformer_tokens(everything.eval()) - tokens).abs().max() > 0.01 * tokens.abs().max()
    assert torch.equal(_separate(ours), out)  # the same pattern every run (LSH seeded too)


def test_sparse_model_round_trips_through_our_safetensors(tmp_path):
    torch.manual_seed(4)
    model = _strong_transformer(HTDemucs(**SPARSE_KW).eval())
    path = tmp_path / "sparse.safetensors"
    save_safetensors(model, path)
    again = load_checkpoint(path)
    assert torch.equal(_separate(again), _separate(model))


def test_pattern_of_everything_equals_dense_attention():
    kwargs = dict(SPARSE_KW, t_mask_type="diag", t_sparse_attn_window=100_000)
    torch.manual_seed(5)
    model = _strong_transformer(HTDemucs(**kwargs).eval())
    dense_kwargs = {k: v for k, v in kwargs.items() if not k.startswith(("t_sparse", "t_mask"))}
    dense = HTDemucs(**dense_kwargs).eval()
    dense.load_state_dict(_as_dense_state(model.state_dict()), strict=True)
    assert (_separate(model) - _separate(dense)).abs().max() < 1e-5
    tokens = _transformer_tokens(model)
    assert (tokens - _transformer_tokens(dense)).abs().max() < 1e-5 * max(1.0, tokens.abs().max().item())


def test_a_gathered_plan_of_every_key_equals_dense_attention():
    torch.manual_seed(6)
    q, k, v = (torch.randn(2, n, 4, 8) for n in (300, 170, 170))
    blocks = -(-300 // sparse.QUERY_BLOCK)
    plan = sparse.BlockPlan(
        300,
        170,
        torch.arange(170).expand(blocks, -1),
        torch.ones(blocks, sparse.QUERY_BLOCK, 170, dtype=torch.bool),
        torch.ones(blocks, sparse.QUERY_BLOCK, 1, 1),
        1.0,
    )
    dense = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    assert (planned_attention(q, k, v, plan) - dense).abs().max() < 1e-5


# -- the kernel equals masked attention ---------------------------------------------------------------


def _masked_attention(q, k, v, allowed):
    """Softmax over the allowed keys only; a query with none gets zeros (a sparse sum over nothing)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    weights = scores.masked_fill(~allowed, -math.inf).softmax(dim=-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bkhd->bqhd", weights, v)


@pytest.mark.parametrize("mask_type", ["diag", "jmask", "global", "random", "diag_global", "diag_jmask_random"])
@pytest.mark.parametrize("queries,keys", [(300, 300), (410, 150), (150, 410)])
def test_planned_attention_equals_masked_attention(mask_type, queries, keys):
    pattern = SparsePattern.from_mask_type(mask_type, window=7, global_window=5, seed=11, sparsity=0.97)
    torch.manual_seed(7)
    q, k, v = torch.randn(2, queries, 4, 8), torch.randn(2, keys, 4, 8), torch.randn(2, keys, 4, 8)
    plan = block_plan(pattern, queries, keys, torch.device("cpu"))
    expected = _masked_attention(q, k, v, pattern.mask(queries, keys))
    assert (planned_attention(q, k, v, plan) - expected).abs().max() < 1e-5


def test_a_narrow_diagonal_computes_a_fraction_of_the_pairs():
    queries = keys = 4000
    plan = block_plan(SparsePattern(("diag",), window=50), queries, keys, torch.device("cpu"))
    blocks, width = plan.key_index.shape
    assert width == sparse.QUERY_BLOCK + 2 * 50  # a block's queries span its own keys plus the window
    assert blocks * sparse.QUERY_BLOCK * width < 0.06 * queries * keys
    assert plan.kept == pytest.approx(101 / keys, rel=0.03)


def test_a_query_that_sees_no_key_gets_zeros_not_nan():
    pattern = SparsePattern(("random",), seed=0, sparsity=0.999)
    q, k, v = torch.randn(1, 200, 2, 4), torch.randn(1, 100, 2, 4), torch.randn(1, 100, 2, 4)
    allowed = pattern.mask(200, 100)
    empty = ~allowed.any(dim=1)
    assert empty.sum() > 100  # most queries see nothing at this sparsity
    out = planned_attention(q, k, v, block_plan(pattern, 200, 100, torch.device("cpu")))
    assert torch.isfinite(out).all() and out[:, empty].abs().max() == 0
    assert (out - _masked_attention(q, k, v, allowed)).abs().max() < 1e-5


# -- the patterns are the reference's -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["diag", "jmask", "global", "random"])
@pytest.mark.parametrize("queries,keys", SHAPES)
def test_each_pattern_equals_the_reference_mask(kind, queries, keys):
    pattern = SparsePattern((kind,), window=9, global_window=6, seed=1234, sparsity=0.9)
    assert torch.equal(pattern.mask(queries, keys), reference_mask(kind, queries, keys, pattern))


def test_diagonal_window_width_and_position():
    window, tokens = 10, 200
    allowed = SparsePattern(("diag",), window=window).mask(tokens, tokens)
    counts = allowed.sum(dim=1)
    assert counts[window:-window].eq(2 * window + 1).all()  # away from the edges: 2w + 1 keys
    assert counts[0] == window + 1 and counts[-1] == window + 1
    rows, cols = allowed.nonzero().T
    assert (rows - cols).abs().max() == window
    # A window wider than the sequence keeps everything (the "everything" configuration).
    assert SparsePattern(("diag",), window=10**5).mask(50, 70).all()


def test_global_pattern_rows_and_columns():
    allowed = SparsePattern(("global",), global_window=8).mask(120, 60)
    line_window = int(8 * 120 / 60)  # the reference's scaled count of full rows: 16
    assert allowed[:line_window].all() and allowed[:, :8].all()
    assert allowed[line_window:].sum(dim=1).eq(8).all()


def test_random_pattern_is_deterministic_for_a_seed_and_keeps_one_minus_sparsity():
    first = SparsePattern(("random",), seed=7, sparsity=0.9).mask(300, 200)
    assert torch.equal(first, SparsePattern(("random",), seed=7, sparsity=0.9).mask(300, 200))
    other = SparsePattern(("random",), seed=8, sparsity=0.9).mask(300, 200)
    assert (first != other).float().mean() > 0.1
    kept, pairs = first.float().mean().item(), 300 * 200
    assert abs(kept - 0.1) < 4 * math.sqrt(0.1 * 0.9 / pairs)


def test_combined_patterns_are_the_union_in_any_order():
    a = SparsePattern.from_mask_type("diag_global_random", window=3, global_window=2, seed=5, sparsity=0.95)
    b = SparsePattern.from_mask_type("random_diag_global", window=3, global_window=2, seed=5, sparsity=0.95)
    union = torch.zeros(90, 45, dtype=torch.bool)
    for kind in ("diag", "global", "random"):
        union |= reference_mask(kind, 90, 45, a)
    assert torch.equal(a.mask(90, 45), union) and torch.equal(b.mask(90, 45), union)


# -- locality-sensitive hashing --------------------------------------------------------------------------


def test_lsh_buckets_are_deterministic_for_a_seed_and_differ_for_another():
    x = torch.randn(2, 4, 100, 16)
    first = sparse.lsh_buckets(x, sparse.lsh_projections(16, seed=42))
    assert first.shape == (2, 4, 100, sparse.LSH_HASHES) and 0 <= first.min() and first.max() <= 3
    assert torch.equal(first, sparse.lsh_buckets(x, sparse.lsh_projections(16, seed=42)))
    other = sparse.lsh_buckets(x, sparse.lsh_projections(16, seed=43))
    assert (first != other).float().mean() > 0.5
    assert set(first.unique().tolist()) == {0, 1, 2, 3}  # four buckets per hash, all used


def test_lsh_buckets_are_the_argmax_of_the_signed_projections():
    x, projections = torch.randn(50, 8), sparse.lsh_projections(8, seed=1)
    expected = torch.empty(50, sparse.LSH_HASHES, dtype=torch.long)
    for h in range(sparse.LSH_HASHES):
        p = x @ projections[:, h, :]  # (50, 2)
        expected[:, h] = torch.cat([p, -p], dim=1).argmax(dim=1)
    assert torch.equal(sparse.lsh_buckets(x, projections), expected)


def test_lsh_threshold_keeps_at_most_one_minus_sparsity_and_no_lower_threshold_would():
    torch.manual_seed(8)
    q, k = torch.randn(3, 400, 16), torch.randn(3, 250, 16)
    projections = sparse.lsh_projections(16, seed=2)
    codes_q = sparse.bucket_codes(sparse.lsh_buckets(q, projections))
    codes_k = sparse.bucket_codes(sparse.lsh_buckets(k, projections))
    counts = sparse.shared_buckets(codes_q, codes_k)
    brute = (sparse.lsh_buckets(q, projections)[:, :, None] == sparse.lsh_buckets(k, projections)[:, None]).sum(-1)
    assert torch.equal(counts, brute.float())
    for sparsity in (0.5, 0.9, 0.98):
        threshold = sparse.lsh_threshold(sparse.lsh_histogram(codes_q, codes_k), sparsity)
        for m in range(3):
            kept = (counts[m] >= threshold[m]).float().mean()
            assert kept <= 1 - sparsity
            assert threshold[m] == 1 or (counts[m] >= threshold[m] - 1).float().mean() > 1 - sparsity


def test_lsh_attention_equals_masked_attention_under_its_own_pattern():
    torch.manual_seed(9)
    q, k, v = torch.randn(1, 2, 600, 8), torch.randn(1, 2, 300, 8), torch.randn(1, 2, 300, 8)
    projections = sparse.lsh_projections(8, seed=3)
    codes_q = sparse.bucket_codes(sparse.lsh_buckets(q, projections))
    codes_k = sparse.bucket_codes(sparse.lsh_buckets(k, projections))
    threshold = sparse.lsh_threshold(sparse.lsh_histogram(codes_q, codes_k), 0.9)
    allowed = sparse.shared_buckets(codes_q, codes_k) >= threshold[..., None, None]
    assert 0.02 < allowed.float().mean() <= 0.1
    expected = _masked_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), allowed)
    out = sparse.lsh_attention(q, k, v, 0.9, projections).transpose(1, 2)
    assert (out - expected).abs().max() < 1e-5


def test_auto_sparsity_model_is_deterministic_for_a_seed_and_differs_for_another():
    kwargs = dict(SPARSE_KW, t_auto_sparsity=True, t_sparsity=0.8)
    torch.manual_seed(10)
    model = _strong_transformer(HTDemucs(**kwargs).eval())
    other = HTDemucs(**dict(kwargs, t_mask_random_seed=43)).eval()
    other.load_state_dict(model.state_dict())
    tokens = _transformer_tokens(model)
    assert torch.equal(tokens, _transformer_tokens(model))
    assert (tokens - _transformer_tokens(other)).abs().max() > 0.01 * tokens.abs().max()


# -- hostile configurations ------------------------------------------------------------------------------

HOSTILE = {
    "t_mask_type": ["diag_bogus", "diag_diag", "", 7, "_".join(["diag"] * 1000)],
    "t_sparse_attn_window": [-1, 10**9, 2.5, float("nan")],
    "t_global_window": [-5, 10**12],
    "t_sparsity": [-0.1, 1.5, float("nan"), float("inf")],
    "t_mask_random_seed": [-1, 2**40],
}


@pytest.mark.parametrize(
    "name,value", [(name, value) for name, values in HOSTILE.items() for value in values], ids=repr
)
def test_hostile_sparse_values_are_refused_in_one_line(tmp_path, name, value):
    from safetensors.torch import save_file

    kwargs = dict(_encode_json(HTDemucs(**SPARSE_KW).init_kwargs), **{name: value})
    path = tmp_path / "hostile.safetensors"
    metadata = {"klass": "demucs.htdemucs.HTDemucs", "args": "[]", "kwargs": json.dumps(kwargs)}
    save_file({"x": torch.zeros(1)}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and name in message and len(message) < 400


def test_every_documented_mask_combination_is_accepted():
    base = dict(HTDemucs(**SPARSE_KW).init_kwargs)
    for mask_type in ("diag", "jmask", "random", "global", "diag_jmask_random", "global_random_diag_jmask"):
        check_hyperparameters(dict(base, t_mask_type=mask_type))
    with pytest.raises(LimitError, match="t_mask_type must be diag, jmask, random, global"):
        check_hyperparameters(dict(base, t_mask_type="diag_local"))


def test_int8_precision_runs_a_sparse_model():
    """int8 swaps the sparse layers' q/k/v/proj products too (bfloat16 needs nothing sparse-specific)."""
    from stemdeck.models.precision import prepare_model

    torch.manual_seed(12)
    model = _strong_transformer(HTDemucs(**SPARSE_KW).eval())
    reference = _separate(model)
    fast = prepare_model(model, "int8", torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.Linear) for m in fast.crosstransformer.modules())
    out = _separate(fast)
    snr_db = 10 * torch.log10(reference.pow(2).sum() / (out - reference).pow(2).sum())
    assert snr_db > 20


# -- the sparse `tiny`, made from dense weights ------------------------------------------------------


def test_a_dense_model_becomes_sparse_with_its_weights_and_a_full_pattern_changes_nothing():
    from stemdeck.models.training.sparsify import sparse_from_dense

    torch.manual_seed(8)
    dense = _strong_transformer(HTDemucs(**dict(TINY_HT_KW, segment=1)).eval())
    everything = dict(t_sparse_self_attn=True, t_sparse_cross_attn=True, t_mask_type="diag", t_sparse_attn_window=10**5)
    full = sparse_from_dense(dense, **everything).eval()
    narrow = sparse_from_dense(dense, **dict(everything, t_mask_type="diag_global", t_sparse_attn_window=2)).eval()
    assert sum(p.numel() for p in full.parameters()) == sum(p.numel() for p in dense.parameters())
    assert isinstance(full.crosstransformer.layers[0].self_attn, SparseAttention)
    assert full.init_kwargs["t_sparse_attn_window"] == 10**5  # saved with the weights
    assert torch.equal(
        _as_dense_state(full.state_dict())["crosstransformer.layers.0.self_attn.in_proj_weight"],
        dense.state_dict()["crosstransformer.layers.0.self_attn.in_proj_weight"],
    )
    assert (_separate(full) - _separate(dense)).abs().max() < 1e-5
    tokens = _transformer_tokens(dense)
    assert (_transformer_tokens(narrow) - tokens).abs().max() > 1e-3 * tokens.abs().max()  # the pattern bites


def test_only_an_ht_demucs_is_made_sparse():
    from stemdeck.models.nets.passthrough import PassThrough
    from stemdeck.models.training.sparsify import sparse_from_dense

    with pytest.raises(ValueError, match="only an HT Demucs has attention to make sparse, not PassThrough"):
        sparse_from_dense(PassThrough(["drums", "bass", "other", "vocals"]))
