"""stemdeck's model core: HT Demucs and Hybrid Demucs, checkpoints, offline separation."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from stemdeck.models.bag import BagOfModels
from stemdeck.models.checkpoint import CheckpointError, load_checkpoint, save_safetensors
from stemdeck.models.nets.hdemucs import HDemucs
from stemdeck.models.nets.htdemucs import HTDemucs
from stemdeck.models.registry import BUILT_IN, BUNDLED, REGISTRY, ModelNotAvailableError, fetch, load_named, model_names
from stemdeck.models.separate import apply_model, separate

DEFAULT_MODEL = "htdemucs"


def load_model(name_or_path: str | Path) -> nn.Module:
    """A model in eval mode from a registry name or a checkpoint path.

    Its forward maps ``(batch, channels, time)`` to ``(batch, sources, channels, time)``; it has
    ``.sources``, ``.samplerate``, ``.audio_channels`` and ``.segment``.
    """
    text = str(name_or_path)
    if text in model_names():
        return load_named(text)
    path = Path(text)
    if _exists(path) or path.suffix.lower() in (".th", ".safetensors", ".yaml", ".yml"):
        return load_checkpoint(path)
    return load_named(text)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a file
        return False


__all__ = [
    "BagOfModels",
    "CheckpointError",
    "DEFAULT_MODEL",
    "HDemucs",
    "HTDemucs",
    "BUILT_IN",
    "BUNDLED",
    "ModelNotAvailableError",
    "REGISTRY",
    "apply_model",
    "fetch",
    "load_checkpoint",
    "load_model",
    "model_names",
    "save_safetensors",
    "separate",
]
