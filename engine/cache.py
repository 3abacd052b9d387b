"""Separated stems kept on disk per (audio content, model, settings), so a reload is instant."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import platformdirs
from torch import nn


def cache_folder() -> Path:
    return Path(platformdirs.user_cache_dir("stemdeck")) / "stems"


def model_fingerprint(model: nn.Module) -> str:
    """Identifies a model's architecture and weights without hashing every parameter."""
    digest = hashlib.sha256(type(model).__name__.encode())
    digest.update(repr(sorted(getattr(model, "init_kwargs", {}).items())).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def stems_key(track: np.ndarray, fingerprint: str, settings: tuple) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(track).tobytes())
    digest.update(fingerprint.encode())
    digest.update(repr(settings).encode())
    return digest.hexdigest()[:32]


def load_stems(path: Path, stems: np.ndarray) -> tuple[int, int] | None:
    """Fill ``stems`` from the cache; return the separated interval, or None when absent/unusable."""
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        begin, end = int(meta["from"]), int(meta["until"])
        data = np.load(path, allow_pickle=False)
        if data.shape != stems[..., begin:end].shape:
            return None
        stems[..., begin:end] = data
        return begin, end
    except (OSError, ValueError, KeyError):
        return None


def save_stems(path: Path, stems: np.ndarray, begin: int, end: int) -> None:
    """Write atomically (float16: half the disk, far below audible error)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as file:
        np.save(file, stems[..., begin:end].astype(np.float16))
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps({"from": begin, "until": end}))
