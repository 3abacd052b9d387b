"""Reading and writing model checkpoints without running untrusted code.

Two formats are read:

* the legacy ``.th`` packages (a pickled dict with ``klass``, ``args``, ``kwargs``, ``state`` and
  ``training_args``), in torch's zip layout. Before torch's weights-only unpickler sees the
  pickle, every global it names is checked against the few an official package uses (the
  Demucs model classes, ``fractions.Fraction``, torch's tensor rebuilders); the model classes
  resolve to inert names, so a file cannot build a model while it is read, and fractions go
  through a bounded constructor. Anything else (``os.system``, ...) stops the load before it runs.
* safetensors files whose JSON metadata holds ``klass``, ``args`` and ``kwargs``, and yaml bag
  files listing such models with their per-source weights and segment.

Whatever the format, the hyper-parameters are checked against :mod:`models.limits` and the
model is first built on torch's ``meta`` device (no memory) so the file's weights can be
compared with it shape by shape before the real model is allocated. Our own models are
written as safetensors with the same metadata, so they load here and in the reference
``demucs`` package alike.
"""

from __future__ import annotations

import glob
import inspect
import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from stemdeck.models.bag import BagOfModels
from stemdeck.models.limits import (
    MAX_BAG_MODELS,
    MAX_PARAMETERS,
    LimitError,
    check_hyperparameters,
    fraction,
    shown,
)
from stemdeck.models.nets.hdemucs import HDemucs, UnsupportedModelError
from stemdeck.models.nets.htdemucs import HTDemucs

