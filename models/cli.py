"""The ``stemdeck`` command line: ``separate``, ``models list|fetch``, ``demo``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import DEFAULT_MODEL
from .audio import AudioError, OutputFormat, read_audio, write_stems_atomically
from .checkpoint import CheckpointError
from .registry import REGISTRY, ModelNotAvailableError

USER_ERRORS = (AudioError, CheckpointError, ModelNotAvailableError, ValueError)
FALLBACK_MODEL = "tiny"  # bundled: used when the default cannot be had


class CommandError(Exception):
    """A one-line error for the user."""


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", "-n", default=None, metavar="NAME|PATH",
                       help="registry name (see `stemdeck models list`) or checkpoint path (default: htdemucs "
                            "when it is cached or can be downloaded, else the bundled tiny model)")
    group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    group.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                       help="auto: bfloat16 where the hardware runs it natively, else float32")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stemdeck", description="Split music into stems with HT Demucs.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    sep = commands.add_parser("separate", help="separate audio files into stems, offline")
    sep.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="audio files (WAV, FLAC, OGG, MP3...)")
    sep.add_argument("-o", "--out", type=Path, default=Path("separated"), metavar="OUTDIR",
                     help="stems go to OUTDIR/<track>/<stem>.<ext> (default: separated)")
    add_model_options(sep)
    which = sep.add_mutually_exclusive_group()
    which.add_argument("--stems", help="comma-separated stems to write, e.g. vocals,bass")
    which.add_argument("--two-stems", metavar="STEM", help="write STEM and no_STEM (the rest, summed)")
    sep.add_argument("--overlap", type=float, default=0.25, help="overlap between chunks (default 0.25)")
    sep.add_argument("--shifts", type=int, default=0, help="random shifts to average, improves quality (default 0)")
    sep.add_argument("--segment", type=float, help="chunk length in seconds (default: the model's)")
    sep.add_argument("--format", default="wav", choices=("wav", "flac", "mp3"))
    sep.add_argument("--bits", default="24", choices=("16", "24", "32f"))
    sep.add_argument("--clip", default="rescale", choices=("rescale", "clamp"),
                     help="keep stems inside [-1, 1] by scaling down (rescale) or clamping")
    sep.add_argument("--force", action="store_true", help="overwrite existing stems")
    sep.set_defaults(func=run_separate)

    models = commands.add_parser("models", help="list or download pretrained models")
    models_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    models_commands.add_parser("list", help="known models, their sources and whether they are cached"
                               ).set_defaults(func=run_models_list)
    fetch = models_commands.add_parser("fetch", help="download a model into the cache")
    fetch.add_argument("name", choices=sorted(REGISTRY), metavar="NAME")
    fetch.set_defaults(func=run_models_fetch)

    from .training_cli import add_training_commands
    add_training_commands(commands, add_model_options)

    demo = commands.add_parser("demo", help="write a generated demo song to separate")
    demo.add_argument("path", type=Path, nargs="?", default=Path("demo.wav"))
    demo.add_argument("--seconds", type=float, default=12.0)
    demo.set_defaults(func=run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_parsed(get_parser(), argv)


def run_parsed(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
               extra_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run the chosen subcommand; user errors become one line on stderr and exit code 1."""
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (CommandError, *USER_ERRORS, *extra_errors) as exc:
        print(f"stemdeck: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stemdeck: interrupted", file=sys.stderr)
        return 130


# -- separate --------------------------------------------------------------------------------------

def run_separate(args: argparse.Namespace) -> int:
    fmt = OutputFormat(args.format, args.bits, args.clip)
    if not 0 <= args.overlap < 1:
        raise CommandError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.shifts < 0:
        raise CommandError("--shifts must be >= 0")
    device = check_device(args.device)
    model = load_or_fetch(args.model)
    pick = stem_picker(model.sources, args.stems, args.two_stems)
    print(f"model {model.stemdeck_name}: {', '.join(model.sources)} at {model.samplerate} Hz", file=sys.stderr)
    failures = 0
    for path in args.inputs:
        try:
            written = separate_file(model, path, args, fmt, pick, device)
            print(f"{path} -> {written}", file=sys.stderr)
        except (AudioError, CommandError) as exc:
            failures += 1
            print(f"stemdeck: {exc}", file=sys.stderr)
    done = len(args.inputs) - failures
    print(f"separated {done} of {len(args.inputs)} file(s)", file=sys.stderr)
    return 1 if failures else 0


