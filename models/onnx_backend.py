"""ONNX Runtime for the network of an HT Demucs on the CPU (issue 13): optional, ``stemdeck[onnx]``.

What runs in ONNX Runtime is :meth:`HybridUNet.branches`, the whole network in real numbers:
the spectrogram (complex as channels) and the mixture in, both branches' outputs out. The STFT
and iSTFT stay in torch (complex tensors do not export). On a 2-core AVX2 CPU its float32
kernels were no reliable win over torch's: they did an htdemucs segment in 0.77 of torch's CPU
time while the machine was overloaded (load 13), and 1.13 of it when the machine was quiet (load 1),
so ``"auto"`` keeps torch (``benchmarks/offline.py`` measures it).

The export costs about a minute for htdemucs, so it is made once per model and cached in the
user cache folder (``$STEMDECK_ONNX_DIR`` instead, if set), named by a digest of the model's
class, arguments and weights, the length it runs at and the exporting torch's version. A JSON
record beside it holds the file's SHA-256 and what the export measured; the record is written
after the file, both atomically, and a file that does not match its record (truncated, damaged,
left by a killed export) is exported again, never loaded. At export, ONNX Runtime's stems are
checked against torch's on a probe (at least :data:`SNR_BAR_DB`) and both are timed once
(``-v`` shows both times).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from stemdeck.models.heap import give_back_freed_memory
from stemdeck.models.nets.export_form import export_form
from stemdeck.models.nets.htdemucs import HTDemucs
from stemdeck.models.nets.spec import hybrid_spectrogram
from stemdeck.models.nets.unet import complex_as_channels
from stemdeck.models.onednn_products import onednn_products
from stemdeck.models.sharing import copy_sharing_weights

SNR_BAR_DB = 40.0  # issue 13: every backend's stems within 40 dB of torch's float32 ones
FORMAT = 2  # bump when what is exported changes: older cached files are then not used (2: export_form)
CACHE_ENV = "STEMDECK_ONNX_DIR"
INSTALL_HINT = "pip install 'stemdeck[onnx]'"
REQUIRED_MODULES = ("onnxruntime",)  # torch's newer exporter also needs onnx and onnxscript (the extra has them)

Note = Callable[[str], None]


class OnnxError(Exception):
    """The ONNX backend cannot run this model here; the message says why and what to do."""


def available() -> bool:
    """Whether ONNX Runtime and torch's exporter's modules are installed."""
    return all(_installed(name) for name in REQUIRED_MODULES)


def _installed(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None  # None: an import that is to fail
    return importlib.util.find_spec(name) is not None


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("stemdeck")) / "onnx"


def network_length(model: nn.Module, segment_s: float | None) -> int | None:
    """The one length, in samples, the network runs every chunk at, or ``None`` where it varies
    (an ONNX file has fixed shapes): HT Demucs run at their training segment, or at ``segment_s``."""
    if not isinstance(model, HTDemucs):
        return None
    if segment_s is None and not model.use_train_segment:
        return None
    run_length = int(segment_s * model.samplerate) if segment_s is not None else None
    return model.valid_length(run_length) if run_length is not None else int(model.segment * model.samplerate)


@dataclass(frozen=True)
class Measurement:
    """What an export measured on its probe: torch's and ONNX Runtime's process CPU seconds for
    one forward (the steadier measure on a shared machine) and the stems' SNR between them."""

    torch_cpu_s: float
    onnx_cpu_s: float
    torch_wall_s: float
    onnx_wall_s: float
    snr_db: float
    threads: int

    @property
    def faster(self) -> bool:
        return self.onnx_cpu_s < self.torch_cpu_s

    @property
    def accurate(self) -> bool:
        return self.snr_db >= SNR_BAR_DB


class OnnxNetwork:
    """``(B, C, T)`` mixture to ``(B, S, C, T)`` stems, the network in ONNX Runtime, the STFT and
    iSTFT in torch; ``T`` at most the exported length (shorter chunks are zero-padded to it, as
    :meth:`HTDemucs.forward` does)."""

    backend = "onnx"
    precision = "fp32"

    def __init__(self, model: HTDemucs, session, length: int, path: Path, measured: Measurement):
        self.model, self.session, self.length = model, session, length
        self.path, self.measured = path, measured

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        length = mix.shape[-1]
        if length > self.length:
            raise ValueError(f"chunk of {length} samples is longer than the {self.length} the ONNX network runs")
        mix = torch.nn.functional.pad(mix.float().cpu(), (0, self.length - length))
        stems = [self._run(item[None]) for item in mix]
        return torch.cat(stems)[..., :length]

    def _run(self, mix: torch.Tensor) -> torch.Tensor:
        spec = complex_as_channels(hybrid_spectrogram(mix, self.model.nfft)).contiguous()
        spec_out, wave_out = self.session.run(None, {"spec": spec.numpy(), "mix": mix.contiguous().numpy()})
        return self.model.stems(torch.from_numpy(spec_out), torch.from_numpy(wave_out), self.length)

    def describe(self) -> str:
        import onnxruntime

        return (
            f"onnx (ONNX Runtime {onnxruntime.__version__}, float32, {self.measured.threads} threads; "
            f"{self.measured.onnx_cpu_s:.2f} against torch's {self.measured.torch_cpu_s:.2f} CPU s a chunk "
            f"when exported; {self.path})"
        )


