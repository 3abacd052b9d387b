"""The one guard for the inference-only blocked paths (models/nets/inference_paths.py)."""

from __future__ import annotations

import torch
from torch import nn

from stemdeck.models.nets.inference_paths import float32_eager_inference


def test_float32_inference_without_grad_is_allowed():
    conv = nn.Conv1d(4, 8, 3)
    with torch.no_grad():
        assert float32_eager_inference(torch.randn(1, 4, 16), conv)
    with torch.inference_mode():
        assert float32_eager_inference(torch.randn(1, 4, 16), conv)


def test_other_dtypes_grad_and_autocast_are_refused():
    conv, x = nn.Conv1d(4, 8, 3), torch.randn(1, 4, 16)
    assert not float32_eager_inference(x, conv)  # gradients wanted
    with torch.no_grad():
        assert not float32_eager_inference(x.double(), conv)
        assert not float32_eager_inference(x, nn.Conv1d(4, 8, 3).to(torch.bfloat16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not float32_eager_inference(x, conv)


def test_a_trace_is_refused():
    conv, seen = nn.Conv1d(4, 8, 3).requires_grad_(False), []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(float32_eager_inference(x, conv))
        return conv(x)

    with torch.no_grad():
        torch.jit.trace(forward, torch.randn(1, 4, 16), check_trace=False)
    assert seen == [False]


def test_a_compile_is_refused():
    """``torch.compile`` of a model that took these paths failed in inductor (a view of
    Winograd's strided tiles); traced, a model gets its modules' own forwards."""
    conv, seen = nn.Conv1d(4, 8, 3).requires_grad_(False), []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(float32_eager_inference(x, conv))
        return conv(x)

    with torch.no_grad():
        out = torch.compile(forward, backend="eager")(torch.randn(1, 4, 16))
    assert out.shape == (1, 8, 14)
    assert seen == [False]
