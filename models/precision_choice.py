"""What ``--precision auto`` runs on a CPU: the fastest of float32, int8 and (where the CPU runs
it natively) bfloat16 that keeps the SNR bar on this model, measured once and remembered.

Their speeds depend on the CPU and their errors on the trained weights, so neither can be
decided from flags: int8 took 0.55-0.70 of the reference's time per segment on two AVX2
machines against float32's 0.61-0.73; on a Zen 5 EPYC (AVX512-BF16, no AMX) int8 took 0.40-0.43,
float32 0.49-0.51 and bfloat16 0.51-0.53; on an AMX Xeon bfloat16 0.50 and int8 0.67
(``docs/benchmarks.md``). The separation commands measure them on one segment of the demo song
the first time ``auto`` meets a model on a machine (:func:`settle_auto`); every later run, the
live engine's included, reads the record (:func:`remembered_precision`). Elsewhere (no record,
a GPU, a model without a Transformer) ``auto`` is what :func:`models.precision.resolve_precision`
says.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import platformdirs
import torch

from stemdeck.models.bag import models_of
from stemdeck.models.cache_lock import cache_lock
from stemdeck.models.nets.transformer import Attention, is_int8
from stemdeck.models.onnx_backend import model_digest, write_atomically
from stemdeck.models.precision import (
    NAMES,
    cpu_has_native_bf16,
    cpu_info,
    forget_prepared_copy,
    forward_context,
    prepare_model,
    resolve_precision,
)

RECORD_FORMAT = 1
SNR_BAR_DB = 40.0  # issue 13's bar for the stems of a faster precision against float32
WIN_RATIO = 0.95  # int8 or bf16 must take at most this share of float32's time: a closer call is noise
TIMED_ROUNDS = 2  # per precision, interleaved, after one untimed warm-up each
PIN_ENV = "STEMDECK_AUTO_PRECISION"
MEASURE_LOCK_NAME = "precision-measure.lock"  # in the user cache folder: one measurement at a time
# what FBGEMM's int8 and oneDNN's bfloat16 use
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class PrecisionChoice:
    """One measurement: the chosen precision and why. bfloat16's figures are ``None`` where the
    CPU has no native bfloat16 (it was not timed)."""

    precision: str  # "fp32", "int8" or "bf16"
    fp32_s: float  # best seconds per segment
    int8_s: float
    snr_db: float  # int8's stems against float32's, the worst over a bag's models
    threads: int  # torch's CPU threads while measuring
    bf16_s: float | None = None
    bf16_snr_db: float | None = None

    def share_of_fp32(self) -> float:
        """The chosen precision's time a segment as a share of float32's."""
        seconds = {"fp32": self.fp32_s, "int8": self.int8_s, "bf16": self.bf16_s}[self.precision]
        return (seconds or self.fp32_s) / self.fp32_s

    def describe(self) -> str:
        timed = [("int8", self.int8_s, self.snr_db)]
        if self.bf16_s is not None and self.bf16_snr_db is not None:
            timed.append(("bfloat16", self.bf16_s, self.bf16_snr_db))
        figures = "; ".join(
            f"{name} took {seconds:.2f} s a segment against float32's {self.fp32_s:.2f}, "
            f"{seconds / self.fp32_s:.2f} of it, at {snr:.1f} dB from float32"
            for name, seconds, snr in timed
        )
        rivals = " or ".join(name for name, _, _ in timed)
        return (
            f"{NAMES[self.precision]} ({figures}; {rivals} runs where it takes at most {WIN_RATIO:g} of "
            f"float32's time at {SNR_BAR_DB:g} dB or more)"
        )


def choices_dir() -> Path:
    return Path(platformdirs.user_cache_dir("stemdeck")) / "precision"


def has_int8_work(model: torch.nn.Module) -> bool:
    """Whether int8 changes anything in ``model``: it quantises the Transformer's products only."""
    return any(isinstance(module, Attention) for module in models_of(model)[0].modules())


def pinned() -> str | None:
    """``$STEMDECK_AUTO_PRECISION``: ``fp32`` or ``int8`` for ``auto`` wherever it would be
    measured, without measuring (the same choice on every machine of a fleet, or repeatable
    numbers); unset or ``measure``: measured."""
    value = os.environ.get(PIN_ENV, "").strip().lower()
    if value in ("", "measure"):
        return None
    if value not in ("fp32", "int8"):
        raise ValueError(f"${PIN_ENV}={value!r} is not a choice; set it to fp32, int8 or measure, or unset it")
    return value