def separate_file(model, path: Path, args: argparse.Namespace, fmt: OutputFormat,
                  pick: Callable[[dict], dict], device: str) -> Path:
    from .separate import separate

    folder = args.out / path.stem
    audio, samplerate = read_audio(path)
    expected = [folder / f"{name}.{fmt.extension}" for name in pick({s: None for s in model.sources})]
    existing = [p for p in expected if p.exists()]
    if existing and not args.force:
        raise CommandError(f"{path}: {existing[0]} already exists; use --force to overwrite")
    stems = separate(model, audio, samplerate, overlap=args.overlap, shifts=args.shifts,
                     segment=args.segment, device=device, progress=sys.stderr.isatty(),
                     precision=args.precision)
    write_stems_atomically(pick(stems), samplerate, folder, fmt)
    return folder


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
    if stems:
        wanted = [name.strip() for name in stems.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in sources]
        if unknown or not wanted:
            raise CommandError(f"--stems {stems}: unknown stem(s) {unknown}; the model has {', '.join(sources)}")
        return lambda result: {name: result[name] for name in wanted}
    return lambda result: dict(result)


def check_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(f"--device {device}: CUDA is not available with this torch build "
                           f"({torch.__version__}); use --device cpu or install a CUDA build of torch")
    if device != "cpu" and not device.startswith("cuda"):
        raise CommandError(f"--device {device}: expected cpu, cuda or cuda:N")
    return device


def load_or_fetch(name_or_path: str | None):
    """Load a model; a registry model that is not cached is downloaded first.

    ``None`` is the default: the official htdemucs when it is cached or can be downloaded,
    otherwise (no network, a failed checksum, a damaged cached file) the bundled tiny model,
    said in one line. A model the user named is never swapped: its failure is the error.
    """
    from . import load_model
    from .registry import bundled_path

    name = name_or_path or DEFAULT_MODEL
    try:
        return _named(_load_or_download(name), name)
    except (ModelNotAvailableError, CheckpointError) as exc:
        if name_or_path is not None or bundled_path(FALLBACK_MODEL) is None:
            raise
        print(f"stemdeck: using the bundled {FALLBACK_MODEL} model ({str(exc).splitlines()[0]})", file=sys.stderr)
        return _named(load_model(FALLBACK_MODEL), FALLBACK_MODEL)


def _load_or_download(name: str):
    from . import load_model
    from .registry import fetch

    try:
        return load_model(name)
    except ModelNotAvailableError:
        if name not in REGISTRY:
            raise
    print(f"model {name} is not cached; downloading it", file=sys.stderr)
    fetch(name, progress=sys.stderr.isatty())
    return load_model(name)


def _named(model, name: str):
    """Remember which model this is, for what the user is shown."""
    model.stemdeck_name = Path(name).name if ("/" in name or "." in name) else name
    return model


# -- models ---------------------------------------------------------------------------------------

def run_models_list(args: argparse.Namespace) -> int:
    from .registry import cache_dir, cached_size_bytes, is_cached

    rows = [("NAME", "SOURCES", "FILES", "CACHED", "DESCRIPTION")]
    for spec in REGISTRY.values():
        cached = f"yes ({cached_size_bytes(spec) / 1e6:.0f} MB)" if is_cached(spec) else "no"
        rows.append((spec.name, ",".join(spec.sources), str(len(spec.files)), cached, spec.description))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])
    print(f"\ncache: {cache_dir()}  (also searched: $STEMDECK_MODEL_DIR)")
    return 0


def run_models_fetch(args: argparse.Namespace) -> int:
    from .registry import fetch

    for path in fetch(args.name, progress=sys.stderr.isatty()):
        print(path)
    return 0


# -- demo -----------------------------------------------------------------------------------------

def run_demo(args: argparse.Namespace) -> int:
    from .demo import write_demo

    write_demo(args.path, seconds=args.seconds)
    print(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
