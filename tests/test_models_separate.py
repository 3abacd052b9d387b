"""Chunked separation against the reference ``apply_model`` and the numpy API's contract."""

import itertools

import numpy as np
import pytest
import torch
from conftest import HDEMUCS_MMI_KW, HTDEMUCS_KW, TINY_HT_KW, make_pair

from stemdeck.models import BagOfModels, HDemucs, HTDemucs, apply_model, separate
from stemdeck.models.separate import Span, transition_weights


def test_20_second_chunked_separation_matches_reference():
    """The chunking (segments, overlap weights, the last short chunk) over a song of several of
    htdemucs's 7.8 s segments; a narrow model with that segment (the full width's forward is
    test_models_htdemucs's: here it only cost time)."""
    from demucs.apply import apply_model as reference_apply
    from demucs.htdemucs import HTDemucs as Reference

    reference, ours = make_pair(Reference, HTDemucs, dict(TINY_HT_KW, segment=HTDEMUCS_KW["segment"]))
    torch.manual_seed(0)
    mix = torch.randn(1, 2, 20 * 44100 + 123)
    expected = reference_apply(reference, mix, shifts=0, overlap=0.25)
    actual = apply_model(ours, mix, overlap=0.25, precision="fp32")
    assert actual.shape == expected.shape == (1, 4, 2, mix.shape[-1])
    assert (actual - expected).abs().max().item() < 1e-4


def test_chunked_hdemucs_with_bag_segment_matches_reference():
    from demucs.apply import BagOfModels as ReferenceBag
    from demucs.apply import apply_model as reference_apply
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
    from demucs.apply import BagOfModels as ReferenceBag
    from demucs.apply import apply_model as reference_apply
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
    expected = reference_apply(tiny_model, ((wav - mean) / std)[None], shifts=0, overlap=0.25)[0] * std
    expected += mean / len(tiny_model.sources)  # the reference adds all of the mean to every stem
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


# -- hostile input (issue 11 item 4) and progress (issue 10 item 7) ---------------------------------


def _with(frames, index, value, channels=2):
    audio = np.random.default_rng(3).standard_normal((channels, frames)).astype(np.float32) * 0.1
    audio[0, index] = value
    return audio


@pytest.mark.parametrize(
    "audio",
    [
        _with(22050, 100, np.nan),
        _with(22050, 0, np.inf),
        _with(22050, -1, -np.inf),
        np.full((2, 1), 0.3, np.float32),
        np.full((1, 2), -0.2, np.float32),
        np.zeros((2, 22050), np.float32),
        np.full((2, 5000), 0.25, np.float32),
        np.full((1, 3000), 1e30, np.float32),
    ],
    ids=["nan", "inf", "minus-inf", "one-frame", "two-frames", "silent", "constant", "huge"],
)
def test_stems_are_finite_whatever_the_input(tiny_model, audio):
    stems = separate(tiny_model, audio, 44100, precision="fp32")
    for name, stem in stems.items():
        assert stem.shape == audio.shape and stem.dtype == np.float32
        assert np.all(np.isfinite(stem)), name


def test_a_nan_sample_is_separated_as_silence(tiny_model):
    """Not a constant -1: the stems equal those of the same audio with a zero there."""
    audio = _with(44100, 500, np.nan)
    zeroed = audio.copy()
    zeroed[0, 500] = 0.0
    got, expected = (separate(tiny_model, a, 44100, precision="fp32") for a in (audio, zeroed))
    for name in tiny_model.sources:
        assert np.abs(got[name] - expected[name]).max() < 1e-6
        assert got[name].std() > 1e-3


def test_silence_gives_silent_stems(tiny_model):
    stems = separate(tiny_model, np.zeros((2, 22050), np.float32), 44100, precision="fp32")
    assert max(float(np.abs(s).max()) for s in stems.values()) < 1e-6