# The names a pickled checkpoint may give our two networks: the reference package's, ours as
# installed now, and ours before they moved under stemdeck.models.nets (files saved then).
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "demucs.htdemucs.HTDemucs": HTDemucs,
    "demucs.hdemucs.HDemucs": HDemucs,
    f"{HTDemucs.__module__}.HTDemucs": HTDemucs,
    f"{HDemucs.__module__}.HDemucs": HDemucs,
    "models.htdemucs.HTDemucs": HTDemucs,
    "models.hdemucs.HDemucs": HDemucs,
}
SAVE_NAMES = {HTDemucs: "demucs.htdemucs.HTDemucs", HDemucs: "demucs.hdemucs.HDemucs"}
# What an official package's pickle names, and nothing more (torch's own list is wider:
# ``bytearray(10**10)`` would pass it).
TORCH_GLOBALS = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2"} | {
    f"torch.{kind}Storage"
    for kind in ("Half", "Float", "Double", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool", "Untyped")
}
MAX_METADATA_CHARS = 64 * 1024
MAX_BAG_FILE_BYTES = 64 * 1024
MAX_KWARGS = 128
SIGNATURE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says why and what to do."""


def load_checkpoint(path: str | Path) -> nn.Module:
    """Load a ``.th``, ``.safetensors`` or bag ``.yaml`` file into an eval-mode model."""
    path = Path(path)
    try:
        if path.is_dir():
            raise CheckpointError(f"{path} is a directory; pass a checkpoint file (.th, .safetensors, .yaml)")
        if not path.exists():
            raise CheckpointError(f"{path} does not exist")
        if not path.is_file():
            raise CheckpointError(f"{path} is not a regular file; pass a checkpoint file")
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte...
        raise CheckpointError(f"{shown(str(path))}: cannot open ({getattr(exc, 'strerror', None) or exc})") from None
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


class _Refused(Exception):
    """Raised from inside the unpickler: the file asked for something a checkpoint never needs."""


class _ClassName:
    """What a model-class global resolves to while unpickling: a name, never the class.

    Calling it (a ``REDUCE``, to build a model of any size while the file is read) is refused.
    """

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise _Refused(f"the file calls {self.name}(...) while it is read, which a model checkpoint never does")


_CLASS_NAMES = {name: _ClassName(name) for name in MODEL_CLASSES}


def _bounded_fraction(*args):
    try:
        return fraction(*args)
    except (LimitError, TypeError) as exc:
        raise _Refused(str(exc)) from None


def _allowed_globals() -> list:
    return [(marker, name) for name, marker in _CLASS_NAMES.items()] + [(_bounded_fraction, "fractions.Fraction")]


def load_th(path: Path) -> nn.Module:
    _check_th_archive(path)
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            package = torch.load(path, map_location="cpu", weights_only=True)
    except _Refused as exc:
        raise CheckpointError(
            f"{path}: refused to load: {exc}; it may be hostile. Nothing was executed. Use an official checkpoint."
        ) from None
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        culprit = found.group(1) if found else "an object that is not a tensor or a model class"
        raise _refused_global(path, culprit) from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        TypeError,
        OSError,
        IndexError,
        KeyError,
        AttributeError,
    ) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({_first_line(exc)}); the file is truncated or "
            "corrupt: delete it and fetch it again (or export your own model again)"
        ) from None
    if not isinstance(package, dict) or not {"klass", "args", "kwargs", "state"} <= package.keys():
        raise CheckpointError(f"{path}: not a Demucs model package (expected klass/args/kwargs/state)")
    klass = package["klass"]
    klass = klass.name if isinstance(klass, _ClassName) else klass
    return build_model(klass, package["args"], package["kwargs"], package["state"], path)


def _refused_global(path: Path, culprit: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: refused to load: the file asks to run {culprit}, which a model checkpoint never "
        "needs; it may be hostile. Nothing was executed. Use an official checkpoint."
    )


def _check_th_archive(path: Path) -> None:
    """torch's zip layout, stored (never compressed: a small deflated record could inflate to
    gigabytes), naming only the globals an official package uses."""
    corrupt = (
        f"{path}: not a readable checkpoint (not a torch zip archive); the file is truncated "
        "or corrupt: delete it and fetch it again (or export your own model again)"
    )
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            if any(record.compress_type != zipfile.ZIP_STORED for record in records):
                raise CheckpointError(
                    f"{path}: refused to load: compressed records, which torch never writes; use an official checkpoint"
                )
            pickled = [record for record in records if record.filename.endswith("/data.pkl")]
            if len(pickled) != 1:
                raise CheckpointError(corrupt)
            data = archive.read(pickled[0])
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise CheckpointError(corrupt) from None
    for culprit in _pickle_globals(data):
        if culprit not in TORCH_GLOBALS and culprit not in MODEL_CLASSES and culprit != "fractions.Fraction":
            raise _refused_global(path, culprit)


def _pickle_globals(data: bytes) -> list[str]:
    """Every global the pickle names (a global loaded from the stack cannot be checked: refused)."""
    found = []
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(".".join(str(argument).split(" ", 1)))
            elif opcode.name in ("STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"):
                found.append(f"a computed global ({opcode.name})")
    except (ValueError, EOFError) as exc:
        found.append(f"an unreadable pickle ({_first_line(exc)})")
    return found


# -- building a model from its recorded arguments --------------------------------------------


def build_model(klass: Any, args: Any, kwargs: Any, state: Any, origin: Path | str) -> nn.Module:
    """Instantiate ``klass`` from its recorded arguments and load ``state`` strictly.

    Every argument is checked, and the weights compared with a memory-free ``meta`` twin of
    the model, before the model itself is allocated.
    """
    cls = _model_class(klass, origin)
    _check_state(state, origin)
    values = _arguments(cls, args, kwargs, origin)
    expected = _shapes_without_memory(cls, values, origin)
    _check_weights_match(expected, state, origin)
    try:
        model = cls(**values)
    except (UnsupportedModelError, ValueError) as exc:
        raise CheckpointError(f"{origin}: {exc}") from None
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{origin}: weights do not match the model they describe "
            f"({_first_line(exc)}); the file is damaged or from another version"
        ) from None
    return model


def _model_class(klass: Any, origin: Path | str) -> type[nn.Module]:
    if not isinstance(klass, str) or klass not in MODEL_CLASSES:
        raise CheckpointError(
            f"{origin}: unknown model class {shown(klass)}; stemdeck loads HTDemucs and HDemucs checkpoints"
        )
    return MODEL_CLASSES[klass]


def _check_state(state: Any, origin: Path | str) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{origin}: the weights are a {type(state).__name__}, not a table of tensors; the file is damaged"
        )
    if state.get("__quantized"):
        raise CheckpointError(
            f"{origin}: DiffQ-quantized checkpoints are not supported; use the non-quantized release of this model"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{origin}: the weights hold {shown(key)}: {type(value).__name__}, "
                "not a named tensor; the file is damaged"
            )


def _arguments(cls: type[nn.Module], args: Any, kwargs: Any, origin: Path | str) -> dict[str, Any]:
    """The constructor's arguments, every one checked against :mod:`models.limits`."""
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) or len(kwargs) > MAX_KWARGS:
        raise CheckpointError(
            f"{origin}: model arguments must be a list and a table of at most "
            f"{MAX_KWARGS} names, not {type(args).__name__} and {type(kwargs).__name__}"
        )
    if not all(isinstance(key, str) for key in kwargs):
        raise CheckpointError(f"{origin}: model argument names must be text")
    signature = inspect.signature(cls)
    dropped = [key for key in kwargs if key not in signature.parameters]
    if dropped:
        warnings.warn(f"{origin}: ignoring unknown model arguments {shown(dropped)}", stacklevel=2)
    try:
        bound = signature.bind(*args, **{k: v for k, v in kwargs.items() if k not in dropped})
        bound.apply_defaults()
        check_hyperparameters(bound.arguments)
    except (TypeError, LimitError) as exc:
        raise CheckpointError(f"{origin}: refused: {exc}; no official model has that") from None
    return dict(bound.arguments)


