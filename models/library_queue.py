"""``stemdeck separate`` as a queue: plan the files (skipping what the manifest says is done),
run them here one at a time, in ``--jobs N`` processes, or on a Ray cluster
(:mod:`models.library_ray`), and show the whole batch's progress and ETA.

Whatever runs a file, the parent alone writes the manifest: a file counts as done once its
outputs were renamed into place and its row committed; a run killed before that redoes it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stemdeck.models.library import Job, JobOptions, Manifest, audio_seconds, output_paths


@dataclass(frozen=True)
class Outcome:
    """What a worker says about one file: where its stems went, or the one line of its failure."""

    index: int
    written: str | None = None
    error: str | None = None


@dataclass
class Plan:
    """The files to separate, and how many the manifest (or another input) already covers."""

    jobs: list[Job]
    skipped: int = 0
    same_content: int = 0


# -- planning -------------------------------------------------------------------------------------------


def plan_jobs(
    folders: dict[Path, Path],
    stem_names: Sequence[str],
    options: JobOptions,
    model_name: str,
    manifest: Manifest | None,
    say: Callable[[str], None],
) -> Plan:
    """A job per input not yet separated with this model and these options.

    With a manifest: an input whose content was separated before, with outputs still there, is
    skipped (wherever it lies now); inputs with the same content are separated once; outputs the
    queue wrote before may be overwritten. Without one, every input is a job (the one-file rule)."""
    plan, key, first_of = Plan([]), options.key(model_name), {}
    for path, folder in folders.items():
        if manifest is None:
            plan.jobs.append(Job(len(plan.jobs), path, folder, "", audio_seconds(path), options.force))
            continue
        try:
            content, seconds = manifest.identify(path)
        except OSError:
            content, seconds = f"unreadable:{path}", 0.0  # its separation fails with its own line
        if content in first_of:
            plan.same_content += 1
            say(f"stemdeck: {path} has the same audio as {first_of[content]}; it is separated once")
            continue
        first_of[content] = path
        done = manifest.lookup(content, key)
        if done is not None and not options.force and all(p.exists() for p in done.outputs):
            plan.skipped += 1
            continue
        outputs = output_paths(folder, stem_names, options)
        ours = all(manifest.owns(p) for p in outputs if p.exists())
        plan.jobs.append(Job(len(plan.jobs), path, folder, content, seconds, options.force or ours))
    return plan


# -- progress -------------------------------------------------------------------------------------------------


class QueueBars:
    """On a terminal: one bar for the batch in seconds of audio (its rate gives the ETA, whatever
    the files' lengths), with files done beside it, and a bar per file being separated.

    Off a terminal there are no bars, only the line per file the caller prints."""

    def __init__(self, jobs: Sequence[Job], enabled: bool):
        self.enabled = enabled
        self.seconds = {job.index: job.seconds for job in jobs}
        self.files, self.files_done = len(jobs), 0
        self._fraction: dict[int, float] = {}
        self._file_bars: dict[int, object] = {}
        self._positions: dict[int, int] = {}
        self._done_s = 0.0
        self._total = None

    def __enter__(self) -> QueueBars:
        if self.enabled and self.files:
            from tqdm import tqdm

            from stemdeck.models.track_job import _bar_columns, _bar_rows

            self._total = tqdm(
                total=round(sum(self.seconds.values()), 1),
                desc="all files",
                unit="s",
                position=0,
                file=sys.stderr,
                ncols=_bar_columns(),
                nrows=_bar_rows(),
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio{postfix} [{elapsed}<{remaining}]",
                postfix=f"0/{self.files} files",
            )
        return self

    def __exit__(self, *exc_info) -> None:
        for index in list(self._file_bars):
            self._close(index)
        if self._total is not None:
            self._total.close()

    def start(self, index: int, path: Path, seconds: float) -> None:
        self._fraction[index] = 0.0
        if self._total is None:
            return
        from tqdm import tqdm

        from stemdeck.models.track_job import _bar_columns, _bar_rows

        used = set(self._positions.values())
        position = self._positions[index] = next(p for p in range(1, len(used) + 2) if p not in used)
        self._file_bars[index] = tqdm(
            total=round(seconds, 1),
            desc=path.name[:40],
            unit="s",
            position=position,
            file=sys.stderr,
            ncols=_bar_columns(),
            nrows=_bar_rows(),
            leave=False,
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s of audio [{elapsed}<{remaining}]",
        )

    def update(self, index: int, fraction: float) -> None:
        self._fraction[index] = fraction
        bar = self._file_bars.get(index)
        if bar is not None:
            bar.update(fraction * bar.total - bar.n)
        self._refresh()

    def done(self, index: int) -> None:
        self._fraction.pop(index, None)
        self._done_s += self.seconds.get(index, 0.0)
        self.files_done += 1
        self._close(index)
        if self._total is not None:
            self._total.set_postfix_str(f"{self.files_done}/{self.files} files", refresh=False)
        self._refresh()

    def say(self, line: str) -> None:
        from stemdeck.models.track_job import printable, say

        if self._total is not None:
            from tqdm import tqdm

            tqdm.write(printable(line), file=sys.stderr)
        else:
            say(line)

    def _refresh(self) -> None:
        if self._total is not None:
            running = sum(self.seconds.get(i, 0.0) * f for i, f in self._fraction.items())
            self._total.update(min(self._done_s + running, self._total.total) - self._total.n)

    def _close(self, index: int) -> None:
        bar = self._file_bars.pop(index, None)
        self._positions.pop(index, None)
        if bar is not None:
            bar.close()


class FileBars:
    """What :func:`models.cli.separate_file` calls for progress, routed to ``report(kind, index, value)``."""

    def __init__(self, index: int, report: Callable[[str, int, object], None]):
        self.index, self.report = index, report
        self._sent = -1.0

    def start_file(self, path: Path, seconds: float) -> None:
        self.report("start", self.index, (os.fsdecode(path), seconds))

    def update(self, fraction: float) -> None:
        if fraction >= 1.0 or fraction - self._sent >= 0.01:  # at most a hundred messages a file
            self._sent = fraction
            self.report("progress", self.index, fraction)

    def say(self, line: str) -> None:
        self.report("say", self.index, line)


# -- one file, wherever it runs ------------------------------------------------------------------------------


def separate_job(model, job: Job, options: JobOptions, device: str, bars) -> Outcome:
    """Separate ``job`` with ``model``; any failure becomes its one line (the batch goes on)."""
    from stemdeck.models.audio import OutputFormat
    from stemdeck.models.track_job import failure_line, separate_file, stem_picker

    try:
        fmt = OutputFormat("wav" if options.format == "stem" else options.format, options.bits, options.clip)
        pick = stem_picker(model.sources, options.stems, options.two_stems)
        args = dataclasses.replace(options, force=options.force or job.overwrite)
        written = separate_file(model, job.path, job.folder, args, fmt, pick, device, bars)
        return Outcome(job.index, written=os.fsdecode(written))
    except Exception as exc:  # noqa: BLE001 (no failure of one file ends the batch)
        return Outcome(job.index, error=failure_line(job.path, exc))


# -- the batch ---------------------------------------------------------------------------------------------------


class Batch:
    """The parent's side: bars, lines, the manifest and the count of failures, as outcomes arrive."""

    def __init__(self, plan: Plan, bars: QueueBars, manifest: Manifest | None, key: str, outputs_of):
        self.jobs = {job.index: job for job in plan.jobs}
        self.bars, self.manifest, self.key, self.outputs_of = bars, manifest, key, outputs_of
        self.failures = 0

    def claim(self, job: Job) -> None:
        """The job's outputs become the queue's, except files already there that it may not
        overwrite: the job fails on those (the user's own), and they stay the user's next run."""
        if self.manifest is not None:
            outputs = self.outputs_of(job)
            self.manifest.claim(outputs if job.overwrite else [path for path in outputs if not path.exists()])

    def report(self, kind: str, index: int, value) -> None:
        """A worker's message: ``start`` (path, seconds), ``progress`` (fraction) or ``say`` (a line)."""
        if kind == "start":
            self.bars.start(index, Path(value[0]), value[1])
        elif kind == "progress":
            self.bars.update(index, value)
        elif kind == "say":
            self.bars.say(value)

    def finish(self, outcome: Outcome) -> None:
        job = self.jobs[outcome.index]
        if outcome.error is not None:
            self.failures += 1
            self.bars.say(f"stemdeck: {outcome.error}")
        else:
            if self.manifest is not None:
                self.manifest.finish(job.content, self.key, job.path, self.outputs_of(job))
            self.bars.say(f"{job.path} -> {outcome.written}")
        self.bars.done(outcome.index)


def run_here(model, plan: Plan, options: JobOptions, device: str, batch: Batch) -> None:
    """``--jobs 1``: every file in this process, in order."""
    for job in plan.jobs:
        batch.claim(job)
        batch.finish(separate_job(model, job, options, device, FileBars(job.index, batch.report)))


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
