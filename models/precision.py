"""Inference precision: float32, bfloat16 autocast where the hardware runs it natively, or
int8 matrix products in the Transformer on the CPU.

bfloat16 roughly halves the time of the convolutions and matrix products on CPUs with
AVX512-BF16 or AMX and on recent GPUs, at an output SNR of about 48 dB against float32
(``benchmarks/offline.py`` measures it). Elsewhere it would be emulated and slower, so
``"auto"`` considers it only where it is native.

``"int8"`` (CPU only) runs the Transformer's linear layers and attention projections as
FBGEMM int8 products with dynamically quantised activations: the cheaper arithmetic for CPUs
without native bfloat16, and on some with it (a Zen 5 EPYC's AVX512-VNNI). ``"auto"`` runs the
fastest of them that the separation commands measured on this CPU for this model within 40 dB
of float32 (:mod:`models.precision_choice`): their speeds depend on the CPU and their SNRs on
the trained weights. Without a measurement it is bfloat16 where native, else float32.

The backend runs the network: ``"torch"``, ``"onnx"`` (ONNX Runtime, float32 on the CPU, an
optional dependency: :mod:`models.onnx_backend`) or ``"openvino"`` (OpenVINO on the CPU, float32
or, where the CPU runs it natively, bfloat16; optional: :mod:`models.openvino_backend`).
``"auto"`` is torch. In float32 neither beat torch on a quiet 2-core AVX2 machine: both were
slower on whole tracks (ONNX Runtime 1.14, OpenVINO 0.90 and 1.01 of the reference's time against
torch's 0.82 and 0.85) and both peak higher (2.4 and 1.6 GB a htdemucs segment against 1.1).
OpenVINO's bfloat16 is the fastest on a bfloat16 CPU (a Zen 5: 0.34 of the reference's time a
segment and a track, against torch int8's 0.41-0.42, at 49 dB; 0.31 since stop 32). It runs where
asked for, and for `separate`'s ``auto`` where measured faster: ``--memory speed`` exports and
measures it (a first export peaks above the 1 GB that `separate` keeps to), ``--memory low``
takes it once nothing is left to export or time (:func:`models.track_job.settle_backend`;
README, "OpenVINO backend"). Here, ``"auto"`` is torch."""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import itertools
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from stemdeck.models.onednn_products import onednn_products
from stemdeck.models.sharing import copy_sharing_weights

PRECISIONS = ("auto", "fp32", "bf16", "int8")
NAMES = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}
BACKENDS = ("auto", "torch", "onnx", "openvino")
ONEDNN_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN's limit on its instruction sets (the older name)
AVX2_CLASS_ISAS = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"})  # oneDNN's names, no AVX-512
NO_BF16_ISAS = AVX2_CLASS_ISAS | {"AVX512_CORE", "AVX512_CORE_VNNI"}


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags from ``/proc/cpuinfo`` (``""`` and none where unreadable)."""
    model_name, flags = "", frozenset()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return model_name, flags
    for line in lines:
        if line.startswith("model name") and not model_name:
            model_name = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = frozenset(line.split(":", 1)[1].split())
    return model_name, flags


def cpu_has_native_bf16() -> bool:
    """Whether the CPU runs bfloat16 natively and this process may. torch's kernels held below
    AVX-512 (``ATEN_CPU_CAPABILITY``) or oneDNN's below AVX512-BF16 (``ONEDNN_MAX_CPU_ISA``) run
    it as an older CPU would, slowly: that is how a bfloat16 CPU measures what an AVX2 one would
    choose (``benchmarks/offline.py --isa avx2``)."""
    flags = cpu_info()[1]
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and onednn_isa_limit() not in NO_BF16_ISAS


def onednn_isa_limit() -> str:
    """oneDNN's instruction-set limit from the environment, upper-case, or ``""``."""
    for name in ONEDNN_ISA_ENV:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip().upper()
    return ""


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"``, ``"bf16"`` or ``"int8"`` for ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"int8 runs on the CPU only, not on {device.type}; choose fp32 or bf16 there")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a resolved precision (a no-op for float32)."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """What our forward runs in: bfloat16's autocast, or on the CPU float32's products through
    oneDNN where it computes them exactly (:mod:`models.onednn_products`; int8 keeps float32
    attention, so it gains too)."""
    if resolve_precision(precision, device) == "bf16" or device.type != "cpu":
        return autocast(precision, device)
    return onednn_products()


