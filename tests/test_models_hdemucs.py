"""Hybrid Demucs (v3, the hdemucs_mmi architecture) against the reference."""

import pytest
import torch
from conftest import HDEMUCS_MMI_KW, make_pair

from stemdeck.models import HDemucs
from stemdeck.models.nets.hdemucs import UnsupportedModelError


@pytest.fixture(scope="module")
def hdemucs_pair():
    from demucs.hdemucs import HDemucs as Reference

    return make_pair(Reference, HDemucs, HDEMUCS_MMI_KW, seed=2)


@pytest.mark.parametrize("length", [44100 + 3, 44100 * 6 + 11])  # the longer one chunks the BLSTM
def test_hdemucs_matches_reference(hdemucs_pair, length):
    reference, ours = hdemucs_pair
    torch.manual_seed(length)
    mix = torch.randn(1, 2, length)
    with torch.no_grad():
        expected, actual = reference(mix), ours(mix)
    assert actual.shape == (1, 4, 2, length)
    assert (actual - expected).abs().max().item() < 1e-4


def test_state_dict_has_lstm_and_local_attention(hdemucs_pair):
    _, ours = hdemucs_pair
    keys = ours.state_dict().keys()
    assert "encoder.4.dconv.layers.0.3.lstm.weight_ih_l0" in keys
    assert "encoder.4.dconv.layers.0.4.query_decay.weight" in keys


def test_wiener_models_are_refused():
    with pytest.raises(UnsupportedModelError, match="Wiener"):
        HDemucs(sources=["a"], cac=False)