def _shapes_without_memory(cls: type[nn.Module], values: dict[str, Any], origin: Path | str) -> dict[str, torch.Size]:
    """Parameter shapes of the model ``values`` describe, built on the ``meta`` device."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            skeleton = cls(**values)
    except UnsupportedModelError as exc:
        raise CheckpointError(f"{origin}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any inconsistent combination of in-range values, reported
        raise CheckpointError(
            f"{origin}: the model arguments do not describe a buildable model "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    shapes = {key: value.shape for key, value in skeleton.state_dict().items()}
    parameters = sum(shape.numel() for shape in shapes.values())
    if parameters > MAX_PARAMETERS:
        raise CheckpointError(
            f"{origin}: refused: the model would have {parameters / 1e6:.0f} M "
            f"parameters (at most {MAX_PARAMETERS / 1e6:.0f} M)"
        )
    return shapes


def _check_weights_match(expected: dict[str, torch.Size], state: dict, origin: Path | str) -> None:
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [key for key in expected.keys() & state.keys() if state[key].shape != expected[key]]
    if missing or unexpected or wrong:
        what = (
            f"missing {shown(missing[0])}"
            if missing
            else f"unexpected {shown(unexpected[0])}"
            if unexpected
            else f"{shown(wrong[0])} has shape {list(state[wrong[0]].shape)}, the model {list(expected[wrong[0]])}"
        )
        raise CheckpointError(
            f"{origin}: weights do not match the model they describe ({what}); the "
            "file is damaged or from another version"
        )


# -- safetensors -------------------------------------------------------------------------------


def _decode_json(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("_type") == "fraction":
            return fraction(value.get("numerator"), value.get("denominator"))
        return {key: _decode_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_json(item) for item in value]
    return value


def _encode_json(value: Any) -> Any:
    from fractions import Fraction

    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, dict):
        return {key: _encode_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_json(item) for item in value]
    return value


def container_readable(path: Path) -> bool:
    """Whether ``path`` is a torch archive or a safetensors file whose table of contents reads:
    what can be told of a checkpoint without its checksum (a renamed copy) and without loading
    it (``models list`` looks at every cached file)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as file:
                file.metadata()
        except (SafetensorError, OSError, ValueError, RuntimeError):
            return False
        return True
    try:
        _check_th_archive(path)
    except CheckpointError:
        return False
    return True


def load_safetensors(path: Path) -> nn.Module:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            state = {key: file.get_tensor(key) for key in file.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({_first_line(exc)}); delete it and fetch it again "
            "(or export your own model again)"
        ) from None
    if "structure" in metadata:
        raise CheckpointError(f"{path}: DiffQ-quantized checkpoints are not supported")
    missing = {"klass", "args", "kwargs"} - metadata.keys()
    if missing:
        raise CheckpointError(f"{path}: safetensors metadata lacks {sorted(missing)}; not a Demucs model")
    args, kwargs = (_metadata_json(path, metadata, key) for key in ("args", "kwargs"))
    return build_model(metadata["klass"], args, kwargs, state, path)