def applies(model: torch.nn.Module, precision: str, device: torch.device, backend: str = "auto") -> bool:
    """Whether ``auto`` is decided by measurement here: the CPU, torch, and a model with a
    Transformer, and no :func:`pinned` choice."""
    return eligible(model, precision, device, backend) and pinned() is None


def eligible(model: torch.nn.Module, precision: str, device: torch.device, backend: str = "auto") -> bool:
    """Whether ``auto`` may mean int8 here (measured, or :func:`pinned`)."""
    return (
        precision == "auto"
        and device.type == "cpu"
        and backend in ("auto", "torch")
        and has_int8_work(model)
        and not is_int8(models_of(model)[0])
    )


def record_path(model: torch.nn.Module) -> Path:
    """The record for this model on this machine: its weights, the CPU and torch's version."""
    digest = hashlib.sha256(json.dumps(_machine(), sort_keys=True).encode())
    for part in models_of(model):
        digest.update(model_digest(part, 0).encode())
    return choices_dir() / f"{digest.hexdigest()[:32]}.json"


def remembered_precision(model: torch.nn.Module, precision: str, device: torch.device, backend: str = "auto") -> str:
    """``precision`` resolved for ``model``: ``auto`` is the remembered choice where one applies
    and was measured (or the model was made int8 for good), else
    :func:`~models.precision.resolve_precision`'s answer. Never measures."""
    if precision == "auto" and is_int8(models_of(model)[0]):
        return "int8"
    if precision == "auto" and backend not in ("auto", "torch"):
        return "auto"  # ONNX Runtime and OpenVINO resolve it: models.precision.ExportedBackend.network
    if not eligible(model, precision, device, backend):
        return resolve_precision(precision, device)
    pin = pinned()
    if pin is not None:
        return pin
    choice = read_choice(record_path(model)) if choices_dir().is_dir() else None
    return choice.precision if choice is not None else resolve_precision(precision, device)


def settle_auto(
    model: torch.nn.Module,
    precision: str,
    device: torch.device,
    backend: str = "auto",
    segment_s: float | None = None,
    say: Callable[[str], None] | None = None,
) -> PrecisionChoice | None:
    """Measure and remember the choice for ``model`` if ``auto`` is decided by measurement here and
    nothing is remembered yet (``say`` hears of it: a minute or less, once); the choice in force,
    or ``None`` where ``auto`` is not measured. One process on a machine measures at a time (two
    would time each other's load); the others wait for its record."""
    if not applies(model, precision, device, backend):
        return None
    path = record_path(model)
    choice = read_choice(path)
    if choice is not None:
        return choice
    tell = say or (lambda line: None)
    waiting = "precision auto: another stemdeck process is timing it on this machine; waiting for its result"
    with cache_lock(MEASURE_LOCK_NAME, lambda: tell(waiting)):
        choice = read_choice(path)  # the process waited for has just measured it
        if choice is not None:
            tell(f"precision auto: {choice.describe()}; read from {path}")
            return choice
        if path.exists():
            tell(f"precision auto: the record {path} is unreadable or from another version; timing again")
        tell(f"precision auto: timing {_listed(candidates())} on this CPU for this model (once; it is remembered)")
        choice = measure_choice(model, segment_s)
        failure = write_choice(path, choice)
    where = f"remembered in {path} (delete it to measure again)"
    if failure:
        where = f"could not be written to {path} ({failure}); it is measured again next time"
    tell(f"precision auto: {choice.describe()}; {where}")
    return choice


def candidates() -> tuple[str, ...]:
    """What ``auto`` chooses among here: bfloat16 only where the CPU runs it (elsewhere it is
    emulated, many times slower)."""
    return ("fp32", "int8", "bf16") if cpu_has_native_bf16() else ("fp32", "int8")


def _listed(names: tuple[str, ...]) -> str:
    words = [NAMES[name] for name in names]
    return " and ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} and {words[-1]}"