def test_normalisation_of_short_and_silent_mixes():
    from stemdeck.models.separate import normalisation

    assert normalisation(np.full((2, 1), 0.5, np.float32)) == (0.5, 1e-8)
    assert normalisation(np.zeros((1, 100), np.float32)) == (0.0, 1e-8)
    assert normalisation(np.zeros((2, 0), np.float32)) == (0.0, 1.0)
    mean, std = normalisation(np.array([[3e38, -3e38, 3e38, -3e38]], np.float32))
    assert mean == pytest.approx(0.0, abs=1e25) and np.isfinite(std) and std > 3e38


def _fractions(model, frames, **kwargs):
    seen = []
    separate(
        model,
        np.random.default_rng(0).standard_normal((2, frames)).astype(np.float32) * 0.1,
        44100,
        progress=seen.append,
        precision="fp32",
        **kwargs,
    )
    return seen


@pytest.fixture
def two_second_model():
    """Chunks are counted, not listened to: the pass-through runs them without inference time."""
    from stemdeck.models.nets.passthrough import PassThrough

    return PassThrough(segment=2.0)


@pytest.mark.parametrize("kwargs,calls", [({}, 4), ({"shifts": 2}, 2 * 4), ({"overlap": 0.5}, 5)])
def test_progress_rises_to_one_once_per_chunk(two_second_model, kwargs, calls):
    """5 s in 2 s chunks every 1.5 s: 4 chunks (per shift); at overlap 0.5, every 1 s: 5."""
    seen = _fractions(two_second_model, 5 * 44100, **kwargs)
    assert len(seen) == calls
    assert all(0 < a < b for a, b in itertools.pairwise(seen))
    assert seen[-1] == 1.0


def test_progress_of_a_bag_covers_every_model(two_second_model):
    bag = BagOfModels([two_second_model, two_second_model], [[1, 1, 1, 1], [1, 1, 1, 1]])
    seen = _fractions(bag, 3 * 44100)
    assert seen == [0.25, 0.5, 0.75, 1.0]  # two chunks per model


def test_progress_with_the_real_model(tiny_model):
    assert _fractions(tiny_model, 44100) == [1.0]


def test_progress_must_be_a_callable(tiny_model):
    with pytest.raises(TypeError, match="progress must be a callable"):
        separate(tiny_model, np.zeros((2, 100), np.float32), 44100, progress=True)


@pytest.mark.parametrize(
    "segment,message",
    [
        (float("nan"), "at least 0.1 s"),
        (0.0, "at least 0.1 s"),
        (-1.0, "at least 0.1 s"),
        (float("inf"), "at least 0.1 s"),
        (1e-5, "at least 0.1 s"),
        (2.5, "segment 2.5 s is longer than the 2 s this HT Demucs was trained on"),
    ],
)
def test_impossible_segments_are_refused(tiny_model, segment, message):
    with pytest.raises(ValueError, match=message):
        separate(tiny_model, np.zeros((2, 1000), np.float32), 44100, segment=segment)


def test_normalisation_block_by_block_is_the_whole_mix_s_in_a_fixed_memory():
    """A deck's worker computes it for the whole track as it starts: the mono sum and its
    deviations in float64 were eight bytes per frame twice over (420 MB for 10 minutes)."""
    import tracemalloc

    from stemdeck.models.separate import NORMALISATION_BLOCK_FRAMES, normalisation

    frames = 60 * 44100  # a minute: 21 MB of float32, more than 10 blocks
    mix = (np.random.default_rng(3).standard_normal((2, frames)) * 0.3 + 0.02).astype(np.float32)
    mono = mix.mean(axis=0, dtype=np.float64)
    tracemalloc.start()
    mean, std = normalisation(mix)
    peak_bytes = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert mean == pytest.approx(float(mono.mean()), rel=1e-12)
    assert std == pytest.approx(float(mono.std(ddof=1)) + 1e-8, rel=1e-12)
    assert peak_bytes <= 2 * 8 * NORMALISATION_BLOCK_FRAMES, peak_bytes  # one block's mono, in float64