def _metadata_json(path: Path, metadata: dict, key: str) -> Any:
    text = metadata[key]
    if len(text) > MAX_METADATA_CHARS:
        raise CheckpointError(
            f"{path}: model metadata {key!r} is {len(text)} characters long "
            f"(at most {MAX_METADATA_CHARS}); not a Demucs model"
        )
    try:
        return _decode_json(json.loads(text))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and LimitError are ValueErrors
        raise CheckpointError(f"{path}: corrupt model metadata {key!r} ({_first_line(exc)})") from None


def save_safetensors(model: nn.Module, path: str | Path, half: bool = False) -> None:
    """Write ``model`` with the official metadata layout, atomically: the temporary file sits
    next to the target and is removed if anything fails."""
    from safetensors.torch import save_file

    klass = SAVE_NAMES.get(type(model))
    if klass is None:
        raise TypeError(f"cannot save {type(model).__name__}; expected HTDemucs or HDemucs")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; name the .safetensors file to write")
    dtype = torch.float16 if half else None
    state = {
        k: v.detach().to("cpu", dtype=dtype if v.is_floating_point() else None).contiguous()
        for k, v in model.state_dict().items()
    }
    metadata = {"klass": klass, "args": "[]", "kwargs": json.dumps(_encode_json(model.init_kwargs))}
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_temporaries(path: Path) -> None:
    """``.<name>.<pid>.tmp`` files of writers that were killed (SIGKILL, power loss) mid-save."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -4]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# -- bags -------------------------------------------------------------------------------------


class _NoAliasLoader(yaml.SafeLoader):
    """The safe loader without aliases: a bag has no use for them, and nested aliases expand
    a few hundred bytes into gigabytes ("billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in a bag file", event.start_mark
            )
        return super().compose_node(parent, index)


def load_bag(path: Path) -> BagOfModels:
    """A yaml bag: ``models`` (signatures), optional ``weights`` and ``segment``."""
    bag = _read_bag(path)
    signatures = bag.get("models")
    if not isinstance(signatures, list) or not 1 <= len(signatures) <= MAX_BAG_MODELS:
        raise CheckpointError(
            f"{path}: a bag file needs a 'models' list of 1 to {MAX_BAG_MODELS} signatures, not {shown(signatures)}"
        )
    for signature in signatures:
        if not isinstance(signature, str) or not SIGNATURE.fullmatch(signature):
            raise CheckpointError(
                f"{path}: model signature {shown(signature)} is not a file signature "
                "(letters, digits, '_' and '-', at most 64)"
            )
    if len(set(signatures)) != len(signatures):
        raise CheckpointError(f"{path}: the bag lists a model twice ({shown(signatures)}); list each once")
    models = [load_checkpoint(find_signature(path.parent, sig)) for sig in signatures]
    try:
        return BagOfModels(models, bag.get("weights"), bag.get("segment"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _read_bag(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_BAG_FILE_BYTES:
            raise CheckpointError(
                f"{path}: {path.stat().st_size} bytes is too long for a bag file (at most {MAX_BAG_FILE_BYTES})"
            )
        bag = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)  # a SafeLoader subclass
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError, OSError) as exc:
        raise CheckpointError(f"{path}: not a valid bag file ({_first_line(exc)})") from None
    if not isinstance(bag, dict):
        raise CheckpointError(f"{path}: a bag file is a table with 'models', 'weights' and 'segment'")
    return bag


def find_signature(folder: Path, signature: str) -> Path:
    """The checkpoint file for ``signature`` in ``folder`` (``sig.safetensors``, ``sig-xxxx.th``...)."""
    if not SIGNATURE.fullmatch(signature):
        raise CheckpointError(f"model signature {shown(signature)} is not a file signature")
    for pattern in (f"{signature}.safetensors", f"{signature}.th", f"{signature}-*.th"):
        matches = sorted(folder.glob(pattern))
        if matches:
            return matches[0]
    raise CheckpointError(f"model file for signature {signature} not found in {folder}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."
