"""Chunked separation against the reference ``apply_model`` and the numpy API's contract."""
import numpy as np
import pytest
import torch

from conftest import HDEMUCS_MMI_KW, TINY_HT_KW, make_pair
from models import BagOfModels, HDemucs, HTDemucs, apply_model, separate
from models.separate import Span, transition_weights


def test_20_second_chunked_separation_matches_reference(htdemucs_pair):
    from demucs.apply import apply_model as reference_apply

    reference, ours = htdemucs_pair
    torch.manual_seed(0)
    mix = torch.randn(1, 2, 20 * 44100 + 123)
    expected = reference_apply(reference, mix, shifts=0, overlap=0.25)
    actual = apply_model(ours, mix, overlap=0.25, precision="fp32")
    assert actual.shape == expected.shape == (1, 4, 2, mix.shape[-1])
    assert (actual - expected).abs().max().item() < 1e-4


def test_chunked_hdemucs_with_bag_segment_matches_reference():
    from demucs.apply import BagOfModels as ReferenceBag, apply_model as reference_apply
    from demucs.hdemucs import HDemucs as Reference

    kwargs = dict(HDEMUCS_MMI_KW, channels=8)
    reference, ours = make_pair(Reference, HDemucs, kwargs, seed=4)
    reference_bag, our_bag = ReferenceBag([reference], segment=2), BagOfModels([ours], segment=2)
    mix = torch.randn(1, 2, 5 * 44100 + 9)
    expected = reference_apply(reference_bag, mix, shifts=0, overlap=0.25)
    actual = apply_model(our_bag, mix, overlap=0.25, precision="fp32")
    assert (actual - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("overlap,segment", [(0.5, None), (0.1, 1.5)])
def test_bag_weights_and_overrides_match_reference(overlap, segment):
    from demucs.apply import BagOfModels as ReferenceBag, apply_model as reference_apply
    from demucs.htdemucs import HTDemucs as Reference

    pairs = [make_pair(Reference, HTDemucs, TINY_HT_KW, seed=s) for s in (1, 2)]
    weights = [[1.0, 0.0, 0.5, 2.0], [0.0, 1.0, 0.5, 1.0]]
    reference_bag = ReferenceBag([p[0] for p in pairs], weights)
    our_bag = BagOfModels([p[1] for p in pairs], weights)
    mix = torch.randn(1, 2, 3 * 44100 + 1)
    expected = reference_apply(reference_bag, mix, shifts=0, overlap=overlap, segment=segment)
    actual = apply_model(our_bag, mix, overlap=overlap, segment=segment, precision="fp32")
    assert (actual - expected).abs().max().item() < 1e-4


def test_bag_forward_is_the_weighted_average(tiny_model):
    bag = BagOfModels([tiny_model, tiny_model], [[1, 1, 1, 1], [3, 1, 0, 1]]).eval()
    mix = torch.randn(1, 2, 1000)
    with torch.no_grad():
        assert torch.allclose(bag(mix), tiny_model(mix), atol=1e-6)


def test_numpy_api_matches_reference_normalisation(tiny_model):
    """The reference API normalises by the mono mix's mean and std; so do we."""
    from demucs.apply import apply_model as reference_apply

    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((2, 3 * 44100)) * 0.2 + 0.05).astype(np.float32)
    stems = separate(tiny_model, audio, 44100, precision="fp32")
    wav = torch.from_numpy(audio)
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    expected = reference_apply(tiny_model, ((wav - mean) / std)[None], shifts=0, overlap=0.25)[0] * std + mean
    for index, name in enumerate(tiny_model.sources):
        assert stems[name].shape == (2, audio.shape[1]) and stems[name].dtype == np.float32
        assert np.abs(stems[name] - expected[index].numpy()).max() < 1e-4


@pytest.mark.parametrize("channels,samplerate", [(1, 44100), (2, 48000), (1, 22050)])
def test_numpy_api_keeps_the_input_layout_and_rate(tiny_model, channels, samplerate):
    audio = np.random.default_rng(1).standard_normal((channels, samplerate * 2 + 3)).astype(np.float32) * 0.1
    stems = separate(tiny_model, audio, samplerate)
    assert list(stems) == tiny_model.sources
    assert all(s.shape == audio.shape and s.dtype == np.float32 for s in stems.values())


def test_numpy_api_rejects_ambiguous_shapes(tiny_model):
    with pytest.raises(ValueError, match="1 or 2 channels"):
        separate(tiny_model, np.zeros((44100, 2), np.float32), 44100)
    with pytest.raises(ValueError, match=r"\(channels, frames\)"):
        separate(tiny_model, np.zeros(100, np.float32), 44100)


def test_silence_and_empty_input(tiny_model):
    silent = separate(tiny_model, np.zeros((2, 4410), np.float32), 44100)
    assert all(np.all(np.isfinite(s)) for s in silent.values())
    empty = separate(tiny_model, np.zeros((2, 0), np.float32), 44100)
    assert all(s.shape == (2, 0) for s in empty.values())


def test_shifts_are_seeded_and_average_to_the_same_scale(tiny_model):
    mix = torch.randn(1, 2, 2 * 44100)
    a = apply_model(tiny_model, mix, shifts=2, seed=7)
    b = apply_model(tiny_model, mix, shifts=2, seed=7)
    plain = apply_model(tiny_model, mix)
    assert torch.equal(a, b)
    assert a.shape == plain.shape
    assert 0.5 < a.std().item() / plain.std().item() < 2.0


def test_span_padding_reads_real_neighbours_and_zeros_outside():
    base = torch.arange(10.0)[None, None]
    assert Span(base, 4, 2).padded(6).flatten().tolist() == [2, 3, 4, 5, 6, 7]
    assert Span(base, 0, 2).padded(6).flatten().tolist() == [0, 0, 0, 1, 2, 3]
    assert Span(base, 8, 2).padded(6).flatten().tolist() == [6, 7, 8, 9, 0, 0]


def test_transition_weights_are_triangular():
    weights = transition_weights(6)
    assert weights.tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3])
    assert transition_weights(5, 2.0).max().item() == 1.0


def test_bf16_precision_stays_close_to_fp32(tiny_model):
    mix = torch.randn(1, 2, 2 * 44100)
    exact = apply_model(tiny_model, mix, precision="fp32")
    fast = apply_model(tiny_model, mix, precision="bf16")
    snr_db = 10 * torch.log10(exact.pow(2).sum() / (exact - fast).pow(2).sum())
    assert fast.dtype == torch.float32
    assert snr_db.item() > 30


def test_unknown_precision_is_refused(tiny_model):
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        apply_model(tiny_model, torch.zeros(1, 2, 100), precision="fp8")
