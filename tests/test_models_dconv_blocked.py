"""The blocked DConv inference path equals the module's own forward (models/nets/dconv_blocked.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import snr_db
from torch import nn
from torch.nn import functional as F

from stemdeck.models.nets import dconv_blocked
from stemdeck.models.nets.layers import DConv


def trained_like(dconv: DConv) -> DConv:
    """LayerScales at 1 and norms off their identity init, as a trained model has them."""
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in dconv.layers:
            layer[6].scale.uniform_(0.5, 1.5)
            for norm in (layer[1], layer[4]):
                norm.weight.uniform_(0.5, 2.0)
                norm.bias.normal_(0, 0.3)
    return dconv.eval()


def reference_forward(dconv: DConv, x: torch.Tensor) -> torch.Tensor:
    """The branches exactly as the checkpoint's nn.Sequential runs them."""
    for layer in dconv.layers:
        x = x + layer(x)
    return x


@pytest.mark.parametrize("depth", [2, 3])
def test_spectral_branch_layout_equals_the_module(depth):
    # the spectral branch's (bins, C, frames) view of a channels-last (1, C, bins, frames) tensor
    torch.manual_seed(0)
    dconv = trained_like(DConv(48, compress=8, depth=depth))
    grid = torch.randn(1, 48, 512, 336).to(memory_format=torch.channels_last) * 3 + 0.5
    x = grid.permute(0, 2, 1, 3).reshape(512, 48, 336)
    before = x.clone()
    with torch.inference_mode():
        assert dconv_blocked.usable(dconv.layers, x)
        blocked = dconv(x)
        expected = reference_forward(dconv, x)
    assert snr_db(expected, blocked) > 110
    assert blocked.stride() == x.stride()  # stays channels-last for the rewrite conv after it
    assert torch.equal(x, before)  # the caller's tensor is not written


def test_waveform_branch_layout_equals_the_module():
    torch.manual_seed(0)
    dconv = trained_like(DConv(96, compress=8, depth=2))
    x = torch.randn(1, 96, 43_000) + 2.0  # an offset mean: the folded variance must not cancel
    with torch.inference_mode():
        assert dconv_blocked.usable(dconv.layers, x)
        assert snr_db(reference_forward(dconv, x), dconv(x)) > 110


@pytest.mark.parametrize("dilation,frames", [(1, 50), (2, 50), (4, 3), (8, 5)])
@pytest.mark.parametrize("samples_per_block", [2, 5])
def test_taps_conv_equals_a_dilated_conv(monkeypatch, dilation, frames, samples_per_block):
    """Blocks of 2 samples of 5 (a ragged last block) or all 5 at once."""
    monkeypatch.setattr(dconv_blocked, "BLOCK_BYTES", 4 * 3 * 4 * frames * samples_per_block)
    torch.manual_seed(0)
    conv = nn.Conv1d(16, 4, 3, dilation=dilation, padding=dilation)
    x = torch.randn(5, 16, frames)
    with torch.no_grad():
        torch.testing.assert_close(dconv_blocked.taps_conv1d(conv, x), conv(x), rtol=1e-5, atol=1e-5)


def test_folded_expansion_equals_expand_norm_and_scale():
    torch.manual_seed(0)
    expand, norm = nn.Conv1d(6, 96, 1), nn.GroupNorm(1, 96)
    scale = torch.rand(48) + 0.5
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_(0, 0.3)
        hidden = torch.randn(7, 6, 200) * 4 + 10  # large means, small spread
        weight, bias = dconv_blocked.folded_expansion(expand.weight[:, :, 0], expand.bias, norm, scale, hidden)
        expected = norm(expand(hidden)) * torch.cat([scale, torch.ones(48)])[:, None]
        folded = torch.baddbmm(bias[:, :, None], weight, hidden)
    assert weight.shape == (7, 96, 6) and bias.shape == (7, 96)
    assert snr_db(expected, folded) > 100


@torch.no_grad()
def test_falls_back_where_it_does_not_apply():
    torch.manual_seed(0)
    big = torch.randn(1, 48, 86_000)
    dconv = DConv(48, compress=8).eval()
    assert dconv_blocked.usable(dconv.layers, big)
    with torch.enable_grad():
        assert not dconv_blocked.usable(dconv.layers, big)
    assert not dconv_blocked.usable(dconv.layers, torch.randn(1, 48, 1000))  # too small to pay
    assert not dconv_blocked.usable(dconv.layers, big.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not dconv_blocked.usable(dconv.layers, big)
    assert not dconv_blocked.usable(DConv(48, compress=8, lstm=True).layers, big)
    assert not dconv_blocked.usable(DConv(48, compress=8, norm=False).layers, big)
    trained = DConv(48, compress=8).train()
    calls = []
    original = dconv_blocked.run
    dconv_blocked.run = lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs)
    try:
        trained(big[..., :20_000])
        dconv(big)
    finally:
        dconv_blocked.run = original
    assert len(calls) == 1  # eval only


def test_glu_add_is_x_plus_glu():
    torch.manual_seed(0)
    y, x = torch.randn(3, 8, 20), torch.randn(3, 4, 20)
    out = torch.empty_like(x)
    expected = x + F.glu(y.clone(), dim=1)
    dconv_blocked._glu_add(y, x, out)
    torch.testing.assert_close(out, expected)


def test_in_place_run_writes_over_its_input_with_the_same_numbers():
    torch.manual_seed(3)
    dconv = DConv(48, compress=8).eval()
    x = torch.randn(1, 48, 300_000)
    with torch.inference_mode():
        expected = dconv(x.clone())
        given = x.clone()
        out = dconv(given, consume=True)
    assert out.data_ptr() == given.data_ptr()  # no second 57 MB tensor
    assert torch.equal(out, expected)
