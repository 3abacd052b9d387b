"""OpenVINO for the network of an HT Demucs on the CPU (issue 13): optional, ``stemdeck[openvino]``.

The same split as :mod:`models.onnx_backend`: :meth:`HybridUNet.branches` (the network in real
numbers) runs in OpenVINO's CPU plugin, the STFT and iSTFT in torch. OpenVINO reads the ONNX
file that torch's exporter writes (``onnx_backend.write_onnx``); ONNX Runtime itself is not
needed. On the quiet 2-core AVX2 machine of issue 13 it did an htdemucs segment in about 0.95 of
torch's float32 time but a 20 s track in 1.1-1.2 of it, at 87 dB SNR against torch; it was
faster only while other processes overloaded the cores (docs/benchmarks.md). So in float32 it
runs only when asked for (``--backend openvino``); in bfloat16, `separate`'s ``auto`` takes it
where measured faster (``track_job.settle_backend``).

The export (about a minute and a half for htdemucs) is made once per model and cached beside the
ONNX Runtime backend's files (``$STEMDECK_ONNX_DIR``, else the user cache folder), as
``<digest>.openvino.onnx`` with a JSON record of its SHA-256 and of what the export measured: a
file that does not match its record is exported again, never loaded. At export both torch and
OpenVINO run a probe twice, alternately; OpenVINO's stems must be within :data:`SNR_BAR_DB` of
torch's, and the record keeps the best wall and CPU seconds of each (``-v`` reports them).

OpenVINO runs the network in float32 (``--precision fp32``, asked for explicitly: on CPUs with
native bfloat16 its default would be bfloat16) or, where the CPU runs bfloat16 natively, in
bfloat16 (``--precision bf16``, OpenVINO's bf16 inference precision): on a 2-core Zen 5 EPYC
(AVX512-BF16, no AMX) a segment took 0.33 of the reference's time there, against torch int8's
0.42, at 49 dB from torch's float32 stems (docs/benchmarks.md, stop 29). Each precision is
measured against torch's float32 on the probe once and has its own record
(``<digest>.openvino.json`` for float32, ``<digest>.openvino.bf16.json``); both verify the one
ONNX file. ``--precision auto`` with this backend is bfloat16 where native and within the SNR
bar on the model, else float32. In bfloat16 the network is compiled from float16 weights
(:func:`_float16_weights`).

Memory: the compiled htdemucs holds about 300 MB in bfloat16 and its buffers for a segment about
300 MB (its outputs in float16: :func:`_half_outputs`). `stemdeck separate` with it gives the
torch model's weights back once the network is loaded (``track_job.commit_backend``), and
peaks under 1 GB under ``--memory low`` (934 and 937 MB for 10- and 60-minute songs; docs/benchmarks.md,
stop 32).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stemdeck.models import onnx_backend
from stemdeck.models.nets.htdemucs import HTDemucs
from stemdeck.models.nets.spec import hybrid_spectrogram
from stemdeck.models.nets.unet import complex_as_channels
from stemdeck.models.onednn_products import onednn_products
from stemdeck.models.precision import NAMES, cpu_info

SNR_BAR_DB = onnx_backend.SNR_BAR_DB
FORMAT = 3  # bump when what is exported or measured changes: older records are then not used (3: float16 outputs)
INSTALL_HINT = "pip install 'stemdeck[openvino]'"
PROBE_RUNS = 2  # each side, alternately; the best of each is kept
HINTS = {"fp32": "f32", "bf16": "bf16"}  # our precision: OpenVINO's inference precision hint


class OpenVinoError(Exception):
    """OpenVINO cannot run this model here; the message says why and what to do."""


def available() -> bool:
    """Whether OpenVINO is installed."""
    return onnx_backend._installed("openvino")


def version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]


@dataclass(frozen=True)
class Measurement:
    """What an export measured on its probe: the best of :data:`PROBE_RUNS` wall and process CPU
    seconds of one forward in torch (float32) and in OpenVINO, and the stems' SNR between them."""

    torch_wall_s: float
    openvino_wall_s: float
    torch_cpu_s: float
    openvino_cpu_s: float
    snr_db: float
    threads: int

    @property
    def accurate(self) -> bool:
        return self.snr_db >= SNR_BAR_DB


