"""Reading and writing model checkpoints without running untrusted code.

Two formats are read:

* the legacy ``.th`` packages (a pickled dict with ``klass``, ``args``, ``kwargs``, ``state`` and
  ``training_args``). They are opened with torch's weights-only unpickler; the only globals it
  may resolve are the Demucs model classes, mapped onto ours, and ``fractions.Fraction``.
  Anything else (``os.system``, ...) stops the load before it runs.
* safetensors files whose JSON metadata holds ``klass``, ``args`` and ``kwargs``, and yaml bag
  files listing such models with their per-source weights and segment.

Our own models are written as safetensors with the same metadata, so they load here and in the
reference ``demucs`` package alike.
"""
from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .bag import BagOfModels
from .hdemucs import HDemucs, UnsupportedModelError
from .htdemucs import HTDemucs

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "demucs.htdemucs.HTDemucs": HTDemucs,
    "demucs.hdemucs.HDemucs": HDemucs,
    "models.htdemucs.HTDemucs": HTDemucs,
    "models.hdemucs.HDemucs": HDemucs,
}
SAVE_NAMES = {HTDemucs: "demucs.htdemucs.HTDemucs", HDemucs: "demucs.hdemucs.HDemucs"}


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says why and what to do."""


def load_checkpoint(path: str | Path) -> nn.Module:
    """Load a ``.th``, ``.safetensors`` or bag ``.yaml`` file into an eval-mode model."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass a checkpoint file (.th, .safetensors, .yaml)")
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".th":
        model = load_th(path)
    elif suffix == ".safetensors":
        model = load_safetensors(path)
    elif suffix in (".yaml", ".yml"):
        model = load_bag(path)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint type {suffix!r}; expected .th, .safetensors or .yaml")
    return model.eval()


# -- legacy .th packages ----------------------------------------------------------------------

def _allowed_globals() -> list:
    return [(cls, name) for name, cls in MODEL_CLASSES.items() if name.startswith("demucs.")] + [
        (HTDemucs, "models.htdemucs.HTDemucs"), (HDemucs, "models.hdemucs.HDemucs"), Fraction]


def load_th(path: Path) -> nn.Module:
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            package = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        culprit = found.group(1) if found else "an object that is not a tensor or a model class"
        raise CheckpointError(
            f"{path}: refused to load: the file asks to run {culprit}, which a model checkpoint never "
            "needs; it may be hostile. Nothing was executed. Use an official checkpoint.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({_first_line(exc)}); the file is truncated or "
            "corrupt: delete it and fetch it again") from None
    if not isinstance(package, dict) or not {"klass", "args", "kwargs", "state"} <= package.keys():
        raise CheckpointError(f"{path}: not a Demucs model package (expected klass/args/kwargs/state)")
    return build_model(package["klass"], package["args"], package["kwargs"], package["state"], path)


def build_model(klass: Any, args: Any, kwargs: dict, state: dict, origin: Path | str) -> nn.Module:
    """Instantiate ``klass`` from its recorded arguments and load ``state`` strictly."""
    if isinstance(klass, str):
        if klass not in MODEL_CLASSES:
            raise CheckpointError(f"{origin}: unknown model class {klass!r}; stemdeck loads "
                                  "HTDemucs and HDemucs checkpoints")
        klass = MODEL_CLASSES[klass]
    if klass not in SAVE_NAMES:
        raise CheckpointError(f"{origin}: unsupported model class {klass!r}")
    if state.get("__quantized"):
        raise CheckpointError(f"{origin}: DiffQ-quantized checkpoints are not supported; use the "
                              "non-quantized release of this model")
    known = set(klass.__init__.__code__.co_varnames)
    dropped = [key for key in kwargs if key not in known]
    if dropped:
        warnings.warn(f"{origin}: ignoring unknown model arguments {dropped}")
    try:
        model = klass(*args, **{k: v for k, v in kwargs.items() if k in known})
    except UnsupportedModelError as exc:
        raise CheckpointError(f"{origin}: {exc}") from None
    try:
        model.load_state_dict({k: v for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{origin}: weights do not match the model they describe "
                              f"({_first_line(exc)}); the file is damaged or from another version") from None
    return model


# -- safetensors -------------------------------------------------------------------------------

def _decode_json(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("_type") == "fraction":
            return Fraction(value["numerator"], value["denominator"])
        return {key: _decode_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_json(item) for item in value]
    return value


def _encode_json(value: Any) -> Any:
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, dict):
        return {key: _encode_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_json(item) for item in value]
    return value


def load_safetensors(path: Path) -> nn.Module:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            state = {key: file.get_tensor(key) for key in file.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)}); "
                              "delete it and fetch it again") from None
    if "structure" in metadata:
        raise CheckpointError(f"{path}: DiffQ-quantized checkpoints are not supported")
    missing = {"klass", "args", "kwargs"} - metadata.keys()
    if missing:
        raise CheckpointError(f"{path}: safetensors metadata lacks {sorted(missing)}; not a Demucs model")
    try:
        args = _decode_json(json.loads(metadata["args"]))
        kwargs = _decode_json(json.loads(metadata["kwargs"]))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt model metadata ({exc})") from None
    return build_model(metadata["klass"], args, kwargs, state, path)


def save_safetensors(model: nn.Module, path: str | Path, half: bool = False) -> None:
    """Write ``model`` with the official metadata layout (atomically)."""
    from safetensors.torch import save_file

    klass = SAVE_NAMES.get(type(model))
    if klass is None:
        raise TypeError(f"cannot save {type(model).__name__}; expected HTDemucs or HDemucs")
    dtype = torch.float16 if half else None
    state = {k: v.detach().to("cpu", dtype=dtype if v.is_floating_point() else None).contiguous()
             for k, v in model.state_dict().items()}
    metadata = {"klass": klass, "args": "[]", "kwargs": json.dumps(_encode_json(model.init_kwargs))}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)


# -- bags -------------------------------------------------------------------------------------

def load_bag(path: Path) -> BagOfModels:
    """A yaml bag: ``models`` (signatures), optional ``weights`` and ``segment``."""
    try:
        bag = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a valid bag file ({_first_line(exc)})") from None
    if not isinstance(bag, dict) or not isinstance(bag.get("models"), list) or not bag["models"]:
        raise CheckpointError(f"{path}: a bag file needs a non-empty 'models' list")
    models = [load_checkpoint(find_signature(path.parent, str(sig))) for sig in bag["models"]]
    try:
        return BagOfModels(models, bag.get("weights"), bag.get("segment"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def find_signature(folder: Path, signature: str) -> Path:
    """The checkpoint file for ``signature`` in ``folder`` (``sig.safetensors``, ``sig-xxxx.th``...)."""
    for pattern in (f"{signature}.safetensors", f"{signature}.th", f"{signature}-*.th"):
        matches = sorted(folder.glob(pattern))
        if matches:
            return matches[0]
    raise CheckpointError(f"model file for signature {signature} not found in {folder}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