def prepare_model(model: torch.nn.Module, precision: str, device: torch.device) -> torch.nn.Module:
    """The model to run, its 2-D convolutions in the channels-last layout oneDNN prefers (the
    transposed ones run about twice as fast so, to the same values within float rounding).

    float32: the model itself, its 4-D weights switched to channels-last in place (no copy of a
    model that may be large). bfloat16: a copy whose convolution, linear and attention weights
    are cast once (autocast would recast them for every chunk, to the same values). int8: a copy
    whose Transformer products are int8 (:func:`~stemdeck.models.nets.transformer.quantize_int8`),
    sharing every other weight with ``model`` (switched to channels-last in place too). Asked
    again for the same model, weights unchanged, it returns the same copy.
    """
    from stemdeck.models.nets.transformer import is_int8

    resolved = resolve_precision(precision, device)
    if is_int8(model):  # made int8 for good (quantize_in_place)
        if resolved != "int8":
            raise ValueError(f"this model's Transformer was made int8; it cannot run {resolved}")
        return model.to(memory_format=torch.channels_last)
    if resolved == "fp32":
        return model.to(memory_format=torch.channels_last)
    key = (resolved, str(device), model.training, _weights_version(model))
    with _LAST_COPY_LOCK:
        source, last_key, last_copy = _LAST_COPY
        if source is not None and source() is model and last_key == key:
            return last_copy
    if resolved == "bf16":
        fast = _copy_to_cast(model)
        _cast_weights(fast, torch.bfloat16)
    else:
        from stemdeck.models.nets.transformer import quantize_int8

        fast = copy_sharing_weights(model)
        quantize_int8(fast)
    fast = fast.to(memory_format=torch.channels_last)
    with _LAST_COPY_LOCK:
        _LAST_COPY[:] = [weakref.ref(model), key, fast]
    return fast


# The last copy prepare_model made, for the next file of a batch with the same model: an int8
# copy of htdemucs takes 1.2-2 s to make on 2 cores. One slot, so no more than one copy stays;
# it is made again once the model's weights change (their version counters, the tensors' ids).
_LAST_COPY: list = [None, None, None]  # weakref to the source model, its key, the copy
_LAST_COPY_LOCK = threading.Lock()


