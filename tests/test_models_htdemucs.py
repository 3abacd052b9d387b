"""HT Demucs against the reference implementation: same weights, same numbers (1e-4 max abs)."""

import pytest
import torch
from conftest import HTDEMUCS_6S_KW, make_pair

from stemdeck.models import HTDemucs

TOLERANCE = 1e-4


def _max_error(reference, ours, length, seed=0):
    torch.manual_seed(seed)
    mix = torch.randn(1, reference.audio_channels, length)
    with torch.no_grad():
        expected = reference(mix)
        actual = ours(mix)
    assert actual.shape == expected.shape == (1, len(ours.sources), 2, length)
    return (actual - expected).abs().max().item()


@pytest.mark.parametrize(
    "length",
    [
        44100 * 2 + 1,  # shorter than the segment, odd
        333333,  # odd, not a multiple of the hop
        int(7.8 * 44100),  # exactly the training segment
    ],
)
def test_htdemucs_matches_reference(htdemucs_pair, length, monkeypatch):
    from stemdeck.models.nets import inference_paths, rewrite_blocked, winograd

    reference, ours = htdemucs_pair
    monkeypatch.setattr(inference_paths, "_MEMORY_FOR_SPEED", [True])  # as `play` and the mixer run
    winograd_layers, blocked_layers = [], []
    plain = winograd.rewrite_glu
    monkeypatch.setattr(winograd, "rewrite_glu", lambda conv, y: winograd_layers.append(conv) or plain(conv, y))
    pieces = rewrite_blocked.rewrite_glu

    def record(conv, y, skip=None):
        blocked_layers.append((y.dim(), conv.in_channels, skip is not None))
        return pieces(conv, y, skip)

    monkeypatch.setattr(rewrite_blocked, "rewrite_glu", record)
    assert _max_error(reference, ours, length) < TOLERANCE
    assert len(winograd_layers) == 2  # decoder layers 0 and 1 (384 and 192 channels) ran Winograd's convs
    # in pieces: the outermost waveform layers (1-D) and spectral ones (2-D), the decoders' with
    # their skip connection added piece by piece
    assert sorted(blocked_layers) == [
        (3, 48, False),
        (3, 48, True),
        (4, 48, False),
        (4, 48, True),
        (4, 96, False),
        (4, 96, True),
    ]


def test_htdemucs_6s_matches_reference():
    from demucs.htdemucs import HTDemucs as Reference

    reference, ours = make_pair(Reference, HTDemucs, HTDEMUCS_6S_KW, seed=3)
    assert ours.sources == ["drums", "bass", "other", "vocals", "guitar", "piano"]
    assert _max_error(reference, ours, 44100 * 3 + 7) < TOLERANCE


def test_state_dict_keys_and_shapes_equal_the_reference(htdemucs_pair):
    reference, ours = htdemucs_pair
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)
    assert all(our_state[k].shape == ref_state[k].shape for k in ref_state)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("emb", ["cape", "scaled"])
def test_other_positional_embeddings_match_reference(emb):
    from demucs.htdemucs import HTDemucs as Reference

    kwargs = dict(
        sources=["a", "b"], channels=8, depth=4, t_layers=2, t_heads=2, t_emb=emb, bottom_channels=0, segment=2
    )
    reference, ours = make_pair(Reference, HTDemucs, kwargs)
    assert _max_error(reference, ours, 44100 + 3) < TOLERANCE


def test_post_norm_transformer_without_layer_scale_matches_reference():
    from demucs.htdemucs import HTDemucs as Reference

    kwargs = dict(
        sources=["a", "b"],
        channels=8,
        depth=4,
        t_layers=3,
        t_heads=2,
        t_norm_first=False,
        t_layer_scale=False,
        t_cross_first=True,
        segment=2,
    )
    reference, ours = make_pair(Reference, HTDemucs, kwargs)
    assert _max_error(reference, ours, 44100 + 3) < TOLERANCE


def test_without_train_segment_runs_on_the_short_sequence():
    model = HTDemucs(
        sources=["a", "b"], channels=8, depth=4, t_layers=2, t_heads=2, segment=4, use_train_segment=False
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 2, 10000))
    assert out.shape == (1, 2, 2, 10000)


def test_sparse_attention_builds_with_the_reference_layout():
    # Sparse layers keep the reference's separate q/k/v/proj products (tests/test_models_sparse_attention.py).
    model = HTDemucs(sources=["a"], channels=8, t_layers=2, t_heads=2, t_sparse_self_attn=True)
    names = set(model.state_dict())
    assert "crosstransformer.layers.0.self_attn.q.weight" in names
    assert "crosstransformer.layers.1.cross_attn.in_proj_weight" in names  # cross-attention stays dense


def test_longer_input_than_training_segment_is_refused():
    model = HTDemucs(sources=["a", "b"], channels=8, depth=4, t_layers=2, t_heads=2, segment=1).eval()
    with pytest.raises(ValueError, match="longer than the model's training segment"):
        model(torch.randn(1, 2, 44100 * 2))


def test_training_forward_backward_runs():
    model = HTDemucs(sources=["a", "b"], channels=8, depth=4, t_layers=2, t_heads=2, segment=1)
    model.train()
    out = model(torch.randn(2, 2, 44100))
    out.abs().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_training_after_inference_reuses_no_inference_tensors():
    model = HTDemucs(sources=["a", "b"], channels=8, depth=4, t_layers=2, t_heads=2, segment=1)
    with torch.inference_mode():
        model.eval()(torch.randn(1, 2, 44100))
    model.train()
    model(torch.randn(1, 2, 44100)).mean().backward()
    assert model.crosstransformer.norm_in.weight.grad is not None
