"""One input file to its stems: the step that the plain ``stemdeck separate``, the library
queue (models.library_queue), its worker processes and its Ray actors share, with the helpers
they all use (one-line errors, output folders, model loading). Below models.cli: the command
line's parsing imports this, never the other way round."""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from stemdeck.models.audio import (
    AudioError,
    OutputFormat,
    StemWriter,
    open_audio,
    remove_stale_partials,
)
from stemdeck.models.checkpoint import CheckpointError
from stemdeck.models.loading import LoadedModel, load_or_fetch


class Progress(Protocol):
    """What a separation tells about its file (a terminal's bars, a worker's queue)."""

    def start_file(self, path: Path, seconds: float) -> None: ...

    def update(self, fraction: float) -> None: ...

    def say(self, line: str) -> None: ...


class CommandError(Exception):
    """A one-line error for the user."""


def printable(text: str) -> str:
    """File names need not be UTF-8: their undecodable bytes are shown as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def say(line: str) -> None:
    print(printable(line), file=sys.stderr)


def separate_file(
    model,
    path: Path,
    folder: Path,
    args: argparse.Namespace,
    fmt: OutputFormat,
    pick: Callable[[dict], dict],
    device: str,
    bars: Progress,
) -> Path:
    """Read, separate and write block by block: memory does not grow with the track's length.

    The stems go to hidden temporaries as they become final and are renamed into place together
    at the end; a failure or an interruption leaves none under its final name."""
    from stemdeck.models.streaming import apply_memory_mode, separate_stream

    memory = apply_memory_mode(getattr(args, "memory", "low"), getattr(args, "backend", "auto"))
    if getattr(args, "verbose", False):
        bars.say(f"stemdeck: memory: {memory}")

    if args.format == "stem":
        return separate_to_stem_file(model, path, folder, args, device, bars)
    names = list(pick(dict.fromkeys(model.sources)))
    existing = [p for p in (folder / f"{name}.{fmt.extension}" for name in names) if p.exists()]
    refuse_overwriting_the_input(path, existing)
    if existing and not args.force:
        raise CommandError(f"{path}: {existing[0]} already exists; use --force to overwrite")
    source = open_audio(path, report=lambda note: bars.say(f"stemdeck: {note}"))
    fmt.check_rate(path, source.samplerate)
    bars.start_file(path, source.frames / source.samplerate)
    settings = stream_settings(args, device, bars)
    with StemWriter(folder, names, source.samplerate, source.channels, fmt) as writer:
        for stems in separate_stream(model, source, settings, progress=bars.update):
            writer.write(pick(stems))
        writer.finish()
    other_ways = "--clip clamp clips the peaks instead" + ("; none keeps them" if fmt.subtype == "FLOAT" else "")
    for name, (peak, divisor) in writer.rescaled.items():
        bars.say(
            f"stemdeck: {path}: {name} peaked at {peak:.2f}, scaled down {20 * math.log10(divisor):.1f} dB "
            f"to fit ({other_ways})"
        )
    return folder


def refuse_overwriting_the_input(path: Path, existing: list[Path]) -> None:
    """An output that is the input file itself (``-o`` its own folder, a stem's name) is refused
    even with --force: writing it would lose the song."""
    for output in existing:
        if os.path.samefile(output, path):
            raise CommandError(f"{path}: its output {output} would overwrite the input itself; choose another -o")


def stream_settings(args: argparse.Namespace, device: str, bars: Progress):
    """The command's separation options; notes (a first ONNX export, with -v the backend) go to ``bars``."""
    from stemdeck.models.streaming import Settings

    return Settings(
        overlap=args.overlap,
        shifts=args.shifts,
        segment=args.segment,
        device=device,
        precision=args.precision,
        backend=getattr(args, "backend", "auto"),
        note=lambda line: bars.say(f"stemdeck: {line}"),
        verbose=getattr(args, "verbose", False),
    )


def separate_to_stem_file(
    model, path: Path, folder: Path, args: argparse.Namespace, device: str, bars: Progress
) -> Path:
    """--format stem: ``<OUTDIR>/<track>.stem.mp4``, the input as its master, the stems as they
    become final, the input's tags carried over; written beside and renamed when complete."""
    from stemdeck.models.stem_file import check_rate, read_tags, write_stem_track
    from stemdeck.models.streaming import separate_stream

    target = folder.with_name(f"{folder.name}.stem.mp4")
    refuse_overwriting_the_input(path, [target] if target.exists() else [])
    if target.exists() and not args.force:
        raise CommandError(f"{path}: {target} already exists; use --force to overwrite")
    source = open_audio(path, report=lambda note: bars.say(f"stemdeck: {note}"))
    check_rate(path, args.codec, source.samplerate)
    bars.start_file(path, source.frames / source.samplerate)
    settings = stream_settings(args, device, bars)
    stems = separate_stream(model, source, settings, progress=bars.update)
    options = {"codec": args.codec, "tags": read_tags(path), "force": args.force, "bits": int(args.bits)}
    note = write_stem_track(target, source.blocks(), stems, source.samplerate, **options)
    if note:
        bars.say(f"stemdeck: {path}: {note}")
    return target


def failure_line(path: Path, exc: Exception) -> str:
    """One line for one file that failed: the expected errors say what to do, the rest their type."""
    if isinstance(exc, (CommandError, AudioError)):
        text = str(exc)
    elif isinstance(exc, MemoryError):
        text = f"{path}: not enough memory to separate it; try a shorter --segment, or split the file"
    elif isinstance(exc, (ValueError, CheckpointError)):
        text = f"{path}: {exc}"
    else:
        text = (
            f"{path}: separation failed ({type(exc).__name__}: {exc}); this is a bug in stemdeck, "
            "please report it with the file"
        )
    return " ".join(text.split())  # one line, whatever the message held


def _remove_leftovers(out: Path, recursive: bool = False) -> None:
    """Temporaries of a run that was killed (SIGKILL, power loss) sit hidden in the track folders
    (with -r, anywhere under OUTDIR: the library's folders are kept there)."""
    try:
        if recursive:
            folders = [Path(root) for root, _, _ in os.walk(out)]
        else:
            folders = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
    except OSError:
        return
    removed = sum(len(remove_stale_partials(folder)) for folder in folders)
    if removed:
        say(f"stemdeck: removed {removed} unfinished stem file(s) left by an interrupted run")


def unique_inputs(inputs: Sequence[Path]) -> list[Path]:
    """The inputs, each file once (the same file named twice is separated once, said in one line)."""
    seen: dict[Path, Path] = {}
    for path in inputs:
        key = Path(os.path.realpath(path))
        if key in seen:
            twice = f"{path} is named twice" if path == seen[key] else f"{path} is the same file as {seen[key]}"
            say(f"stemdeck: {twice}; it is separated once")
            continue
        seen[key] = path
    return list(seen.values())


def track_folders(inputs: Sequence[Path], out: Path) -> dict[Path, Path]:
    """``OUTDIR/<track>`` for each input, a different folder for every input.

    Inputs that share a name (``x/song.wav``, ``y/song.wav``, ``song.flac``) get the name of
    their folder added (``song-x``, ``song-y``), or a short hash of their path where that is
    not enough. Compared case-insensitively, as some file systems do.
    """
    names = {path: _track_name(path) for path in inputs}
    for clash in _clashes(names):
        parents = [path.absolute().parent.name for path in clash]
        unique_parents = all(parents) and len({p.casefold() for p in parents}) == len(parents)
        for path, parent in zip(clash, parents, strict=True):
            names[path] = f"{names[path]}-{parent}" if unique_parents else _hashed(path, names[path])
    for clash in _clashes(names):  # a derived name met another input's own name
        for path in clash:
            names[path] = _hashed(path, _track_name(path))
    if _clashes(names):
        raise CommandError("two inputs would write to the same folder; rename one of them")
    return {path: out / name for path, name in names.items()}


def _track_name(path: Path) -> str:
    stem = path.stem
    return stem if stem.strip(".") else path.name.replace(".", "_")  # "..wav" must not climb out


def _hashed(path: Path, name: str) -> str:
    return f"{name}-{hashlib.sha1(os.fsencode(os.path.realpath(path))).hexdigest()[:8]}"


def _clashes(names: dict[Path, str]) -> list[list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path, name in names.items():
        groups.setdefault(name.casefold(), []).append(path)
    return [group for group in groups.values() if len(group) > 1]


def check_inputs_exist(inputs: Sequence[Path]) -> None:
    """A mistyped path is said before the model loads (seconds for htdemucs), and before any
    file is separated: nothing half done to redo once the path is fixed."""
    for path in inputs:
        if not path.exists():
            raise CommandError(f"{path}: no such file or folder; check the path (nothing was separated)")


def check_no_folders(inputs: Sequence[Path]) -> None:
    """A folder is walked only when asked: -r."""
    check_inputs_exist(inputs)
    for path in inputs:
        if path.is_dir():
            raise CommandError(f"{path} is a directory; add -r to separate the audio files in it")


def load_for_command(name_or_path: str | None) -> LoadedModel:
    """The model a command asked for, what happens said on stderr (with a bar on a terminal)."""
    return load_or_fetch(name_or_path, report=say, progress_bar=sys.stderr.isatty())


def check_model_segment(model, segment_s: float | None) -> None:
    """Refuse a ``--segment`` the model cannot run before any file is read."""
    from stemdeck.models.bag import models_of
    from stemdeck.models.separate import check_segment

    for sub_model in models_of(model):
        check_segment(sub_model, segment_s)


def _bar_columns() -> int:
    """The terminal's width (a pseudo-terminal may say 0: then 100)."""
    import shutil

    return min(120, shutil.get_terminal_size((100, 20)).columns)


def stem_picker(sources: Sequence[str], stems: str | None, two_stems: str | None) -> Callable[[dict], dict]:
    """Which stems to write, as a function of the separated ``{name: audio}``."""
    if two_stems:
        if two_stems not in sources:
            raise CommandError(f"--two-stems {two_stems}: the model has {', '.join(sources)}")

        def pick_two(result: dict) -> dict:
            if any(audio is None for audio in result.values()):
                return {two_stems: None, f"no_{two_stems}": None}
            rest = sum(audio for name, audio in result.items() if name != two_stems)
            return {two_stems: result[two_stems], f"no_{two_stems}": np.asarray(rest, np.float32)}

        return pick_two
    if stems is not None:
        wanted = [name.strip() for name in stems.split(",") if name.strip()]
        if not wanted:  # "" wrote every stem, "," said "unknown stem(s) []"
            raise CommandError(f"--stems {stems!r} names no stem; choose from {', '.join(sources)}")
        unknown = [name for name in wanted if name not in sources]
        if unknown:
            named = ", ".join(repr(name) for name in unknown)
            noun = "stem" if len(unknown) == 1 else "stems"
            raise CommandError(f"--stems {stems}: unknown {noun} {named}; the model has {', '.join(sources)}")
        return lambda result: {name: result[name] for name in wanted}
    return lambda result: dict(result)


def check_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(
            f"--device {device}: CUDA is not available with this torch build "
            f"({torch.__version__}); use --device cpu or install a CUDA build of torch"
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise CommandError(f"--device {device}: expected cpu, cuda or cuda:N")
    return device


def _bar_rows() -> int:
    """The terminal's height, given to tqdm: on a pseudo-terminal that says 0 x 0 (`script`, CI)
    tqdm takes -1 rows and hides every bar."""
    import shutil

    return max(3, shutil.get_terminal_size((100, 20)).lines)


def settle_backend(model, args, device: str, tell: Callable[[str], None] = say) -> None:
    """``--backend auto`` on a CPU with native bfloat16 and OpenVINO installed: OpenVINO in
    bfloat16 where, measured on this model, it takes at most
    :data:`~models.precision_choice.WIN_RATIO` of what torch's ``auto`` takes here (both as shares
    of torch's float32, each measured once and remembered), within the SNR bar. It was 0.31 of
    the reference's time on a Zen 5 against torch int8's 0.40. `separate` with it peaks under 1 GB
    for htdemucs (0.93 GB under ``low``, 0.98 under ``speed``, a 10-minute song; stop 32), but the
    run that first exports it peaks at about 1.3 GB (1.8 GB where it also times torch's precisions;
    stop 33). So ``--memory speed`` (memory for speed) exports and measures it where needed, and
    ``low`` takes it only where nothing is left to export or time (:func:`_ready_under_low`).
    Sets ``args.backend`` and ``args.precision`` to what runs."""
    import torch

    from stemdeck.models.bag import models_of
    from stemdeck.models.precision import EXPORTED_BACKENDS, NAMES
    from stemdeck.models.precision_choice import WIN_RATIO, settle_auto
    from stemdeck.models.streaming import apply_memory_mode

    if not _openvino_may_win(model, args, device):
        return
    cpu, openvino = torch.device("cpu"), EXPORTED_BACKENDS["openvino"]
    if args.memory == "low" and not _ready_under_low(models_of(model)[0], args, cpu):
        if getattr(args, "verbose", False):
            tell(
                "backend auto (--memory low): torch; OpenVINO's bfloat16 is not yet exported and measured for "
                "this model: one run with --memory speed does it (once, at about 1.8 GB), and low runs take it "
                "after where it is faster"
            )
        return
    # the network is compiled here: under low at its own threshold, or glibc's heap keeps what the
    # compile frees between the blocks, and the separation peaks on top (1068 against 936 MB for a
    # 10-minute song); torch is timed only under speed, where the backend changes nothing
    apply_memory_mode(args.memory, "openvino")
    choice = settle_auto(model, "auto", cpu, "auto", args.segment, tell)
    torch_precision = choice.precision if choice is not None else "fp32"
    torch_ratio = choice.share_of_fp32() if choice is not None else 1.0
    try:
        network = openvino.network(models_of(model)[0], "bf16", cpu, args.segment, tell)
    except ValueError as exc:
        apply_memory_mode(args.memory)
        tell(f"backend auto (--memory {args.memory}): torch; {str(exc).split(': ', 1)[-1]}")
        return
    measured = network.measured
    openvino_ratio = measured.openvino_wall_s / measured.torch_wall_s
    figures = (
        f"OpenVINO's bfloat16 took {openvino_ratio:.2f} of torch float32's time on this model at "
        f"{measured.snr_db:.1f} dB, torch's {NAMES[torch_precision]} {torch_ratio:.2f}"
    )
    if openvino_ratio > WIN_RATIO * torch_ratio:
        openvino.module().release()
        apply_memory_mode(args.memory)  # torch's threshold
        tell(f"backend auto (--memory {args.memory}): torch ({figures})")
        return
    args.backend, args.precision = "openvino", "bf16"
    tell(f"backend auto (--memory {args.memory}): openvino, bfloat16 ({figures})")


def _openvino_may_win(model, args, device: str) -> bool:
    """Whether :func:`settle_backend` considers OpenVINO for this command at all (``--memory low``
    then asks :func:`_ready_under_low` too)."""
    import torch

    from stemdeck.models.bag import models_of
    from stemdeck.models.precision import EXPORTED_BACKENDS

    openvino, parts = EXPORTED_BACKENDS["openvino"], models_of(model)
    return (
        getattr(args, "backend", "auto") == "auto"
        and args.precision == "auto"
        and not getattr(args, "ray", None)  # each node is its own machine
        and torch.device(device).type == "cpu"
        and len(parts) == 1  # a bag's models would each need their own export
        and openvino.module().available()
        and "bf16" in openvino.precisions()
        and not openvino.refusal(parts[0], "bf16", torch.device(device), args.segment)
    )


def _ready_under_low(model, args, device) -> bool:
    """Whether this run would neither export OpenVINO's network nor time anything: its bfloat16
    record verified in the cache, and torch's ``auto`` remembered (or pinned). An export peaks at
    about 1.3 GB, and a torch timing leaves 75-105 MB behind on which OpenVINO's run would peak
    (docs/benchmarks.md, stop 33); a cached network separates a 10-minute song at 0.93 GB. Such a
    cache is made once by ``--memory speed`` or ``--backend openvino``."""
    from stemdeck.models import onnx_backend, openvino_backend
    from stemdeck.models.precision_choice import applies, read_choice, record_path

    if applies(model, "auto", device, "auto") and read_choice(record_path(model)) is None:
        return False
    length = onnx_backend.network_length(model, args.segment)
    return openvino_backend.is_measured(model, length, "bf16")


def settle_precision(model, args, device: str, tell: Callable[[str], None] = say) -> None:
    """``--precision auto`` on a CPU: float32, int8 or (where native) bfloat16 for this model,
    measured here the first time (:mod:`models.precision_choice`) and read from the record by
    every separation after, the library's workers included. ``args``: the command's options
    (or a library's :class:`~models.library.JobOptions`); ``tell`` hears the lines."""
    import torch

    from stemdeck.models.precision_choice import applies, settle_auto
    from stemdeck.models.streaming import apply_memory_mode

    backend = getattr(args, "backend", "auto")
    if applies(model, args.precision, torch.device(device), backend):  # it may measure: as the separation runs
        apply_memory_mode(getattr(args, "memory", "low"))
    settle_auto(model, args.precision, torch.device(device), backend, args.segment, tell)
    commit_precision(model, args.precision, device, backend)


def commit_precision(model, precision: str, device: str, backend: str) -> None:
    """int8 for this command (asked for, or ``auto``'s remembered choice): the model is made int8
    in place, its float Transformer freed, since the command runs nothing else with it."""
    import torch

    from stemdeck.models.heap import give_back_freed_memory
    from stemdeck.models.precision import quantize_in_place
    from stemdeck.models.precision_choice import remembered_precision

    if backend in ("auto", "torch") and remembered_precision(model, precision, torch.device(device), backend) == "int8":
        quantize_in_place(model)
        give_back_freed_memory()  # the float Transformer's weights, 4 MB each: under the mmap threshold


def commit_backend(
    model, args, device: str, note: Callable[[str], None] = lambda line: say(f"stemdeck: {line}")
) -> None:
    """--backend onnx or openvino (asked for, or ``--memory speed``'s choice): the network loaded
    once, now, and the torch model's weights given back, since the command runs nothing else with
    them (168 MB of htdemucs's peak). Where it cannot load, nothing changes: each file says why."""
    import torch

    from stemdeck.models.bag import BagOfModels
    from stemdeck.models.heap import give_back_freed_memory
    from stemdeck.models.onnx_backend import give_back_weights
    from stemdeck.models.precision import EXPORTED_BACKENDS, forget_prepared_copy
    from stemdeck.models.streaming import apply_memory_mode

    exported = EXPORTED_BACKENDS.get(getattr(args, "backend", "auto"))
    if exported is None or isinstance(model, BagOfModels):
        return
    # a first export and its measurement: as the separation runs
    apply_memory_mode(getattr(args, "memory", "low"), args.backend)
    try:
        network = exported.network(model, args.precision, torch.device(device), args.segment, note)
    except ValueError:
        return
    forget_prepared_copy()
    give_back_weights(model, network.length)
    give_back_freed_memory()  # the weights, and a first export's copy and trace: small blocks the heap keeps


def check_backend_fits(model, args: argparse.Namespace, device: str) -> None:
    """--backend onnx or openvino that cannot run this model, precision or device: one line once,
    before any file is read, rather than the same line for every file of a batch."""
    import torch

    from stemdeck.models.bag import models_of
    from stemdeck.models.precision import EXPORTED_BACKENDS

    exported = EXPORTED_BACKENDS.get(args.backend)
    if exported is None:
        return
    for sub_model in models_of(model):
        refusal = exported.refusal(sub_model, args.precision, torch.device(device), args.segment)
        if refusal:
            raise CommandError(f"--backend {args.backend}: {refusal}")
