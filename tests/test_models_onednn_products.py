"""Float32 products through oneDNN only where they stay exact, and only during our forwards
(models/onednn_products.py)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import snr_db, tiny_ht_transformer_on

from stemdeck.models import onednn_products
from stemdeck.models.precision import forward_context, prepare_model

CPU = torch.device("cpu")


@pytest.fixture
def fresh_probe():
    onednn_products.forget_probe()
    yield
    onednn_products.forget_probe()


def _setting() -> str:
    return torch.backends.mkldnn.matmul.fp32_precision


def test_products_rounded_to_bfloat16_keep_torch_s_default(fresh_probe, monkeypatch):
    """Where oneDNN would round the inputs (AMX), the probe sees it and the route is not taken."""

    attention = F.scaled_dot_product_attention

    def rounding_attention(q, k, v):  # float32 rounded to bfloat16; the float64 reference exact
        if q.dtype != torch.float32:
            return attention(q, k, v)
        return attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).float()

    monkeypatch.setattr(onednn_products.F, "scaled_dot_product_attention", rounding_attention)
    assert not onednn_products.exact_here()
    with onednn_products.onednn_products():
        assert _setting() == "none"


def test_the_route_is_exact_where_taken_and_put_back_after(fresh_probe):
    generator = torch.Generator().manual_seed(1)
    a, b = (torch.randn(384, 640, generator=generator), torch.randn(640, 256, generator=generator))
    exact = a.double() @ b.double()
    taken = onednn_products.exact_here()
    with onednn_products.onednn_products():
        assert _setting() == ("bf16" if taken else "none")
        inside = a @ b
    assert _setting() == "none"
    assert float((inside.double() - exact).norm() / exact.norm()) < onednn_products.EXACT_RELATIVE_ERROR


def test_overlapping_forwards_on_two_threads_leave_the_setting_as_it_was(fresh_probe):
    if not onednn_products.exact_here():
        pytest.skip("the route is not taken on this CPU")
    first_in, second_out = threading.Event(), threading.Event()
    seen = []

    def first():
        with onednn_products.onednn_products():
            first_in.set()
            second_out.wait(10)
            seen.append(_setting())  # the other forward has left: still routed for this one

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(10)
    with onednn_products.onednn_products():
        seen.append(_setting())
    second_out.set()
    thread.join(10)
    assert seen == ["bf16", "bf16"] and _setting() == "none"


def test_a_forward_in_its_context_gives_float32_s_stems(fresh_probe):
    model = tiny_ht_transformer_on(0)
    mix = torch.randn(1, 2, int(float(model.segment) * model.samplerate), generator=torch.Generator().manual_seed(2))
    prepared = prepare_model(model, "fp32", CPU)
    with torch.inference_mode():
        plain = prepared(mix)
        with forward_context("fp32", CPU):
            routed = prepared(mix)
    assert snr_db(plain, routed) > 100.0  # float32's own rounding, in a different order
