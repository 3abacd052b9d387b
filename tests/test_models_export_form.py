"""models/nets/export_form.py: the modules an exported network runs compute what they replace
(float32, to rounding), a model's export form gives its stems and leaves the model as it was, and
the exported graph holds the operators it was made for (no 1-D transposed conv, no split before a
plain GLU)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_HT_KW, tiny_ht_transformer_on
from torch import nn
from torch.nn import functional as F

from stemdeck.models import HTDemucs, onnx_backend
from stemdeck.models.nets import export_form as ef
from stemdeck.models.nets.spec import hybrid_spectrogram
from stemdeck.models.nets.unet import complex_as_channels
from stemdeck.models.sharing import copy_sharing_weights

TOLERANCE = 1e-5  # of the output's peak: float32 rounding of sums taken in another order


def close(expected: torch.Tensor, got: torch.Tensor) -> float:
    assert got.shape == expected.shape
    return float((expected - got).abs().max() / expected.abs().max())


@pytest.mark.parametrize(("stride", "kernel", "bias"), [(4, 8, True), (4, 4, True), (2, 6, False), (4, 12, True)])
def test_phase_conv_transpose_is_the_transposed_conv(stride, kernel, bias):
    torch.manual_seed(0)
    conv_tr = nn.ConvTranspose1d(6, 5, kernel, stride, bias=bias)
    x = torch.randn(2, 6, 37)
    with torch.no_grad():
        expected, got = conv_tr(x), ef.PhaseConvTranspose1d(conv_tr)(x)
    assert got.shape == (2, 5, 36 * stride + kernel)
    assert close(expected, got) < TOLERANCE


def test_phase_conv_transpose_applies_only_where_it_is_exact():
    assert ef.PhaseConvTranspose1d.applies(nn.ConvTranspose1d(4, 4, 8, 4))
    assert not ef.PhaseConvTranspose1d.applies(nn.ConvTranspose1d(4, 4, 7, 4))  # kernel not a multiple
    assert not ef.PhaseConvTranspose1d.applies(nn.ConvTranspose1d(4, 4, 8, 4, padding=2))
    assert not ef.PhaseConvTranspose1d.applies(nn.ConvTranspose1d(4, 4, 8, 4, groups=2))
    assert not ef.PhaseConvTranspose1d.applies(nn.ConvTranspose2d(4, 4, (8, 1), (4, 1)))


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3])
def test_gated_conv_is_the_glu_of_the_conv(dims, kernel):
    torch.manual_seed(1)
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(6, 10, kernel, 1, kernel // 2)
    x = torch.randn(2, 6, *([9] * dims))
    with torch.no_grad():
        expected, got = F.glu(conv(x), dim=1), ef.GatedConv(conv)(x)
    assert close(expected, got) < TOLERANCE
    assert not ef.GatedConv.applies(conv, nn.GroupNorm(1, 10))  # a norm between needs both halves
    assert ef.GatedConv.applies(conv, nn.Identity())


def test_a_models_export_form_gives_its_stems_and_leaves_it_as_it_was():
    model = tiny_ht_transformer_on(seed=4)
    before = {name: type(module) for name, module in model.named_modules()}
    form = ef.export_form(copy_sharing_weights(model))
    kinds = [type(module) for module in form.modules()]
    assert kinds.count(ef.PhaseConvTranspose1d) == TINY_HT_KW["depth"]  # the waveform decoder's
    assert kinds.count(ef.GatedConv) == 4 * TINY_HT_KW["depth"]  # every rewrite: no norm before its GLU
    assert {name: type(module) for name, module in model.named_modules()} == before
    mix = torch.randn(1, 2, 2 * model.samplerate)  # its segment
    with torch.no_grad():
        expected, got = model(mix), form(mix)
    assert close(expected, got) < TOLERANCE


def test_the_exported_graph_has_the_export_forms_operators(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = HTDemucs(**TINY_HT_KW).eval()
    length = onnx_backend.network_length(model, None)
    mix = onnx_backend.probe(model, length)
    spec = complex_as_channels(hybrid_spectrogram(mix, model.nfft)).contiguous()
    onnx_backend.write_onnx(model, spec, mix, tmp_path / "net.onnx")
    nodes = onnx.load(str(tmp_path / "net.onnx")).graph.node
    kernels = [
        len(attribute.ints)
        for node in nodes
        if node.op_type == "ConvTranspose"
        for attribute in node.attribute
        if attribute.name == "kernel_shape"
    ]
    assert kernels == [2] * TINY_HT_KW["depth"]  # the spectral decoder's only
    dconv_glus = sum(
        len(layer.dconv.layers)
        for layer in [*model.encoder, *model.decoder, *model.tencoder, *model.tdecoder]
        if getattr(layer, "dconv", None) is not None
    )
    assert sum(node.op_type == "Split" for node in nodes) == dconv_glus  # a GLU after a norm keeps its split