def measure_choice(model: torch.nn.Module, segment_s: float | None = None) -> PrecisionChoice:
    """Time each of :func:`candidates` on one segment of the demo song (best of
    :data:`TIMED_ROUNDS` after a warm-up) with a bag's first model, and take each one's SNR
    against float32 on every model of the bag. One precision's copy of the model at a time,
    dropped and its memory given back before the next: all three at once took a first
    `stemdeck separate` of htdemucs to 1.35 GB (0.89 GB once the choice is remembered). What
    making the demo song and each copy frees is given back too, before the forwards peak on it."""
    from stemdeck.models.heap import give_back_freed_memory

    models = models_of(model)
    first = models[0].eval()
    length = int(float(segment_s or first.segment) * first.samplerate)
    length = first.valid_length(length) if hasattr(first, "valid_length") else length  # HT Demucs: its training segment
    mix = _demo_mix(length, first.audio_channels)
    give_back_freed_memory()
    names = candidates()
    snrs: dict[str, list[float]] = {name: [] for name in names[1:]}
    times: dict[str, list[float]] = {name: [] for name in names}
    for index, part in enumerate(models):
        rounds = 1 + TIMED_ROUNDS if index == 0 else 1
        outputs = {}
        for name in names:
            run = prepare_model(part.eval(), name, torch.device("cpu"))
            give_back_freed_memory()  # the float copies an int8 copy quantised, freed in small blocks
            for round_index in range(rounds):
                start = time.perf_counter()
                with torch.inference_mode(), forward_context(name, torch.device("cpu")):
                    outputs[name] = run(mix).float()
                if round_index:
                    times[name].append(time.perf_counter() - start)
            del run
            forget_prepared_copy()  # the copy's memory back to the system before the next is made
            give_back_freed_memory()
            if name != "fp32":  # float32 comes first: its stems are the reference, kept alone
                snrs[name].append(snr_db(outputs["fp32"], outputs.pop(name)))
    best = {name: min(seconds) for name, seconds in times.items()}
    worst = {name: min(values) for name, values in snrs.items()}
    return PrecisionChoice(
        verdict(best["fp32"], best["int8"], worst["int8"], best.get("bf16"), worst.get("bf16")),
        best["fp32"],
        best["int8"],
        worst["int8"],
        torch.get_num_threads(),
        best.get("bf16"),
        worst.get("bf16"),
    )


def verdict(
    fp32_s: float, int8_s: float, snr_db: float, bf16_s: float | None = None, bf16_snr_db: float | None = None
) -> str:
    """The fastest of int8 and bfloat16 that takes at most :data:`WIN_RATIO` of float32's time
    at :data:`SNR_BAR_DB` or more; float32 where neither does."""
    timed = [("int8", int8_s, snr_db)] + ([("bf16", bf16_s, bf16_snr_db)] if bf16_s is not None else [])
    winners = [(seconds, name) for name, seconds, snr in timed if seconds <= WIN_RATIO * fp32_s and snr >= SNR_BAR_DB]
    return min(winners)[1] if winners else "fp32"


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    noise = (reference - estimate).double().pow(2).sum()
    return float(10 * torch.log10(reference.double().pow(2).sum() / noise.clamp_min(1e-30)))


def read_choice(path: Path) -> PrecisionChoice | None:
    """The record at ``path``, or ``None`` when missing, damaged or of another format."""
    try:
        record = json.loads(path.read_text())
        if record.get("format") != RECORD_FORMAT:
            return None
        choice = PrecisionChoice(**record["choice"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if choice.precision not in NAMES or (choice.precision == "bf16" and not cpu_has_native_bf16()):
        return None
    return choice


def write_choice(path: Path, choice: PrecisionChoice) -> str | None:
    """The record whole or not at all; why it could not be written, or None (a cache that cannot
    be written only costs a new measurement next time)."""
    record = {"format": RECORD_FORMAT, "machine": _machine(), "choice": asdict(choice)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(record, indent=1).encode())
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def _demo_mix(length: int, channels: int) -> torch.Tensor:
    """``length`` frames of the demo song (music, not noise: int8's error depends on the signal),
    normalised as a separation normalises its input."""
    from stemdeck.models.demo import SAMPLERATE, demo_stems

    mix = sum(demo_stems(length / SAMPLERATE + 1.0).values())[:, :length]
    mix = np.resize(mix, (channels, length)) if mix.shape[0] != channels else mix
    mono = mix.mean(0)
    return torch.from_numpy(((mix - mono.mean()) / (mono.std() + 1e-8)).astype(np.float32))[None]


@functools.cache
def _machine() -> dict:
    """What the precisions' speeds depend on: the CPU, its int8 and bfloat16 instructions and
    torch's kernels."""
    model_name, flags = cpu_info()
    return {
        "cpu": model_name or os.uname().machine,
        "flags": [flag for flag in CPU_FLAGS if flag in flags],
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
    }