def _copy_to_cast(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose parameters are its own objects over the same tensors: casting
    the copy's weights makes only the cast ones anew (84 MB of bfloat16 for htdemucs), where a
    deep copy first held the whole float model twice (168 MB more at that moment)."""
    memo = {
        id(parameter): torch.nn.Parameter(parameter.data, requires_grad=parameter.requires_grad)
        for parameter in model.parameters()
    }
    memo.update({id(buffer): buffer for buffer in model.buffers()})  # none is cast
    return copy.deepcopy(model, memo)


def _weights_version(model: torch.nn.Module) -> tuple:
    return tuple((id(t), t._version) for t in itertools.chain(model.parameters(), model.buffers()))


def quantize_in_place(model: torch.nn.Module) -> None:
    """Make ``model``'s Transformer int8 for good, for a command that runs nothing else: its
    float weights are freed rather than kept beside an int8 copy (160 MB for htdemucs, which took
    `separate` to 1.0 GB). A bag's models each."""
    from stemdeck.models.bag import models_of
    from stemdeck.models.nets.transformer import quantize_int8

    for part in models_of(model):
        quantize_int8(part)
        part.to(memory_format=torch.channels_last)


def forget_prepared_copy() -> None:
    """Drop the remembered copy (its memory; a benchmark timing a whole separation's set-up)."""
    with _LAST_COPY_LOCK:
        _LAST_COPY[:] = [None, None, None]


def _cast_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    from stemdeck.models.nets.transformer import Attention

    weighted = (
        torch.nn.Conv1d,
        torch.nn.Conv2d,
        torch.nn.ConvTranspose1d,
        torch.nn.ConvTranspose2d,
        torch.nn.Linear,
        Attention,
    )
    for module in model.modules():
        if isinstance(module, weighted):
            module.to(dtype)


# -- the backend -------------------------------------------------------------------------------------


class Network(Protocol):
    """What runs a model's chunks: ``(B, C, T)`` mixture to ``(B, S, C, T)`` stems."""

    backend: str
    precision: str  # resolved

    def __call__(self, mix: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> str: ...


class TorchNetwork:
    """The model in torch, prepared for its precision (:func:`prepare_model`), under autocast."""

    backend = "torch"

    def __init__(self, model: torch.nn.Module, precision: str, device: torch.device):
        self.precision = resolve_precision(precision, device)
        self.model, self.device = prepare_model(model, precision, device), device

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        with forward_context(self.precision, self.device):
            return self.model(mix)

    def describe(self) -> str:
        count = torch.get_num_threads()
        threads = f", {count} thread{'s' if count != 1 else ''}" if self.device.type == "cpu" else ""
        return f"torch ({self.precision} on {self.device.type}{threads})"


def prepare_network(
    model: torch.nn.Module,
    precision: str,
    device: torch.device,
    backend: str = "auto",
    segment_s: float | None = None,
    note: Callable[[str], None] | None = None,
) -> Network:
    """What runs ``model``'s chunks (of ``segment_s`` seconds): torch, ONNX Runtime or OpenVINO
    as ``backend`` asks, ``"auto"`` as the module's docstring says (``note`` hears of a first
    export). ``precision`` ``"auto"`` is resolved without a model here: callers resolve it with
    :func:`models.precision_choice.remembered_precision` first. ``"onnx"`` or ``"openvino"``
    that cannot run here raises ``ValueError`` saying why."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    exported = EXPORTED_BACKENDS.get(backend)
    if exported is None:
        return TorchNetwork(model, precision, device)
    return exported.network(model, precision, device, segment_s, note)


@dataclass(frozen=True)
class ExportedBackend:
    """ONNX Runtime or OpenVINO: the network exported once to ONNX, run on the CPU in float32 (and,
    for OpenVINO, in bfloat16 where the CPU runs it natively), refused in one line where it
    cannot run and where its stems miss the module's SNR bar."""

    flag: str  # --backend's value
    name: str  # as users know it
    module_name: str  # under stemdeck.models: available(), INSTALL_HINT, load_or_export, SNR_BAR_DB
    error_name: str  # the module's exception for a failed export or load
    where: str = ""  # said after "runs float32"
    native_bf16: bool = False  # runs bfloat16 too, where the CPU does natively
    crashes_under_avx2_limit: bool = False  # OpenVINO 2026.4: a segmentation fault in its first run

    def module(self):
        return importlib.import_module(f"stemdeck.models.{self.module_name}")

    def precisions(self) -> tuple[str, ...]:
        """What it runs on this CPU, the fastest first (``auto`` takes the first within the bar)."""
        return ("bf16", "fp32") if self.native_bf16 and cpu_has_native_bf16() else ("fp32",)

    def refusal(self, model, precision: str, device: torch.device, segment_s: float | None) -> str:
        """Why it cannot run this, or ``""``."""
        from stemdeck.models import onnx_backend

        if not self.module().available():
            return f"{self.name} is not installed; {self.module().INSTALL_HINT}, or use --backend torch"
        if device.type != "cpu":
            return f"{self.name} runs on the CPU here, not on {device.type}; use --backend torch"
        if self.crashes_under_avx2_limit and onednn_isa_limit() in AVX2_CLASS_ISAS and "avx512f" in cpu_info()[1]:
            return (
                f"{self.name} crashes where ONEDNN_MAX_CPU_ISA={onednn_isa_limit()} holds an AVX-512 CPU to "
                "older instructions; unset it, or use --backend torch"
            )
        if precision == "bf16" and self.native_bf16 and "bf16" not in self.precisions():
            return (
                f"{self.name} runs bfloat16 only where the CPU has it natively (AVX512-BF16 or AMX), not on "
                "this one; use --precision fp32 or auto, or --backend torch for bf16"
            )
        if precision not in ("auto", *self.precisions()):
            runs = " or ".join(NAMES[name] for name in reversed(self.precisions()))
            choose = ", ".join(reversed(self.precisions()))
            return (
                f"{self.name} runs {runs}{self.where}; use --precision {choose} or auto, "
                f"or --backend torch for {precision}"
            )
        if onnx_backend.network_length(model, segment_s) is None:
            return "it runs HT Demucs models at a fixed segment; use --backend torch for this model"
        return ""

    def network(self, model, precision: str, device: torch.device, segment_s: float | None, note) -> Network:
        """The verified export of ``model`` in ``precision`` (``auto``: the first of
        :meth:`precisions` whose stems keep the SNR bar), or ``ValueError`` saying why not."""
        from stemdeck.models import onnx_backend

        refusal = self.refusal(model, precision, device, segment_s)
        if refusal:
            raise ValueError(f"--backend {self.flag}: {refusal}")
        module = self.module()
        length = onnx_backend.network_length(model, segment_s)
        candidates = self.precisions() if precision == "auto" else (precision,)
        for candidate in candidates:
            options = {"precision": candidate} if self.native_bf16 else {}
            try:
                network = module.load_or_export(model.eval(), length, note=note, **options)
            except getattr(module, self.error_name) as exc:
                raise ValueError(f"--backend {self.flag}: {exc}") from exc
            if network.measured.accurate:
                return network
            missed = (
                f"{self.name}'s {NAMES[candidate]} stems were {network.measured.snr_db:.1f} dB from torch's "
                f"float32 on this model (under {module.SNR_BAR_DB:g} dB)"
            )
            if candidate == candidates[-1]:
                raise ValueError(f"--backend {self.flag}: {missed}; use --backend torch")
            if note is not None:
                note(f"{missed}; running {NAMES[candidates[-1]]}")


EXPORTED_BACKENDS = {
    "onnx": ExportedBackend("onnx", "ONNX Runtime", "onnx_backend", "OnnxError"),
    "openvino": ExportedBackend(
        "openvino",
        "OpenVINO",
        "openvino_backend",
        "OpenVinoError",
        " here",
        native_bf16=True,
        crashes_under_avx2_limit=True,
    ),
}
