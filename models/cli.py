"""``stemdeck separate``, ``stemdeck models list|fetch`` and ``stemdeck demo``; the entry point
(``stemdeck.cli``) wires them beside the other commands."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from pathlib import Path

from stemdeck.models.audio import (
    CLIP_MODES,
    NONE_NEEDS_FLOAT,
    AudioError,
    OutputFormat,
    check_stem_name,
)
from stemdeck.models.checkpoint import CheckpointError
from stemdeck.models.paths import kept_file, missing_folder
from stemdeck.models.precision import BACKENDS, PRECISIONS
from stemdeck.models.registry import REGISTRY, ModelNotAvailableError, ModelSpec
from stemdeck.models.streaming import MEMORY_MODES
from stemdeck.models.track_job import (  # noqa: F401 (the command line's API: other commands and tests use them here)
    CommandError,
    _bar_columns,
    _bar_rows,
    _remove_leftovers,
    check_backend_fits,
    check_device,
    check_model_segment,
    check_no_folders,
    commit_backend,
    failure_line,
    load_for_command,
    printable,
    say,
    separate_file,
    settle_backend,
    settle_precision,
    stem_picker,
    track_folders,
    unique_inputs,
)

USER_ERRORS = (AudioError, CheckpointError, ModelNotAvailableError, ValueError)
SEGMENT_RANGE_S = (0.5, 600.0)
MAX_OVERLAP = 0.95  # beyond this the chunks barely move: hours of work for nothing
MAX_SHIFTS = 20  # every shift is one more full pass over the track
DEFAULT_OVERLAP = 0.25
SLOW_WORK_FACTOR = 4.0  # --overlap/--shifts asking this many times the default's work are said
DEFAULT_BITS = "24"  # wav, flac and ALAC stems: 24-bit keeps the model's quiet tails
DEFAULT_STEM_CODEC = "alac"
DEFAULT_CLIP = "rescale"
DEMO_SECONDS_RANGE = (1.0, 600.0)  # 10 minutes of stereo float: 0.2 GB while it is made


def _number(text: str, kind: type = float) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def segment_seconds(text: str) -> float:
    """``--segment``: a chunk length a model can run, in seconds."""
    value, (low, high) = _number(text), SEGMENT_RANGE_S
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text} s: give a chunk length between {low:g} and {high:g} seconds")
    return value


def overlap_fraction(text: str) -> float:
    """``--overlap``: the fraction of a chunk shared with the next."""
    value = _number(text)
    if not 0 <= value <= MAX_OVERLAP:
        raise argparse.ArgumentTypeError(f"{text}: give a fraction between 0 and {MAX_OVERLAP:g}")
    return value


def shift_count(text: str) -> int:
    """``--shifts``: how many randomly shifted passes to average."""
    value = _number(text, int)
    if not 0 <= value <= MAX_SHIFTS:
        raise argparse.ArgumentTypeError(f"{text}: give a whole number between 0 and {MAX_SHIFTS}")
    return value


def named(text: str) -> str:
    """--model "" meant htdemucs, silently."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty model name; name one (`stemdeck models list`) or a checkpoint")
    return text


def named_path(text: str) -> Path:
    """-o "" meant the current folder, silently."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty folder name; name the output folder, or leave -o out (separated)")
    return Path(text)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        "-n",
        type=named,
        default=None,
        metavar="NAME|PATH",
        help="registry name (see `stemdeck models list`) or checkpoint path (default: htdemucs "
        "when it is cached or can be downloaded, else the bundled tiny model)",
    )
    group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    group.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: on a CPU, the fastest of float32, int8 and (where native) bfloat16 within 40 dB of "
        "float32, as `separate` measured it for this model (once, remembered; until then bfloat16 where "
        "native, else float32); on a GPU, bfloat16 where it runs it; with --backend openvino, bfloat16 "
        "where native and within 40 dB, else float32; int8: int8 Transformer products (CPU only)",
    )


LIVE_BACKEND_HELP = (
    "what runs the windows padded to the model's training segment (every window of a deck, and live "
    "input's with --preset quality): torch, openvino (OpenVINO on the CPU, bfloat16 where the CPU runs it "
    "natively and it keeps 40 dB, else float32: pip install 'stemdeck[openvino]') or onnx (ONNX Runtime, "
    "float32); exported and measured once, the first time (20 s to 2 minutes for htdemucs); a deck's quick "
    "first stems and other live windows stay torch; auto: torch (default: torch)"
)


def add_live_backend_option(parser: argparse.ArgumentParser) -> None:
    """``--backend`` for the commands that play (live, play, gui): what runs the engine's windows."""
    parser.add_argument("--backend", default="torch", choices=BACKENDS, help=LIVE_BACKEND_HELP)


