"""The faster inference paths (issue 13) against float32 and the reference's layers.

Every path is checked on a small random-weights HT Demucs and the generated demo song. Random
initial LayerScales (1e-4 in the Transformer) would hide the Transformer's error, so the
precision tests also run with those scales at 1, as trained models have them.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import TINY_HT_KW, snr_db, tiny_ht_transformer_on
from torch import nn

from stemdeck.models import HTDemucs
from stemdeck.models.cli import add_model_options
from stemdeck.models.demo import demo_stems
from stemdeck.models.nets.layers import DConv
from stemdeck.models.nets.transformer import Attention, Int8Attention
from stemdeck.models.precision import PRECISIONS, autocast, prepare_model, resolve_precision

CPU = torch.device("cpu")
SNR_BAR_DB = {"bf16": 40.0, "int8": 40.0}  # issue 13: stems within 40 dB of float32


def tiny_model(full_layer_scale: bool) -> HTDemucs:
    return tiny_ht_transformer_on(seed=3, layer_scales_at_one=full_layer_scale)


@pytest.fixture(scope="module")
def song() -> torch.Tensor:
    mix = torch.from_numpy(sum(demo_stems(2.0).values()))[None]
    return (mix - mix.mean()) / mix.std()


def separate(model: nn.Module, precision: str, mix: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), autocast(precision, CPU):
        return prepare_model(model, precision, CPU)(mix).float()


@pytest.fixture(scope="module", params=[False, True], ids=["random-init", "layer-scale-1"])
def model_and_float32_stems(request, song):
    model = tiny_model(full_layer_scale=request.param)
    with torch.inference_mode():
        return model, model(song)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_keeps_its_snr_bar_against_float32(song, model_and_float32_stems, precision):
    model, expected = model_and_float32_stems
    stems = separate(model, precision, song)
    assert not torch.equal(stems, expected)  # the path did run in its precision
    snr = snr_db(expected, stems)
    assert snr >= SNR_BAR_DB[precision], f"{precision}: {snr:.1f} dB against float32"


def test_float32_path_gives_the_model_s_own_numbers(song):
    model = tiny_model(full_layer_scale=True)
    with torch.inference_mode():
        expected = model(song)
    assert not model.decoder[0].rewrite.weight.is_contiguous(memory_format=torch.channels_last)
    prepared = prepare_model(model, "fp32", CPU)
    assert prepared is model  # no copy of a large model for float32
    conv = model.decoder[0].rewrite
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(prepared(song), expected, rtol=0, atol=1e-5)


def test_int8_swaps_every_transformer_product_and_leaves_the_model_alone():
    model = tiny_model(full_layer_scale=False)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    fast = prepare_model(model, "int8", CPU)
    layers = [*fast.crosstransformer.layers, *fast.crosstransformer.layers_t]
    attentions = [m for m in fast.modules() if isinstance(m, Attention)]
    assert len(attentions) == len(layers) == 2 * TINY_HT_KW["t_layers"]
    assert all(isinstance(m, Int8Attention) for m in attentions)
    assert not any(isinstance(m, nn.Linear) for layer in layers for m in layer.modules())
    assert all(torch.equal(p, before[name]) for name, p in model.state_dict().items())
    assert not any(isinstance(m, Int8Attention) for m in model.modules())


def test_int8_is_cpu_only_and_listed():
    assert "int8" in PRECISIONS
    assert resolve_precision("int8", CPU) == "int8"
    assert resolve_precision("auto", CPU) in ("fp32", "bf16")  # never int8 unasked
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        resolve_precision("int8", torch.device("cuda"))
    with pytest.raises(ValueError, match="choose auto, fp32, bf16, int8"):
        resolve_precision("int4", CPU)


def test_command_line_accepts_every_precision():
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    assert [parser.parse_args(["--precision", p]).precision for p in PRECISIONS] == list(PRECISIONS)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_sdpa_attention_equals_torch_multihead_attention(cross):
    """The reference runs ``nn.MultiheadAttention``; ours is SDPA on the same parameters."""
    torch.manual_seed(0)
    dim, heads = 64, 8
    reference = nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    ours = Attention(dim, heads).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    query = torch.randn(2, 300, dim)
    memory = torch.randn(2, 170, dim) if cross else query
    with torch.inference_mode():
        expected = reference(query, memory, memory, need_weights=False)[0]
        got = ours(query, memory if cross else None)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("norm", [True, False])
def test_dconv_inference_path_equals_the_layer_by_layer_one(norm):
    torch.manual_seed(0)
    dconv = DConv(48, compress=8, norm=norm, init=0.5).eval()
    x = torch.randn(7, 48, 211)
    with torch.inference_mode():
        expected = x
        for branch in dconv.layers:
            expected = expected + branch(expected)
        got = dconv(x)
    assert not torch.equal(got, x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_dconv_with_lstm_and_attention_takes_the_plain_path():
    torch.manual_seed(0)
    dconv = DConv(16, compress=4, attn=True, lstm=True).eval()
    x = torch.randn(1, 16, 300)
    with torch.inference_mode():
        expected = x
        for branch in dconv.layers:
            expected = expected + branch(expected)
        torch.testing.assert_close(dconv(x), expected, rtol=0, atol=0)


def test_int8_copy_is_made_once_per_model_until_its_weights_change():
    from stemdeck.models.precision import forget_prepared_copy

    one, other = tiny_ht_transformer_on(0), tiny_ht_transformer_on(1)
    first = prepare_model(one, "int8", CPU)
    assert prepare_model(one, "int8", CPU) is first  # the next file of a batch
    assert prepare_model(one, "fp32", CPU) is one
    with torch.no_grad():
        one.decoder[0].conv_tr.bias.add_(1.0)  # trained, or new weights loaded
    changed = prepare_model(one, "int8", CPU)
    assert changed is not first
    assert torch.equal(changed.decoder[0].conv_tr.bias, one.decoder[0].conv_tr.bias)
    assert prepare_model(other, "int8", CPU) is not changed
    assert prepare_model(one, "int8", CPU) is not changed  # one slot: the other model took it
    forget_prepared_copy()


def test_in_place_inference_gives_the_numbers_autograd_gets_and_leaves_backward_whole():
    """GELU, the DConv residual and the output scaling write over fresh tensors at inference
    only: the same numbers as the graph autograd records, which still backpropagates."""
    model = tiny_ht_transformer_on(2)
    mix = torch.randn(1, 2, int(float(model.segment) * model.samplerate))
    with torch.inference_mode():
        inferred = model(mix)
    with torch.no_grad():
        no_grad = model(mix)
    recorded = model(mix)
    assert torch.equal(inferred, no_grad)
    assert torch.allclose(recorded.detach(), inferred, atol=1e-6)
    recorded.pow(2).mean().backward()  # no "modified by an inplace operation"
    assert all(p.grad is not None for p in model.crosstransformer.parameters() if p.requires_grad)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_feed_forward_in_blocks_of_tokens_keeps_the_numbers(monkeypatch, song, precision):
    """At inference the Transformer's feed-forward runs a block of tokens at a time (here 7, a
    ragged last block): float32 gives the graph autograd records, int8 (whose activations are
    then quantised per block) keeps its bar against float32."""
    from stemdeck.models.nets import transformer

    model = tiny_model(full_layer_scale=True)
    calls = []
    whole = transformer.TransformerLayer._feed_forward_block
    monkeypatch.setattr(transformer.TransformerLayer, "_feed_forward_block", lambda *a: calls.append(1) or whole(*a))
    recorded = model(song).detach()  # autograd on: one block
    assert len(calls) == 2 * TINY_HT_KW["t_layers"]
    monkeypatch.setattr(transformer, "FEED_FORWARD_BLOCK_BYTES", 4 * 4 * 32 * 7)  # 7 tokens of 4 x 32 hidden
    calls.clear()
    blocked = separate(model, precision, song)
    assert len(calls) > 4 * 2 * TINY_HT_KW["t_layers"]
    if precision == "fp32":
        torch.testing.assert_close(blocked, recorded, rtol=1e-5, atol=1e-6)
    else:
        assert snr_db(recorded, blocked) > SNR_BAR_DB["int8"]


def test_a_command_makes_its_model_int8_in_place_and_keeps_no_float_transformer():
    from stemdeck.models.nets.transformer import is_int8
    from stemdeck.models.precision import forward_context, prepare_network
    from stemdeck.models.precision_choice import remembered_precision
    from stemdeck.models.track_job import commit_precision

    model = tiny_ht_transformer_on(3)
    mix = torch.randn(1, 2, int(float(model.segment) * model.samplerate))
    with torch.inference_mode(), forward_context("int8", CPU):  # as a network runs it
        copied = prepare_model(model, "int8", CPU)(mix)
    assert any(isinstance(m, nn.Linear) for m in model.crosstransformer.modules())
    commit_precision(model, "int8", "cpu", "auto")
    assert is_int8(model)
    assert not any(isinstance(m, nn.Linear) for m in model.crosstransformer.modules())
    assert not any(type(m) is Attention for m in model.modules())
    network = prepare_network(model, remembered_precision(model, "auto", CPU), CPU)  # as separate resolves auto
    assert network.precision == "int8" and network.model is model
    with torch.inference_mode():
        assert torch.equal(network(mix), copied)  # the same int8 numbers as the copy's
    with pytest.raises(ValueError, match="Transformer was made int8; it cannot run fp32"):
        prepare_model(model, "fp32", CPU)
