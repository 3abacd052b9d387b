"""STFT framing used by the hybrid branch: shapes, round trip, the reference's numbers."""

import math

import pytest
import torch

from stemdeck.models.nets.spec import hybrid_inverse, hybrid_spectrogram, istft, reflect_pad, stft


@pytest.mark.parametrize("length", [1, 17, 1024, 4096 * 3 + 5, 44100])
def test_hybrid_spectrogram_has_one_frame_per_hop(length):
    z = hybrid_spectrogram(torch.randn(2, 2, length), 4096)
    assert z.shape == (2, 2, 2048, math.ceil(length / 1024))
    assert z.dtype == torch.complex64


@pytest.mark.parametrize("length", [4096, 4096 * 3 + 5, 44100])
def test_stft_round_trip_error_is_below_1e6_rms(length):
    x = torch.randn(2, 2, length)
    y = istft(stft(x, 4096, 1024), 1024, length)
    assert torch.sqrt(torch.mean((x - y) ** 2)).item() < 1e-6


@pytest.mark.parametrize("length", [44100, 44100 * 2 + 5])
def test_hybrid_round_trip_is_exact_away_from_edges_and_nyquist(length):
    """The hybrid framing drops the Nyquist bin and two edge frames each side (1.5 hops)."""
    t = torch.arange(length) / 44100
    x = torch.stack([torch.sin(2 * math.pi * f * t) for f in (110.0, 1234.5)])[None]
    y = hybrid_inverse(hybrid_spectrogram(x, 4096), length)
    assert y.shape == x.shape
    interior = slice(3 * 1024, length - 3 * 1024)
    assert torch.sqrt(torch.mean((x - y)[..., interior] ** 2)).item() < 1e-6


@pytest.mark.parametrize("length", [3, 500, 44100 + 1])
def test_matches_reference_spectrogram(length):
    from demucs.htdemucs import HTDemucs

    reference = HTDemucs(sources=["a"], channels=4, depth=1, t_layers=0)
    x = torch.randn(1, 2, length)
    expected = reference._spec(x)
    assert torch.allclose(hybrid_spectrogram(x, 4096), expected, atol=1e-6)
    assert torch.allclose(hybrid_inverse(expected, length), reference._ispec(expected, length), atol=1e-6)


def test_reflect_pad_handles_signals_shorter_than_the_padding():
    x = torch.arange(3.0)[None]
    padded = reflect_pad(x, 5, 4)
    assert padded.shape[-1] == 3 + 9
    assert torch.equal(padded[..., 5:8], x)


def test_inverse_of_channels_equals_the_complex_inverse():
    # (B, C, 2, freqs, frames) real and imaginary as channels, straight into the padded buffer
    torch.manual_seed(0)
    x = torch.randn(2, 2, 44100)
    z = hybrid_spectrogram(x, 4096)
    channels = torch.view_as_real(z).movedim(-1, -3).contiguous()
    from stemdeck.models.nets.spec import hybrid_inverse_of_channels

    assert torch.equal(hybrid_inverse_of_channels(channels, 44100), hybrid_inverse(z, 44100))


def test_one_inverse_buffer_serves_one_source_after_another():
    """The stems' iSTFTs share one zero-padded buffer: each gives what a fresh buffer gives,
    nothing of the source before it left in the padding."""
    from stemdeck.models.nets.spec import hybrid_inverse_of_channels, inverse_buffer

    torch.manual_seed(0)
    sources = [torch.view_as_real(hybrid_spectrogram(torch.randn(1, 2, 44100), 4096)).movedim(-1, -3) for _ in range(3)]
    shared = inverse_buffer(sources[0])
    for channels in sources:
        assert torch.equal(
            hybrid_inverse_of_channels(channels, 44100, shared), hybrid_inverse_of_channels(channels, 44100)
        )
