"""Copies of a model's modules that share its weights.

A copy is made where something must change the modules and leave the caller's model alone: int8
replaces the Transformer's modules, the ONNX exporter traces (its caches may keep traced
tensors), a deck's window separator sets its own padding rule. A deep copy would hold the
weights twice: 168 MB more for htdemucs each time.
"""

from __future__ import annotations

import copy
import itertools

from torch import nn


def copy_sharing_weights(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules whose parameters and buffers are the model's own tensors: a
    deep copy took `separate` over 1 GB (int8), an export's peak from 1075 to 1235 MB, and a
    deck's separation process from 1221-1254 to 1412-1456 MB (docs/benchmarks.md, stop 33)."""
    shared = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, shared)