# -- the cache ---------------------------------------------------------------------------------------------


def model_digest(model: nn.Module, length: int) -> str:
    """What the exported file depends on: the model's class, arguments and weights, the length it
    runs at, the export format and torch's version (its exporter writes the graph). A model whose
    weights were given back (:func:`give_back_weights`) answers with the digest they had."""
    kept = getattr(model, "given_back_digests", None)
    if kept is not None:
        if length not in kept:
            raise OnnxError(f"this model's weights were given back, and its network at {length} samples was never made")
        return kept[length]
    digest = hashlib.sha256()
    header = {
        "format": FORMAT,
        "class": type(model).__name__,
        "kwargs": getattr(model, "init_kwargs", {}),
        "length": length,
        "torch": torch.__version__,
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:32]


def file_sha256(path: Path) -> str | None:
    """The file's SHA-256, or ``None`` if it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            for block in iter(functools.partial(file.read, 1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def read_record(path: Path, measurement: type = Measurement, record_format: int = FORMAT) -> dict | None:
    """The JSON record beside a cached file, or ``None`` when missing, damaged or not of
    ``record_format`` (its ``measured`` part must make a ``measurement``): ONNX Runtime's by
    default, OpenVINO's with its own."""
    try:
        record = json.loads(path.read_text())
        measurement(**record["measured"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(record.get("sha256"), str) or record.get("format") != record_format:
        return None
    return record


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` in ``path`` whole or not at all (a reader never sees part of it)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def is_cached(model: nn.Module, length: int, folder: Path | None = None) -> bool:
    """Whether an export of this model at ``length`` is in the cache (its file checked on loading)."""
    folder = folder or cache_dir()
    digest = model_digest(model, length)
    return read_record(folder / f"{digest}.json") is not None and (folder / f"{digest}.onnx").is_file()


def give_back_weights(model: nn.Module, length: int) -> None:
    """For a command that runs only the exported network of ``model`` at ``length`` from now on:
    the torch weights freed (168 MB for htdemucs; the network holds its own), the digest they had
    kept, so that the loaded or cached network is still found by it. The model still makes the
    spectrogram and the stems (no weights there), and can no more run in torch or be exported."""
    digest = model_digest(model, length)
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data = torch.empty(0, dtype=tensor.dtype)
    model.given_back_digests = {length: digest}


def weights_given_back(model: nn.Module) -> bool:
    return getattr(model, "given_back_digests", None) is not None


_loaded: dict[tuple[str, int], OnnxNetwork] = {}  # digest, threads: a batch of files loads it once


def release() -> None:
    """Drop the loaded network (a process that exported it for others to read)."""
    _loaded.clear()


def load_or_export(model: HTDemucs, length: int, folder: Path | None = None, note: Note | None = None) -> OnnxNetwork:
    """The ONNX network of ``model`` at ``length`` samples: the verified cached file, else a new
    export (which ``note`` is told about, taking about a minute for htdemucs)."""
    folder = folder or cache_dir()
    threads = torch.get_num_threads()
    digest = model_digest(model, length)
    path, record_path = folder / f"{digest}.onnx", folder / f"{digest}.json"
    network = _loaded.get((digest, threads))
    if network is not None and network.path == path:
        return network
    record = read_record(record_path)
    if record is not None and file_sha256(path) == record["sha256"]:
        network = OnnxNetwork(model, _session(path, threads), length, path, Measurement(**record["measured"]))
    elif weights_given_back(model):  # nothing left to export
        raise OnnxError(f"{path}: the cached network changed during this run; run the command again")
    else:
        if note is not None:
            why = why_exported_again(path, record_path, FORMAT)
            note(f"exporting the network to ONNX ({why}once per model, about a minute for htdemucs): {path}")
        network = _export(model, length, path, record_path, threads)
    _loaded.clear()  # one model's weights at a time
    _loaded[(digest, threads)] = network
    return network


def why_exported_again(path: Path, record_path: Path, current_format: int) -> str:
    """What an export's note says of a cached file it replaces: made by an older stemdeck (its
    record of a format before ``current_format``), or not what its record says; "" for none."""
    if not (path.exists() or record_path.exists()):
        return ""
    try:
        older = int(json.loads(record_path.read_text())["format"]) < current_format
    except (OSError, ValueError, KeyError, TypeError):
        older = False
    return "the cached one was made by an older stemdeck; " if older else "the cached one does not match its record; "


# -- export ----------------------------------------------------------------------------------------------


class _Branches(nn.Module):
    def __init__(self, model: HTDemucs):
        super().__init__()
        self.model = model

    def forward(self, spec: torch.Tensor, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.branches(spec, mix)


def _export(model: HTDemucs, length: int, path: Path, record_path: Path, threads: int) -> OnnxNetwork:
    folder = path.parent
    try:  # a folder that exists but takes no file failed in the exporter: "does not export to ONNX"
        folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(folder / f".{os.getpid()}.probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(folder / f".{os.getpid()}.probe")
    except OSError as exc:
        raise OnnxError(
            f"cannot write the ONNX cache folder {folder} ({exc.strerror or exc}); set ${CACHE_ENV} to a folder "
            "you can write, or use --backend torch"
        ) from None
    mix = probe(model, length)
    spec = complex_as_channels(hybrid_spectrogram(mix, model.nfft)).contiguous()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write_onnx(model, spec, mix, temporary)
        session = _session(temporary, threads)
        measured = _measure(model, session, spec, mix, threads)
        sha256 = file_sha256(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    record = {"format": FORMAT, "sha256": sha256, "length": length, "measured": asdict(measured)}
    write_atomically(record_path, json.dumps(record, indent=1).encode())
    return OnnxNetwork(model, session, length, path, measured)


def probe(model: HTDemucs, length: int) -> torch.Tensor:
    """A fixed, music-loud input: normalised noise with a slow swell."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, model.audio_channels, length, generator=generator)
    swell = 0.5 + 0.5 * torch.sin(torch.linspace(0, 6.28, length))
    return noise * swell


def write_onnx(model: HTDemucs, spec: torch.Tensor, mix: torch.Tensor, target: Path) -> None:
    """Exported from a copy (tracing may leave traced tensors in the model's caches) that shares
    the model's weights (a deep copy added their 168 MB to the export's peak for htdemucs: 1235
    against 1075 MB; docs/benchmarks.md, stop 33), progress lines, notices and warnings kept off
    the terminal. torch's TorchScript exporter first: it exports htdemucs about 3 times as fast
    as the torch.export one (14 against 55 s for the test model on a loaded machine) to a graph
    that ONNX Runtime runs as fast; the newer exporter where torch no longer has it. The copy is
    in :func:`~models.nets.export_form.export_form`: the same numbers in faster operators."""
    branches = _Branches(export_form(copy_sharing_weights(model))).eval()
    failures = []
    for dynamo in (False, True):
        try:
            _quiet_export(branches, spec, mix, target, dynamo)
            del branches
            give_back_freed_memory()  # the copy and the trace: small blocks, kept in the heap when freed
            return
        except Exception as exc:  # noqa: BLE001 (the exporters raise many kinds; each means the same here)
            failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160])
    raise OnnxError(f"this model does not export to ONNX ({'; '.join(failures)}); use --backend torch")


def _quiet_export(branches: nn.Module, spec: torch.Tensor, mix: torch.Tensor, target: Path, dynamo: bool) -> None:
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                branches,
                (spec, mix),
                str(target),
                input_names=["spec", "mix"],
                output_names=["spec_out", "wave_out"],
                dynamo=dynamo,
                external_data=False,
            )
    finally:
        exporter_log.setLevel(level)


def _session(path: Path, threads: int):
    """An ONNX Runtime CPU session at torch's thread count. Its threads sleep between operators
    instead of spinning: on a 2-core machine shared with other work that cost it less CPU time
    (6.9 against 8.0 s a segment) and no wall time. No memory arena and no memory pattern:
    with them an htdemucs segment's peak RSS grew from run to run (2.5 GB after the first, 4.8
    after the second); without, it peaks at 2.4 GB and falls back to 0.6 GB between chunks, at
    the same speed (torch peaks at 1.1 GB: its attention never holds the whole score matrix)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 (onnxruntime's own exception types)
        raise OnnxError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}); use --backend torch") from exc


def _measure(model: HTDemucs, session, spec: torch.Tensor, mix: torch.Tensor, threads: int) -> Measurement:
    """Both backends on the probe: warmed up once, then timed once; the stems' SNR. torch runs as
    its float32 forward does (its products through oneDNN where exact: ``onednn_products``)."""
    length = mix.shape[-1]
    feeds = {"spec": spec.numpy(), "mix": mix.numpy()}
    with torch.inference_mode(), onednn_products():
        model.branches(spec, mix)
        (torch_wall, torch_cpu), expected = timed(lambda: model.branches(spec, mix))
        session.run(None, feeds)
        (onnx_wall, onnx_cpu), got = timed(lambda: session.run(None, feeds))
        expected_stems = model.stems(*expected, length)
        got_stems = model.stems(*(torch.from_numpy(out) for out in got), length)
        error = (expected_stems - got_stems).pow(2).sum()
        snr = float(10 * torch.log10(expected_stems.pow(2).sum() / error)) if error > 0 else float("inf")
    return Measurement(torch_cpu, onnx_cpu, torch_wall, onnx_wall, snr, threads)


def timed(run: Callable):
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return (time.perf_counter() - wall, time.process_time() - cpu), result
