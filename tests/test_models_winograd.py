"""The decoder's 3x3 rewrite conv and GLU by Winograd's F(4x4, 3x3) equals the plain conv then
GLU (models/nets/winograd.py); the whole-model check against the reference is in
test_models_htdemucs.py, whose htdemucs decoders run this path."""

from __future__ import annotations

import pytest
import torch
from conftest import snr_db
from torch import nn
from torch.nn import functional as F

from stemdeck.models.nets import winograd

BAR_DB = 100.0  # float32 rounding of the transforms: about 120 dB at htdemucs's layers


def _conv(chin: int = 192, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(chin, 2 * chin, 3, 1, 1).eval()


@pytest.mark.parametrize(
    "shape,channels_last",
    [
        ((1, 192, 8, 336), True),  # htdemucs's innermost decoder: whole tiles
        ((2, 192, 10, 37), True),  # a batch, bins and frames that are not multiples of the tile
        ((1, 192, 13, 21), False),
    ],
)
def test_equals_the_conv_then_glu(shape, channels_last):
    conv = _conv()
    y = torch.randn(shape)
    if channels_last:
        y, conv = y.to(memory_format=torch.channels_last), conv.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert winograd.usable(conv, nn.Identity(), y)
        fast = winograd.rewrite_glu(conv, y)
        expected = F.glu(conv(y), dim=1)
    assert fast.shape == expected.shape == (shape[0], 192, *shape[2:])
    assert snr_db(expected, fast) > BAR_DB
    torch.testing.assert_close(fast, expected, rtol=1e-4, atol=5e-5)  # outputs of about 1


def test_bands_of_tile_rows_give_the_same_numbers(monkeypatch):
    conv, y = _conv(), torch.randn(1, 192, 30, 24)  # 8 tile rows, the last one ragged
    with torch.no_grad():
        whole = winograd.rewrite_glu(conv, y)
        monkeypatch.setattr(winograd, "BAND_BYTES", 1)  # one tile row a band
        banded = winograd.rewrite_glu(conv, y)
    torch.testing.assert_close(banded, whole, rtol=0, atol=1e-6)
    assert whole.is_contiguous(memory_format=torch.channels_last)  # as oneDNN's conv gives it
    with torch.no_grad():
        assert winograd.rewrite_glu(conv, y[..., :22]).is_contiguous(memory_format=torch.channels_last)


def test_weights_changed_in_place_are_transformed_again():
    conv, y = _conv(), torch.randn(1, 192, 8, 16)
    with torch.no_grad():
        before = winograd.rewrite_glu(conv, y)
        conv.weight.mul_(-1.0)
        after = winograd.rewrite_glu(conv, y)
        expected = F.glu(conv(y), dim=1)
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=5e-5)  # outputs of about 1
    assert (after - before).abs().max() > 0.1


def test_a_copy_sharing_the_weights_shares_their_transform():
    conv = _conv()
    twin = nn.Conv2d(192, 384, 3, 1, 1)
    twin.weight, twin.bias = conv.weight, conv.bias
    with torch.no_grad():
        assert winograd.transformed_weights(conv) is winograd.transformed_weights(twin)


@torch.no_grad()
def test_left_to_the_plain_conv_where_it_does_not_apply():
    y = torch.randn(1, 192, 8, 16)
    conv = _conv()
    assert winograd.usable(conv, nn.Identity(), y)
    assert not winograd.usable(_conv(96), nn.Identity(), torch.randn(1, 96, 8, 16))  # too few channels to pay
    assert not winograd.usable(conv, nn.GroupNorm(1, 384), y)  # a norm between conv and GLU
    assert not winograd.usable(nn.Conv2d(192, 384, 5, 1, 2), nn.Identity(), y)
    assert not winograd.usable(nn.Conv2d(192, 384, 3, 1, 0), nn.Identity(), y)  # not 'same'
    assert not winograd.usable(nn.Conv2d(192, 384, 3, 2, 1), nn.Identity(), y)
    assert not winograd.usable(nn.Conv2d(192, 384, 3, 1, 1, bias=False), nn.Identity(), y)
    assert not winograd.usable(nn.Conv2d(192, 384, (1, 3), 1, (0, 1)), nn.Identity(), y)
    assert not winograd.usable(nn.Conv2d(192, 384, 3, 1, 1, padding_mode="reflect"), nn.Identity(), y)
    assert not winograd.usable(conv, nn.Identity(), y.double())
    with torch.enable_grad():
        assert not winograd.usable(conv, nn.Identity(), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd.usable(conv, nn.Identity(), y)
    with torch.inference_mode():
        made_here = _conv()
    assert not winograd.usable(made_here, nn.Identity(), y)  # no version counter to see changes by


def test_stands_aside_where_separate_keeps_its_memory_low(monkeypatch):
    from stemdeck.models import streaming

    # not this test process's malloc
    monkeypatch.setattr(streaming, "return_freed_memory_early", lambda threshold_bytes: True)
    conv, y = _conv(), torch.randn(1, 192, 8, 16)
    with torch.no_grad():
        assert winograd.usable(conv, nn.Identity(), y)
        streaming.apply_memory_mode("low")
        assert not winograd.usable(conv, nn.Identity(), y)
        streaming.apply_memory_mode("speed")
        assert winograd.usable(conv, nn.Identity(), y)