class OpenVinoNetwork:
    """``(B, C, T)`` mixture to ``(B, S, C, T)`` stems, the network in OpenVINO (in ``precision``),
    the STFT and iSTFT in torch; ``T`` at most the exported length (shorter chunks are
    zero-padded to it)."""

    backend = "openvino"

    def __init__(
        self, model: HTDemucs, compiled, length: int, path: Path, measured: Measurement, precision: str = "fp32"
    ):
        self.model, self.compiled, self.length = model, compiled, length
        self.request = compiled.create_infer_request()
        self.path, self.measured, self.precision = path, measured, precision

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        length = mix.shape[-1]
        if length > self.length:
            raise ValueError(f"chunk of {length} samples is longer than the {self.length} the OpenVINO network runs")
        mix = torch.nn.functional.pad(mix.float().cpu(), (0, self.length - length))
        return torch.cat([self._run(item[None]) for item in mix])[..., :length]

    def branches(self, spec: torch.Tensor, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`HybridUNet.branches` in OpenVINO (outputs copied out of its buffers)."""
        return tuple(out.clone() for out in self._infer(spec, mix))

    def _infer(self, spec: torch.Tensor, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs in OpenVINO's own buffers, valid until the next request (float16 from a
        bfloat16 network: :func:`_half_outputs`). The inputs are read where they are, not copied."""
        self.request.infer([spec.contiguous().numpy(), mix.contiguous().numpy()], share_inputs=True)
        return tuple(torch.from_numpy(self.request.get_output_tensor(i).data) for i in range(2))

    def _run(self, mix: torch.Tensor) -> torch.Tensor:
        """One chunk's stems, made from the outputs where OpenVINO left them (55 MB a segment of
        htdemucs not copied)."""
        spec = complex_as_channels(hybrid_spectrogram(mix, self.model.nfft))
        return self.model.stems(*self._infer(spec, mix), self.length)

    def threads(self) -> int:
        """What it runs on (a library worker's share of the cores, say)."""
        return int(self.compiled.get_property("INFERENCE_NUM_THREADS"))

    def describe(self) -> str:
        measured = self.measured
        return (
            f"openvino (OpenVINO {version()}, {NAMES[self.precision]}, {self.threads()} threads; "
            f"{measured.openvino_wall_s:.2f} against torch float32's {measured.torch_wall_s:.2f} s a chunk "
            f"when measured on {measured.threads}; {self.path})"
        )


# -- the cache ---------------------------------------------------------------------------------------------


def paths(model: HTDemucs, length: int, folder: Path | None = None, precision: str = "fp32") -> tuple[Path, Path]:
    """The cached ONNX file OpenVINO reads and the record of its run in ``precision``."""
    folder = folder or onnx_backend.cache_dir()
    digest = onnx_backend.model_digest(model, length)
    suffix = "" if precision == "fp32" else f".{precision}"  # float32's name as before bf16 was added
    return folder / f"{digest}.openvino.onnx", folder / f"{digest}.openvino{suffix}.json"


def read_record(path: Path) -> dict | None:
    """The JSON record beside a cached file, or ``None`` when missing, damaged or not this format's."""
    return onnx_backend.read_record(path, Measurement, FORMAT)


def _verified(onnx_path: Path, record_path: Path) -> dict | None:
    """The record, where the ONNX file is the one it measured."""
    record = read_record(record_path)
    if record is None or onnx_backend.file_sha256(onnx_path) != record["sha256"]:
        return None
    return record


def is_measured(model: HTDemucs, length: int, precision: str, folder: Path | None = None) -> bool:
    """Whether loading the network in ``precision`` would neither export nor measure it: its file
    is cached and verified by that precision's record."""
    return _verified(*paths(model, length, folder, precision)) is not None


_loaded: dict[tuple[Path, int, str], OpenVinoNetwork] = {}  # file, threads, precision: compiled once a batch


def release() -> None:
    """Drop the loaded network (a process that exported it for others to read)."""
    _loaded.clear()


def load_or_export(
    model: HTDemucs,
    length: int,
    folder: Path | None = None,
    note: onnx_backend.Note | None = None,
    precision: str = "fp32",
) -> OpenVinoNetwork:
    """The OpenVINO network of ``model`` at ``length`` samples in ``precision``: the verified cached
    file and record; the file, where another precision's record verifies it, measured in this one;
    else a new export (``note`` is told of a measurement or an export)."""
    onnx_path, record_path = paths(model, length, folder, precision)
    threads = torch.get_num_threads()
    network = _loaded.get((onnx_path, threads, precision))
    if network is not None:
        return network
    record = _verified(onnx_path, record_path)
    if record is not None:
        measured = Measurement(**record["measured"])
        compiled = _compile(onnx_path, threads, precision, sha256=record["sha256"])
        network = OpenVinoNetwork(model, compiled, length, onnx_path, measured, precision)
    elif onnx_backend.weights_given_back(model):  # nothing left to export or measure
        raise OpenVinoError(f"{onnx_path}: the cached network changed during this run; run the command again")
    elif (sha256 := _verified_by_another(model, length, folder, precision)) is not None:
        if note is not None:
            note(f"measuring OpenVINO's {NAMES[precision]} against torch on this model (once, seconds): {onnx_path}")
        network = _measure_exported(model, length, onnx_path, record_path, threads, precision, sha256)
    else:
        if note is not None:
            why = onnx_backend.why_exported_again(onnx_path, record_path, FORMAT)
            note(f"exporting the network for OpenVINO ({why}once per model, about 2 minutes for htdemucs): {onnx_path}")
        network = _export(model, length, onnx_path, record_path, threads, precision)
    _loaded.clear()  # one model's network at a time
    _loaded[(onnx_path, threads, precision)] = network
    return network


def _verified_by_another(model: HTDemucs, length: int, folder: Path | None, precision: str) -> str | None:
    """The ONNX file's SHA-256 where it is there and another precision's record verifies it."""
    for other in HINTS:
        if other != precision and (record := _verified(*paths(model, length, folder, other))) is not None:
            return record["sha256"]
    return None


def _export(
    model: HTDemucs, length: int, path: Path, record_path: Path, threads: int, precision: str = "fp32"
) -> OpenVinoNetwork:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OpenVinoError(
            f"cannot write the cache folder {path.parent} ({exc}); set ${onnx_backend.CACHE_ENV} elsewhere"
        ) from exc
    mix, spec = _probe(model, length)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        try:
            onnx_backend.write_onnx(model, spec, mix, temporary)
        except onnx_backend.OnnxError as exc:
            raise OpenVinoError(str(exc).replace("--backend torch", "--backend torch (OpenVINO reads it)")) from exc
        network = _compiled_and_measured(model, length, temporary, path, threads, precision, mix, spec)
        sha256 = onnx_backend.file_sha256(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _write_record(record_path, sha256, length, network.measured)
    return network


def _measure_exported(
    model: HTDemucs, length: int, path: Path, record_path: Path, threads: int, precision: str, sha256: str
) -> OpenVinoNetwork:
    """The exported file (its ``sha256`` verified) in another precision: compiled (and its compiled
    form kept), measured on the probe, recorded."""
    mix, spec = _probe(model, length)
    network = _compiled_and_measured(model, length, path, path, threads, precision, mix, spec, sha256)
    _write_record(record_path, sha256, length, network.measured)
    return network


def _probe(model: HTDemucs, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's mixture and its spectrogram, as the network takes them."""
    mix = onnx_backend.probe(model, length)
    return mix, complex_as_channels(hybrid_spectrogram(mix, model.nfft)).contiguous()


def _compiled_and_measured(
    model, length: int, source: Path, path: Path, threads: int, precision: str, mix, spec, sha256: str | None = None
) -> OpenVinoNetwork:
    """The network compiled from ``source`` (to be found at ``path``), measured on the probe."""
    compiled = _compile(source, threads, precision, sha256)
    network = OpenVinoNetwork(model, compiled, length, path, _unmeasured(threads), precision)
    measured = _measure(model, network, spec, mix, threads)
    return OpenVinoNetwork(model, compiled, length, path, measured, precision)


def _write_record(record_path: Path, sha256: str | None, length: int, measured: Measurement) -> None:
    record = {"format": FORMAT, "sha256": sha256, "length": length, "openvino": version(), "measured": asdict(measured)}
    onnx_backend.write_atomically(record_path, json.dumps(record, indent=1).encode())


def _unmeasured(threads: int) -> Measurement:
    return Measurement(0.0, 0.0, 0.0, 0.0, 0.0, threads)


def _compile(path: Path, threads: int, precision: str = "fp32", sha256: str | None = None):
    """OpenVINO's CPU plugin for one request at a time (the latency hint), on torch's thread count,
    in ``precision`` whatever the CPU's native types. With the ``sha256`` of a verified file, its
    compiled form is kept beside it and read back next time (:func:`kept_paths`)."""
    import openvino

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    config["INFERENCE_PRECISION_HINT"] = HINTS[precision]  # on import too: the form does not hold it
    if sha256 is not None and (kept := _read_kept(path, sha256, precision, config)) is not None:
        return kept
    core = openvino.Core()
    try:
        network = core.read_model(str(path))
        if precision == "bf16":
            network = _half_outputs(network)
            _float16_weights(network)
        compiled = core.compile_model(network, "CPU", config)
    except Exception as exc:  # noqa: BLE001 (OpenVINO raises its own RuntimeErrors)
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise OpenVinoError(f"{path}: OpenVINO cannot load it ({first}); use --backend torch") from exc
    if sha256 is not None:
        _keep(compiled, path, sha256, precision)
    return compiled


def _half_outputs(network):
    """The network's outputs in float16 for a bfloat16 run: its values carry 8 bits of mantissa
    there, float16 keeps 11, so nothing is lost, and the outputs' buffers halve (55 to 28 MB a
    segment of htdemucs). With its inputs read in place, a separation's peak fell 70 MB (727 to
    657 MB for the network alone, a segment in 0.66 s against 0.72; docs/benchmarks.md, stop
    32). The stems are made from them in float32 (:meth:`HybridUNet.stems`)."""
    import openvino
    from openvino.preprocess import PrePostProcessor

    steps = PrePostProcessor(network)
    for index in range(len(network.outputs)):
        steps.output(index).tensor().set_element_type(openvino.Type.f16)
    return steps.build()


def _float16_weights(network) -> None:
    """The weights stored in float16 for a bfloat16 run, which rounds them further anyway: the
    compiled network of htdemucs held 460 MB with its float32 weights, 340 MB with these (its
    kept form 116 MB against 196), at the same speed and 0.2 dB from the float32-weights stems
    (52.8 against 53.0 dB from OpenVINO's float32; docs/benchmarks.md, stop 30). OpenVINO keeps
    such weights compressed only where they are marked as decompressed on use, which its own
    ``save_model(compress_to_fp16=True)`` does; this is that transformation, in memory. Where an
    OpenVINO lacks it, the weights stay float32 (the measurement on the probe is of what runs)."""
    try:
        from openvino._offline_transformations import compress_model_transformation
    except ImportError:
        return
    compress_model_transformation(network)


# -- the compiled form -------------------------------------------------------------------------------------
# OpenVINO's own cache (CACHE_DIR) reads its blobs back unchecked: one with bytes changed in the
# middle gave NaN stems. So the compiled form is kept here, with a record of its SHA-256, of the
# ONNX file it was compiled from, of OpenVINO's version and of the CPU, and read back only when all
# match: 0.8 s for htdemucs against 1.5-1.8 s to compile on 2 cores; 196 MB in float32, 116 in bfloat16.


def kept_paths(path: Path, precision: str) -> tuple[Path, Path]:
    """The compiled form of the ONNX file at ``path`` in ``precision``, and its record."""
    kept = path.with_name(f"{path.name}.{precision}.compiled")
    return kept, kept.with_name(f"{kept.name}.json")


def _kept_record(onnx_sha256: str, sha256: str) -> dict:
    model_name, flags = cpu_info()
    return {
        "format": FORMAT,
        "onnx_sha256": onnx_sha256,
        "sha256": sha256,
        "openvino": version(),
        "cpu": model_name,
        "flags": sorted(flags),
    }


def _read_kept(path: Path, onnx_sha256: str, precision: str, config: dict):
    """The kept compiled form, or ``None`` (and it is removed) where it is missing, damaged, or of
    another file, OpenVINO or CPU."""
    import openvino

    kept, record_path = kept_paths(path, precision)
    try:
        record = json.loads(record_path.read_text())
        data = kept.read_bytes()
    except (OSError, ValueError):
        return None
    if record != _kept_record(onnx_sha256, hashlib.sha256(data).hexdigest()):
        _drop_kept(path, precision)
        return None
    try:
        return openvino.Core().import_model(data, "CPU", config)
    except Exception:  # noqa: BLE001 (a form OpenVINO cannot read is compiled again)
        _drop_kept(path, precision)
        return None


def _keep(compiled, path: Path, onnx_sha256: str, precision: str) -> None:
    """Keep ``compiled`` for next time; a cache that cannot be written only costs a compile."""
    kept, record_path = kept_paths(path, precision)
    try:
        data = compiled.export_model().getbuffer()
        onnx_backend.write_atomically(kept, data)
        record = _kept_record(onnx_sha256, hashlib.sha256(data).hexdigest())
        onnx_backend.write_atomically(record_path, json.dumps(record, indent=1).encode())
    except (OSError, RuntimeError):
        _drop_kept(path, precision)


def _drop_kept(path: Path, precision: str) -> None:
    for stale in kept_paths(path, precision):
        stale.unlink(missing_ok=True)


def _give_back_buffers(network: OpenVinoNetwork) -> None:
    """OpenVINO's buffers for a run (330 MB for htdemucs), given back until the next (OpenVINO
    2024.5 and later; an older one keeps them)."""
    release = getattr(network.compiled, "release_memory", None)
    if release is not None:
        release()


def _measure(model: HTDemucs, network: OpenVinoNetwork, spec, mix, threads: int) -> Measurement:
    """Both on the probe, warmed up once, then :data:`PROBE_RUNS` times alternately; the stems' SNR.
    torch runs as its float32 path does (``precision.prepare_model``: 2-D convolutions channels-last,
    in place; ``onednn_products``: its products through oneDNN where exact). OpenVINO's buffers
    are given back before each torch run, never held beside torch's activations, and mapped
    again by an untimed run before each timed one."""
    length = mix.shape[-1]
    model = model.to(memory_format=torch.channels_last)
    torch_times, openvino_times = [], []
    with torch.inference_mode(), onednn_products():
        expected = model.branches(spec, mix)
        got = network.branches(spec, mix)
        for _ in range(PROBE_RUNS):
            _give_back_buffers(network)
            torch_times.append(onnx_backend.timed(lambda: model.branches(spec, mix))[0])
            network.branches(spec, mix)
            openvino_times.append(onnx_backend.timed(lambda: network.branches(spec, mix))[0])
        _give_back_buffers(network)
        expected_stems, got_stems = model.stems(*expected, length), model.stems(*got, length)
        error = (expected_stems - got_stems).pow(2).sum()
        snr = float(10 * torch.log10(expected_stems.pow(2).sum() / error)) if error > 0 else float("inf")
    return Measurement(
        torch_wall_s=min(wall for wall, _ in torch_times),
        openvino_wall_s=min(wall for wall, _ in openvino_times),
        torch_cpu_s=min(cpu for _, cpu in torch_times),
        openvino_cpu_s=min(cpu for _, cpu in openvino_times),
        snr_db=snr,
        threads=threads,
    )