def add_separation_commands(commands) -> None:
    """``separate`` and ``models``, on the entry point's subcommands."""
    sep = commands.add_parser("separate", help="separate audio files into stems, offline")
    sep.add_argument(
        "inputs", nargs="+", type=Path, metavar="INPUT", help="audio files (WAV, FLAC, OGG, MP3...), or folders with -r"
    )
    sep.add_argument(
        "-o",
        "--out",
        type=named_path,
        default=Path("separated"),
        metavar="OUTDIR",
        help="stems go to OUTDIR/<track>/<stem>.<ext> (default: separated)",
    )
    add_model_options(sep)
    which = sep.add_mutually_exclusive_group()
    which.add_argument("--stems", help="comma-separated stems to write, e.g. vocals,bass")
    which.add_argument("--two-stems", metavar="STEM", help="write STEM and no_STEM (the rest, summed)")
    sep.add_argument(
        "--overlap",
        type=overlap_fraction,
        default=DEFAULT_OVERLAP,
        help=f"overlap between chunks, 0 to {MAX_OVERLAP:g} (default {DEFAULT_OVERLAP:g})",
    )
    sep.add_argument(
        "--shifts",
        type=shift_count,
        default=0,
        help=f"random shifts to average, improves quality, 0 to {MAX_SHIFTS} (default 0)",
    )
    sep.add_argument(
        "--segment",
        type=segment_seconds,
        metavar="SECONDS",
        help="chunk length in seconds, {:g} to {:g}; at most the training segment for "
        "HT Demucs (default: the model's)".format(*SEGMENT_RANGE_S),
    )
    sep.add_argument(
        "--format",
        default="wav",
        choices=("wav", "flac", "mp3", "stem"),
        help="stem: one NI STEM file OUTDIR/<track>.stem.mp4 for Traktor and Mixxx, instead of a file per stem",
    )
    sep.add_argument(
        "--codec", choices=("alac", "aac"), help="--format stem: ALAC (lossless, the default) or AAC (smaller)"
    )
    sep.add_argument(
        "--bits",
        choices=("16", "24", "32f"),
        help="sample format of wav stems, 24 by default (flac: 16 or 24; --format stem: ALAC's, 16 or 24; "
        "mp3 has none)",
    )
    sep.add_argument(
        "--clip",
        default=None,  # rescale; None tells an option given with --format stem (refused) from the default
        choices=CLIP_MODES,
        help="keep stems inside [-1, 1] by scaling down (rescale, the default; said with the peak) or clamping; "
        "none keeps them as separated (--bits 32f only)",
    )
    sep.add_argument("--force", action="store_true", help="overwrite existing stems")
    sep.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="what runs the network: torch, onnx (ONNX Runtime, float32 on the CPU: pip install "
        "'stemdeck[onnx]') or openvino (OpenVINO on the CPU, float32, or bfloat16 where the CPU runs it: "
        "pip install 'stemdeck[openvino]'); auto: torch, or OpenVINO's bfloat16 where measured faster "
        "(see --memory; README: OpenVINO backend)",
    )
    sep.add_argument(
        "--memory",
        default="low",
        choices=MEMORY_MODES,
        help="low: freed model memory goes back to the system at once (htdemucs stays under 1 GB "
        "whatever the song's length); speed: malloc keeps it for reuse, about 25%% faster for about "
        "170 MB more (0.98 GB with htdemucs). With --backend auto both run OpenVINO's bfloat16 where "
        "it is installed and measured faster; only speed exports and measures it, once per model "
        "(about 1.8 GB), and low takes it once that is done (default: low)",
    )
    sep.add_argument(
        "-v", "--verbose", action="store_true", help="say which backend, precision and memory mode run the network"
    )
    add_library_options(sep)
    sep.set_defaults(func=run_separate, device=None)  # None: cpu here, a GPU per Ray worker where the cluster has them

    models = commands.add_parser("models", help="list or download pretrained models")
    models_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    models_commands.add_parser("list", help="known models, their sources and whether they are cached").set_defaults(
        func=run_models_list
    )
    fetch = models_commands.add_parser("fetch", help="download a model into the cache")
    fetch.add_argument("name", metavar="NAME", help=f"one of {', '.join(REGISTRY)}")
    fetch.set_defaults(func=run_models_fetch)


