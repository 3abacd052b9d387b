"""The rewrite conv and GLU band by band equals the plain conv then GLU (models/nets/rewrite_blocked.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from stemdeck.models.nets import rewrite_blocked


@pytest.mark.parametrize("kernel,channels_last", [(3, True), (3, False), (1, True), (5, True)])
def test_bands_equal_the_whole_conv(monkeypatch, kernel, channels_last):
    monkeypatch.setattr(rewrite_blocked, "BAND_BYTES", 96 * 2 * 40 * 4 * 7)  # 7 bins a band: a ragged last band
    monkeypatch.setattr(rewrite_blocked, "MIN_OUTPUT_BYTES", 0)
    torch.manual_seed(0)
    conv = nn.Conv2d(48, 96, kernel, 1, kernel // 2)
    y = torch.randn(1, 48, 64, 40)
    if channels_last:
        y, conv = y.to(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert rewrite_blocked.usable(conv, nn.Identity(), y)
        banded = rewrite_blocked.rewrite_glu(conv, y)
        expected = F.glu(conv(y), dim=1)
    torch.testing.assert_close(banded, expected, rtol=1e-5, atol=1e-5)
    assert banded.is_contiguous(memory_format=torch.channels_last) == channels_last


@torch.no_grad()
def test_left_to_the_plain_conv_where_it_does_not_apply():
    big = torch.randn(1, 48, 512, 336)
    conv = nn.Conv2d(48, 96, 3, 1, 1)
    assert rewrite_blocked.usable(conv, nn.Identity(), big)  # 66 MB of output
    assert rewrite_blocked.usable(conv, nn.Identity(), big[:, :, :256])  # 33 MB
    assert not rewrite_blocked.usable(conv, nn.Identity(), big[:, :, :128])  # 16.5 MB, under 16 MiB: not worth it
    assert not rewrite_blocked.usable(conv, nn.GroupNorm(1, 96), big)  # a norm needs the whole output
    assert not rewrite_blocked.usable(nn.Conv2d(48, 96, 3, 1, 0), nn.Identity(), big)  # not 'same'
    assert not rewrite_blocked.usable(nn.Conv2d(48, 96, 2, 1, 1), nn.Identity(), big)
    assert not rewrite_blocked.usable(nn.Conv1d(48, 96, 3, 1, 1), nn.Identity(), big)  # a 1-D conv of 2-D bins
    assert not rewrite_blocked.usable(nn.Conv2d(512, 96, 3, 1, 1), nn.Identity(), big[0])  # a 2-D conv of frames
    assert not rewrite_blocked.usable(conv, nn.Identity(), big.double())
    with torch.enable_grad():
        assert not rewrite_blocked.usable(conv, nn.Identity(), big)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not rewrite_blocked.usable(conv, nn.Identity(), big)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(48, 96, 3, 1, 1, padding_mode="reflect"),  # bands would read neighbours, not zeros
        nn.Conv2d(48, 96, 3, 1, 1, padding_mode="circular"),
        nn.Conv2d(48, 96, (3, 2), 1, (1, 1)),  # one frame more than it reads: not 'same'
        nn.Conv2d(48, 95, 3, 1, 1),  # an odd output the GLU cannot halve
    ],
    ids=["reflect", "circular", "even-kernel", "odd-output"],
)
def test_the_model_keeps_its_own_conv_where_bands_would_change_it(monkeypatch, conv):
    """What the U-Net layers call (`unet._rewrite_glu`) gives the module's own numbers, or its own
    error, for convs the band-by-band path does not reproduce."""
    from stemdeck.models.nets import unet

    monkeypatch.setattr(rewrite_blocked, "BAND_BYTES", 96 * 2 * 40 * 4 * 7)
    monkeypatch.setattr(rewrite_blocked, "MIN_OUTPUT_BYTES", 0)
    torch.manual_seed(0)
    y = torch.randn(1, 48, 64, 40)
    with torch.no_grad():
        assert not rewrite_blocked.usable(conv, nn.Identity(), y)
        if conv.out_channels % 2:
            with pytest.raises(RuntimeError, match="Halving dimension must be even"):
                unet._rewrite_glu(conv, nn.Identity(), y)
            return
        torch.testing.assert_close(unet._rewrite_glu(conv, nn.Identity(), y), F.glu(conv(y), dim=1), rtol=0, atol=0)


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_spans_of_frames_equal_the_whole_1d_conv(monkeypatch, kernel):
    """The waveform branch's rewrite, span by span (37 frames a span: a ragged last one)."""
    monkeypatch.setattr(rewrite_blocked, "SPAN_BYTES", 96 * 4 * 37)
    monkeypatch.setattr(rewrite_blocked, "MIN_OUTPUT_BYTES", 0)
    torch.manual_seed(0)
    conv = nn.Conv1d(48, 96, kernel, 1, kernel // 2)
    y = torch.randn(1, 48, 400)
    with torch.inference_mode():
        assert rewrite_blocked.usable(conv, nn.Identity(), y)
        spans = rewrite_blocked.rewrite_glu(conv, y)
        expected = F.glu(conv(y), dim=1)
    assert spans.shape == (1, 48, 400)
    torch.testing.assert_close(spans, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dims", [1, 2])
def test_a_skip_connection_is_added_piece_by_piece(monkeypatch, dims):
    """A decoder's rewrite of ``x + skip``: the same numbers as the sum made whole, and neither
    input changed."""
    monkeypatch.setattr(rewrite_blocked, "BAND_BYTES", 96 * 40 * 4 * 7)
    monkeypatch.setattr(rewrite_blocked, "SPAN_BYTES", 96 * 4 * 37)
    monkeypatch.setattr(rewrite_blocked, "MIN_OUTPUT_BYTES", 0)
    torch.manual_seed(0)
    if dims == 1:
        conv, shape = nn.Conv1d(48, 96, 3, 1, 1), (1, 48, 400)
    else:
        conv, shape = nn.Conv2d(48, 96, 3, 1, 1), (1, 48, 64, 40)
    x, skip = torch.randn(shape), torch.randn(shape)
    x_before, skip_before = x.clone(), skip.clone()
    with torch.inference_mode():
        assert rewrite_blocked.usable(conv, nn.Identity(), x)
        pieces = rewrite_blocked.rewrite_glu(conv, x, skip)
        expected = F.glu(conv(x + skip), dim=1)
    torch.testing.assert_close(pieces, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(x, x_before) and torch.equal(skip, skip_before)


@torch.no_grad()
def test_smaller_waveform_outputs_go_in_spans_only_where_memory_is_returned(monkeypatch):
    """16.5 MB of output (96 to 192 channels over 21 499 frames): mapped and faulted in on every
    call where freed memory goes back at once (`--memory low`), kept by malloc otherwise."""
    from stemdeck.models.nets import inference_paths

    conv, y = nn.Conv1d(96, 192, 1), torch.randn(1, 96, 21499)
    monkeypatch.setattr(inference_paths, "_MEMORY_FOR_SPEED", [True])
    assert not rewrite_blocked.usable(conv, nn.Identity(), y)
    monkeypatch.setattr(inference_paths, "_MEMORY_FOR_SPEED", [False])
    assert rewrite_blocked.usable(conv, nn.Identity(), y)
    assert not rewrite_blocked.usable(conv, nn.Identity(), y[..., :8000])  # 6 MB: under malloc's 8 MB threshold
    spectral = nn.Conv2d(192, 384, 1)  # the same 16.5 MB over 32 bins: no gain measured
    assert not rewrite_blocked.usable(spectral, nn.Identity(), torch.randn(1, 192, 32, 336))
