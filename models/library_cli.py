"""``stemdeck separate`` with ``-r``, ``--jobs N`` or ``--ray``: the library queue.

-r walks folders and keeps a manifest in OUTDIR (skip what is done, resume what was not);
--jobs and --ray choose where the files run. Without -r the inputs are files, each separated
(existing outputs kept unless --force), as in a plain ``stemdeck separate``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from stemdeck.models.library import (
    MANIFEST_NAME,
    Found,
    JobOptions,
    Manifest,
    content_hash,
    find_audio,
    library_folders,
    output_paths,
)
from stemdeck.models.library_queue import Batch, QueueBars, cores, plan_jobs, run_here


def run_library(args: argparse.Namespace) -> int:
    from stemdeck.models.audio import check_stem_name
    from stemdeck.models.track_job import (
        _remove_leftovers,
        check_backend_fits,
        check_device,
        check_model_segment,
        load_for_command,
        say,
        settle_backend,
        stem_picker,
    )

    workers = check_jobs(args)
    device = args.device or "cpu"
    if not args.ray:
        check_device(device)
    folders = input_folders(args)
    manifest = open_manifest(args.out) if args.recursive else None  # before the model: a bad -o is said at once
    model, name = load_for_command(args.model)
    check_model_segment(model, args.segment)
    check_backend_fits(model, args, device)
    names = list(stem_picker(model.sources, args.stems, args.two_stems)(dict.fromkeys(model.sources)))
    for stem in names:
        check_stem_name(stem)
    say(f"model {name}: {', '.join(model.sources)} at {model.samplerate} Hz")
    settle_backend(model, args, device)  # before the options the workers get
    options = JobOptions.from_args(args)
    try:
        _remove_leftovers(args.out, recursive=args.recursive)
        plan = plan_jobs(folders, names, options, model_identity(args.model, name), manifest, say)
        if plan.skipped:
            say(f"{plan.skipped} file(s) already separated with this model and these options: skipped")
        spec = args.model or name  # what a worker loads: the same checkpoint or registry model
        with QueueBars(plan.jobs, enabled=sys.stderr.isatty()) as bars:
            key = options.key(model_identity(args.model, name))
            batch = Batch(plan, bars, manifest, key, lambda job: output_paths(job.folder, names, options))
            run_batch(args, model, spec, plan, options, device, batch, workers)
    except sqlite3.Error as exc:  # the disk filled, the folder went read-only mid-run
        from stemdeck.models.track_job import CommandError

        where = args.out / MANIFEST_NAME
        raise CommandError(f"{where}: {exc}; free some space or fix the folder, then run again") from None
    finally:
        if manifest is not None:
            manifest.close()
    done = len(plan.jobs) - batch.failures
    skipped = f"; {plan.skipped + plan.same_content} skipped" if manifest is not None else ""
    if not plan.jobs:  # "separated 0 of 0 file(s)" said a rerun with everything done
        say(f"nothing left to separate{skipped}")
    else:
        say(f"separated {done} of {len(plan.jobs)} file(s){skipped}")
    return 1 if batch.failures else 0


def open_manifest(out: Path) -> Manifest:
    """-r's manifest in OUTDIR, or one line on why OUTDIR cannot hold it (a file, read-only)."""
    from stemdeck.models.track_job import CommandError

    if out.exists() and not out.is_dir():
        raise CommandError(f"-o {out} is a file, not a folder; name a folder for the stems")
    try:
        return Manifest(out)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CommandError(
            f"-o {out}: cannot keep the library's manifest there ({reason}); name a folder you can write"
        ) from None


def run_batch(args, model, spec, plan, options, device, batch, workers) -> None:
    """The files here (one at a time, or in ``workers`` processes), or on the Ray cluster;
    nothing started for nothing to do, no more workers than files."""
    workers = min(workers, len(plan.jobs)) if workers else None  # None: the cluster's default
    if not plan.jobs:
        return
    if args.ray:
        from stemdeck.models.library_ray import run_on_ray

        run_on_ray(args.ray, spec, plan, options, args.device, batch, workers)
        return
    from stemdeck.models.track_job import commit_backend, settle_precision

    settle_precision(model, args, device)  # here, once: the workers read what it remembers
    if workers == 1:
        commit_backend(model, options, device)
        run_here(model, plan, options, device, batch)
    else:
        from stemdeck.models.library_pool import run_pool

        export_once(model, options, device)
        run_pool(spec, plan, options, device, batch, workers, max(1, cores() // workers))


def export_once(model, options: JobOptions, device: str) -> None:
    """An exported backend's network (--backend onnx/openvino), made and checked here before the
    workers start: each would otherwise export the same network at once (a minute or two each
    for htdemucs). This process keeps nothing of it; the workers read the cached file."""
    import torch

    from stemdeck.models.precision import EXPORTED_BACKENDS
    from stemdeck.models.track_job import CommandError, say

    backend = EXPORTED_BACKENDS.get(options.backend)
    if backend is None:
        return
    try:
        backend.network(model, options.precision, torch.device(device), options.segment, say)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    backend.module().release()


def check_jobs(args: argparse.Namespace) -> int:
    """``--jobs`` above this machine's cores is refused: the separations would only take turns."""
    from stemdeck.models.track_job import CommandError

    if args.ray:
        from stemdeck.models.library_ray import require_ray

        require_ray()
        return args.jobs  # None: the cluster's default
    available, jobs = cores(), args.jobs or 1
    if jobs > available:
        raise CommandError(
            f"--jobs {jobs}: this machine has {available} core(s); use --jobs {available} or fewer "
            "(or --ray to use more machines)"
        )
    return jobs


def input_folders(args: argparse.Namespace) -> dict[Path, Path]:
    """Every input file (folders walked with -r), each once, with its output folder."""
    from stemdeck.models.track_job import (
        CommandError,
        check_inputs_exist,
        check_no_folders,
        say,
        track_folders,
        unique_inputs,
    )

    check_inputs_exist(args.inputs)
    if not args.recursive:
        check_no_folders(args.inputs)
        found = Found([(path, None) for path in args.inputs], {})
    else:
        found = find_audio(args.inputs, args.out)
        if found.unreadable:
            kinds = ", ".join(f"{count} {suffix}" for suffix, count in sorted(found.unreadable.items()))
            say(f"stemdeck: left alone: {kinds} file(s) stemdeck cannot read; convert them to FLAC to separate them")
    unique = set(unique_inputs([path for path, _ in found.files]))
    found = Found([(path, root) for path, root in found.files if path in unique], found.unreadable)
    if not found.files:
        out = os.path.realpath(args.out)
        if args.recursive and any(os.path.realpath(item) == out for item in args.inputs):
            raise CommandError(
                f"-o {args.out} is the folder to separate: the output folder is never walked; choose another -o"
            )
        raise CommandError(
            f"no audio files (WAV, FLAC, OGG, MP3, AIFF...) in {', '.join(map(str, args.inputs))}; nothing to do"
        )
    loose = track_folders([path for path, root in found.files if root is None], args.out)
    return library_folders(found, args.out, loose)


def model_identity(model_arg: str | None, name: str) -> str:
    """The model as the manifest knows it: a registry name, or a checkpoint by its content (two
    checkpoints with one file name are two models)."""
    path = Path(model_arg) if model_arg else None
    if path is not None and path.is_file():
        return f"{name}:{content_hash(path)}"
    return name