def add_library_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("library")
    group.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="walk folders for audio files (their layout kept under OUTDIR); skip files already "
        "separated with the same model and options (known by content, in OUTDIR's manifest); "
        "a rerun resumes an interrupted one",
    )
    group.add_argument(
        "--jobs",
        "-j",
        type=job_count,
        default=None,
        metavar="N",
        help="separate N files at once, in N processes sharing the cores (default 1); "
        "with --ray, N workers on the cluster (default: one per GPU, else one per 2 CPUs)",
    )
    group.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the files on a Ray cluster (ADDRESS, or auto for the one this machine belongs to), "
        "on its GPUs where it has them unless --device cpu; OUTDIR must be shared storage the workers "
        "write to; needs pip install 'stemdeck[cluster]'",
    )
    group.add_argument(
        "--nice",
        type=niceness,
        default=0,
        metavar="N",
        help="lower this run's priority (and its --jobs workers') by N, 0-19, so a deck playing "
        "on this machine goes first (the GUI's background separation uses 10)",
    )


def niceness(text: str) -> int:
    """``--nice``: how much lower this run's priority is, as nice(1) counts."""
    value = _number(text, int)
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"{text}: give a whole number from 0 (normal) to 19 (lowest)")
    return value


def job_count(text: str) -> int:
    """``--jobs``: a whole number of separations at once."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give a whole number of jobs, 1 or more")
    return value


def add_demo_command(commands) -> None:
    demo = commands.add_parser("demo", help="write a generated demo song to separate")
    demo.add_argument(
        "path", type=Path, nargs="?", default=Path("demo.wav"), help="where to write it; its suffix names the format"
    )
    demo.add_argument(
        "--seconds",
        type=demo_seconds,
        default=12.0,
        help=f"its length, {DEMO_SECONDS_RANGE[0]:g}-{DEMO_SECONDS_RANGE[1]:g} s (default 12)",
    )
    demo.add_argument("--force", action="store_true", help="overwrite an existing file")
    demo.set_defaults(func=run_demo)


# -- separate --------------------------------------------------------------------------------------


def run_separate(args: argparse.Namespace) -> int:
    check_output_options(args)
    check_backend(args)
    if note := work_note(args.overlap, args.shifts):
        print(f"stemdeck: {note}", file=sys.stderr)
    if args.nice:
        os.nice(args.nice)  # the --jobs workers inherit it
    if args.recursive or (args.jobs or 1) != 1 or args.ray:
        from stemdeck.models.library_cli import run_library

        return run_library(args)
    fmt = OutputFormat("wav" if args.format == "stem" else args.format, args.bits, args.clip)
    device = check_device(args.device or "cpu")
    check_no_folders(args.inputs)
    inputs = unique_inputs(args.inputs)
    folders = track_folders(inputs, args.out)
    model, name = load_for_command(args.model)
    check_model_segment(model, args.segment)
    check_backend_fits(model, args, device)
    pick = stem_picker(model.sources, args.stems, args.two_stems)
    for stem in pick(dict.fromkeys(model.sources)):
        check_stem_name(stem)  # they become file names: refused before any file is read
    print(f"model {name}: {', '.join(model.sources)} at {model.samplerate} Hz", file=sys.stderr)
    settle_backend(model, args, device)
    settle_precision(model, args, device)
    commit_backend(model, args, device)
    _remove_leftovers(args.out)
    failures = 0
    with SeparationBars(len(inputs), enabled=sys.stderr.isatty()) as bars:
        for path in inputs:
            try:
                written = separate_file(model, path, folders[path], args, fmt, pick, device, bars)
                bars.say(f"{path} -> {written}")
            except Exception as exc:  # noqa: BLE001 (no failure of one file ends the batch)
                failures += 1
                bars.say(f"stemdeck: {failure_line(path, exc)}")
            bars.file_done()
    done = len(inputs) - failures
    print(f"separated {done} of {len(inputs)} file(s)", file=sys.stderr)
    return 1 if failures else 0


def work_note(overlap: float, shifts: int) -> str | None:
    """A line for --overlap/--shifts that multiply the time a separation takes, so that a run of
    hours is chosen knowingly; None for the usual settings."""
    passes = max(1, shifts) / (1.0 - overlap)  # how many times each second of audio is separated
    factor = passes * (1.0 - DEFAULT_OVERLAP)
    if factor < SLOW_WORK_FACTOR:
        return None
    return (
        f"note: --overlap {overlap:g} --shifts {shifts} separate each second of audio {passes:.0f} times, "
        f"about {factor:.0f}x the time of the default (--overlap {DEFAULT_OVERLAP:g} --shifts 0)"
    )


def check_backend(args: argparse.Namespace) -> None:
    """--backend onnx without ONNX Runtime, openvino without OpenVINO: one line before the model loads."""
    from stemdeck.models import onnx_backend, openvino_backend

    if args.backend == "onnx" and not onnx_backend.available():
        raise CommandError(f"--backend onnx: ONNX Runtime is not installed; {onnx_backend.INSTALL_HINT}")
    if args.backend == "openvino" and not openvino_backend.available():
        raise CommandError(f"--backend openvino: OpenVINO is not installed; {openvino_backend.INSTALL_HINT}")
    package = {"onnx": "onnxruntime", "openvino": "openvino"}.get(args.backend)
    if package is not None:
        try:
            importlib.import_module(package)
        except ImportError as exc:  # installed, but broken: a missing library, a half-done upgrade
            error = " ".join(str(exc).split())
            raise CommandError(
                f"--backend {args.backend}: {package} is installed but does not import ({error}); "
                f"reinstall it (pip install --force-reinstall {package}) or use --backend torch"
            ) from None


def check_output_options(args: argparse.Namespace) -> None:
    """An option that the chosen --format would ignore is refused, not dropped in silence; then
    --bits and --codec get their defaults (24, alac).

    --format stem writes NI's four stems (a 6-stem model's extra ones summed into other) in 16 or
    24-bit ALAC or in AAC: --stems, --two-stems and --bits 32f do not apply. MP3 and AAC have no
    bit depth.
    """
    lossy = "--format mp3" if args.format == "mp3" else "--codec aac" if args.codec == "aac" else None
    if lossy and args.bits is not None:
        raise CommandError(f"{lossy} has no bit depth; drop --bits (it sets wav, flac and ALAC stem files)")
    if args.format != "stem" and args.codec is not None:
        raise CommandError(f"--codec sets the audio of --format stem files; drop it for --format {args.format}")
    if args.format == "stem":
        if args.stems or args.two_stems:
            raise CommandError("--format stem writes drums, bass, other and vocals; drop --stems/--two-stems")
        if args.bits == "32f":
            raise CommandError("--format stem holds 16 or 24-bit ALAC (or AAC); use --bits 16 or 24")
        if args.clip is not None:
            raise CommandError(
                "--format stem clamps samples beyond full scale (rescaled, a stem would no longer match the "
                "master); drop --clip"
            )
    args.bits = args.bits or DEFAULT_BITS
    if args.clip == "none" and (args.format != "wav" or args.bits != "32f"):
        raise CommandError(NONE_NEEDS_FLOAT)
    args.clip = args.clip or DEFAULT_CLIP
    args.codec = args.codec or DEFAULT_STEM_CODEC


class SeparationBars:
    """tqdm bars on a terminal: one for the file, one overall when there are several files.

    Off a terminal there are no bars, only the one line per file the caller prints.
    """

    def __init__(self, files: int, enabled: bool):
        self.files, self.enabled = files, enabled
        self._done_files = 0
        self._file_bar = self._total_bar = None

    def __enter__(self) -> SeparationBars:
        if self.enabled and self.files > 1:
            from tqdm import tqdm

            self._total_bar = tqdm(
                total=self.files,
                desc="all files",
                unit="file",
                position=1,
                file=sys.stderr,
                ncols=_bar_columns(),
                nrows=_bar_rows(),
                bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}]",
            )
        return self

    def __exit__(self, *exc_info) -> None:
        self._close_file_bar()
        if self._total_bar is not None:
            self._total_bar.close()

    def start_file(self, path: Path, seconds: float) -> None:
        self._close_file_bar()
        if self.enabled:
            from tqdm import tqdm

            self._file_bar = tqdm(
                total=round(seconds, 1),
                desc=path.name[:40],
                unit="s",
                position=0,
                file=sys.stderr,
                ncols=_bar_columns(),
                nrows=_bar_rows(),
                leave=False,
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s of audio [{elapsed}<{remaining}]",
            )

    def update(self, fraction: float) -> None:
        """The separation callback: ``fraction`` of the current file is done."""
        if self._file_bar is not None:
            self._file_bar.update(fraction * self._file_bar.total - self._file_bar.n)
        if self._total_bar is not None:
            self._total_bar.update(self._done_files + fraction - self._total_bar.n)

    def file_done(self) -> None:
        self._done_files += 1
        self._close_file_bar()
        if self._total_bar is not None:
            self._total_bar.update(self._done_files - self._total_bar.n)

    def say(self, line: str) -> None:
        """A line on stderr that does not break the bars."""
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(printable(line), file=sys.stderr)
        else:
            say(line)

    def _close_file_bar(self) -> None:
        if self._file_bar is not None:
            self._file_bar.close()
            self._file_bar = None


# -- models ---------------------------------------------------------------------------------------


def run_models_list(args: argparse.Namespace) -> int:
    from stemdeck.models.registry import BUILT_IN, BUNDLED, bundled_path, cache_dir, damaged_files, is_cached

    rows = [("NAME", "SOURCES", "FILES", "CACHED", "DESCRIPTION")]
    damaged: dict[str, list[Path]] = {}
    for spec in REGISTRY.values():
        cached = is_cached(spec)
        if cached and (bad := damaged_files(spec)):
            damaged[spec.name] = bad
        state = cache_state(spec, cached, damaged.get(spec.name, []))
        rows.append((spec.name, ",".join(spec.sources), str(len(spec.files)), state, spec.description))
    for name, (_, sources, description) in BUNDLED.items():
        path = bundled_path(name)
        shipped = f"bundled ({path.stat().st_size / 1e6:.0f} MB)" if path else "missing"
        rows.append((name, ",".join(sources), "1", shipped, description))
    for name, (sources, description) in BUILT_IN.items():
        rows.append((name, ",".join(sources), "0", "built in", description))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[4])
    print(
        f"\ncache: {cache_dir()}  (also searched: $STEMDECK_MODEL_DIR); with no network, copy the "
        "files there (README: Getting the official weights)"
    )
    for name, paths in damaged.items():
        for path in paths:
            print(
                f"{name}: {path} is not this model's file (its checksum or its format); delete it and run "
                f"`stemdeck models fetch {name}`"
            )
    return 0


def cache_state(spec: ModelSpec, cached: bool, damaged: list[Path]) -> str:
    """The CACHED column: no, yes with the size, or damaged."""
    from stemdeck.models.registry import cached_size_bytes

    if not cached:
        return "no"
    if damaged:
        return f"damaged ({len(damaged)} of {len(spec.files)} file(s))"
    return f"yes ({cached_size_bytes(spec) / 1e6:.0f} MB)"


def run_models_fetch(args: argparse.Namespace) -> int:
    from stemdeck.models.registry import BUILT_IN, BUNDLED, fetch

    if args.name in BUNDLED:
        raise CommandError(f"{args.name} comes with stemdeck: nothing to fetch; use it with --model {args.name}")
    if args.name in BUILT_IN:
        raise CommandError(f"{args.name} is built in, with no weights: nothing to fetch")
    for path in fetch(args.name, progress=sys.stderr.isatty()):
        print(path)
    return 0


# -- demo -----------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    from stemdeck.models.demo import write_demo

    write_demo(args.path, seconds=args.seconds, audio_format=demo_format(args.path, args.force))
    print(args.path)
    return 0


def demo_seconds(text: str) -> float:
    """``demo --seconds``: long enough to hear, short enough to hold in memory."""
    value, (low, high) = _number(text), DEMO_SECONDS_RANGE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{value:g} s is outside {low:g}-{high:g} s")
    return value


def demo_format(path: Path, force: bool) -> str:
    """The audio format ``path``'s suffix names; a file there is the user's to keep unless
    ``force``, and the folder must exist (a mistyped one is not made)."""
    import soundfile as sf

    if path.is_dir():
        raise CommandError(f"{path} is a folder; name a file in it, e.g. {path / 'demo.wav'}")
    if problem := kept_file(path, force) or missing_folder(path, "write the demo"):
        raise CommandError(problem)
    formats = {name.lower() for name in sf.available_formats()}
    suffix = path.suffix.lstrip(".").lower()
    suffix = {"aif": "aiff", "oga": "ogg"}.get(suffix, suffix)
    if suffix not in formats or not sf.check_format(suffix.upper(), sf.default_subtype(suffix.upper())):
        raise CommandError(f"{path}: no audio format for {path.suffix or 'a name without a suffix'}; use .wav or .flac")
    return suffix.upper()
