"""The separation worker: cuts windows, runs the model, overlap-adds, publishes final stems.

It owns the accumulators and writes the stem buffer and the ``worker`` counters; it only reads
what the audio callback publishes. Windows are processed in order, so everything before the
next window's span is final after each one. :func:`build_worker` makes a session's worker,
wherever it runs (a thread of the engine's process, or the separation process).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from stemdeck.engine.audio.ring import ring_read
from stemdeck.engine.audio.state import (
    MAX_INFERENCE_S,
    MEAN_INFERENCE_S,
    PLAY,
    SCHEDULING,
    SEEK_SERIAL,
    SEPARATED_FROM,
    STEMS_WRITTEN,
    WINDOWS_DONE,
    SharedState,
    input_written_frames,
    playhead_frames,
)
from stemdeck.engine.exit_guard import in_native_section
from stemdeck.engine.session import LIVE, Failure, SessionSpec
from stemdeck.engine.worker.cache import CacheEntry, load_stems, save_stems
from stemdeck.engine.worker.ola import accumulate_window, discard, finalize
from stemdeck.engine.worker.scheduling import IN_PROCESS
from stemdeck.engine.worker.separator import WindowSeparator
from stemdeck.engine.worker.windows import WindowPlan
from stemdeck.models.separate import normalisation, scale_back


class OverlapAdd:
    """Ring-indexed accumulators for one stream of windows."""

    def __init__(self, num_stems: int, channels: int, plan: WindowPlan):
        capacity = plan.window_frames + 2 * plan.hop_frames
        self.acc = np.zeros((num_stems, channels, capacity), np.float32)
        self.weight_acc = np.zeros(capacity, np.float32)
        self.plan = plan

    def reset(self) -> None:
        self.acc.fill(0.0)
        self.weight_acc.fill(0.0)

    def add(
        self, stems: np.ndarray, index: int, origin: int, out: np.ndarray, limit: int, floor: int | None = None
    ) -> int:
        """Accumulate window ``index``; finalise what it completes into ``out`` (from ``floor`` on:
        before it, the frames are dropped); return final-until."""
        plan = self.plan
        accumulate_window(self.acc, self.weight_acc, stems, plan.weights, plan.window_start(index, origin))
        begin = origin + index * plan.hop_frames
        end = min(plan.final_until(index, origin), limit)
        if floor is not None and floor > begin:
            discard(self.acc, self.weight_acc, begin, min(floor, end))
            begin = min(floor, end)
        finalize(self.acc, self.weight_acc, out, begin, end)
        return end


class SeparationWorker(threading.Thread):
    """Base: the loop, timing statistics and error containment."""

    poll_s = 0.002

    def __init__(self, separator: WindowSeparator, plan: WindowPlan, shared: SharedState, stems_out: np.ndarray):
        super().__init__(daemon=True, name=type(self).__name__)
        self.separator, self.plan, self.shared = separator, plan, shared
        self.stems_out = stems_out
        self.ola = OverlapAdd(stems_out.shape[0], stems_out.shape[1], plan)
        self.window = np.zeros((stems_out.shape[1], plan.window_frames), np.float32)
        self.stop_event = threading.Event()
        self.failure: Failure | None = None
        self.on_failure = None  # called with the Failure (the worker process reports it)
        # called first on this thread (the separation process sets the thread's scheduling there)
        self.thread_setup: Callable[[], None] | None = None
        self._inference_total_s = 0.0

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        self.reset_counters()
        try:
            if self.thread_setup is not None:
                self.thread_setup()
            self.loop()
        except BaseException as exc:  # reported through status; the audio keeps the dry signal
            self.failure = Failure.of(exc)
            if self.on_failure is not None:
                self.on_failure(self.failure)

    def loop(self) -> None:
        raise NotImplementedError

    def reset_counters(self) -> None:
        worker = self.shared.worker
        if self.keeps_separated():
            worker[WINDOWS_DONE] = 0
        else:
            worker.fill(0)
        worker[SCHEDULING] = IN_PROCESS  # until a separation process's thread_setup says otherwise
        self.shared.worker_seconds.fill(0.0)

    def keeps_separated(self) -> bool:
        """Whether the stems final so far stay valid for this session (a taken-over one)."""
        return False

    @in_native_section  # the exit waits for a window under way (engine/exit_guard.py)
    def separate_window(self, index: int, origin: int, available_until: int, source: np.ndarray, limit: int) -> int:
        ring_read(source, self.plan.window_start(index, origin), self.window, available_until)
        stems = self.separator(self.window)
        if not np.isfinite(stems).all():  # a broken model: that window is silence, never noise
            np.nan_to_num(stems, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        final = self.ola.add(stems, index, origin, self.stems_out, limit)
        self._record(self.separator.last_seconds)
        return final

    def _record(self, seconds: float) -> None:
        times = self.shared.worker_seconds
        done = int(self.shared.worker[WINDOWS_DONE]) + 1
        self._inference_total_s += seconds
        times[MAX_INFERENCE_S] = max(times[MAX_INFERENCE_S], seconds)
        times[MEAN_INFERENCE_S] = self._inference_total_s / done
        self.shared.worker[WINDOWS_DONE] = done


class LiveWorker(SeparationWorker):
    """Follows live input in the input ring; output goes to the stem ring."""

    def __init__(self, separator, plan, shared, stems_out, input_ring: np.ndarray):
        super().__init__(separator, plan, shared, stems_out)
        self.input_ring = input_ring

    def loop(self) -> None:
        plan, worker = self.plan, self.shared.worker
        capacity = self.input_ring.shape[-1]
        # from where the input is now (0 on a fresh start; later when taking over from a
        # separation process that died)
        index = self._restart_index(input_written_frames(self.shared))
        while not self.stop_event.is_set():
            written = input_written_frames(self.shared)
            if written < plan.window_end(index):
                time.sleep(self.poll_s)
                continue
            if written - plan.window_start(index) > capacity:  # fell behind: the input is gone
                index = self._restart_index(written)
                continue
            final = self.separate_window(index, 0, written, self.input_ring, np.iinfo(np.int64).max)
            worker[STEMS_WRITTEN] = final
            index += 1

    def _restart_index(self, written: int) -> int:
        plan = self.plan
        index = max(0, (written - plan.context_frames) // plan.hop_frames)
        self.ola.reset()
        self.shared.worker[STEMS_WRITTEN] = plan.final_until(index - 1)
        self.shared.worker[SEPARATED_FROM] = plan.final_until(index - 1)
        return index


class DeckWorker(SeparationWorker):
    """Separates a loaded track ahead of the playhead, with the offline chunking where the plan is
    offline's: windows on one grid from the track's start, the track-wide normalisation of
    ``models.separate``, the last window centred. Restarts after a seek or when the playhead
    outran it; runs whether or not the deck plays (a loaded, paused deck gets ahead)."""

    def __init__(
        self,
        separator,
        plan,
        shared,
        stems_out,
        track: np.ndarray,
        cue_frames: int = 0,
        cache_entry: CacheEntry | None = None,
        resume: bool = False,
        quick_frames: int = 0,
    ):
        super().__init__(separator, plan, shared, stems_out)
        self.track = track
        self.origin = min(max(0, cue_frames), max(0, track.shape[-1] - 1))
        self.finished = threading.Event()
        self.cache_entry = cache_entry
        self.resume = resume  # taking over from a process that died: keep what it finished
        self.next_index = 0
        self.floor = 0  # frames before it are final already (or not this pass's to write)
        self.lead_frames = 0  # how far ahead of a playing playhead the last restart aimed
        self.mean, self.std = 0.0, 1.0
        self.shifted = np.zeros((stems_out.shape[0], stems_out.shape[1], plan.window_frames), np.float32)
        # a quick window only where it is shorter than a full one
        quick = quick_frames if 0 < quick_frames < plan.window_frames else 0
        self.quick_window = np.zeros((stems_out.shape[1], quick), np.float32)
        self.quick_pending = False
        self.exact_from = 0  # offline's stems from here (before it, this pass's quick start's)

    def keeps_separated(self) -> bool:
        worker = self.shared.worker
        return self.resume and worker[SEPARATED_FROM] <= self.origin <= worker[STEMS_WRITTEN]

    def loop(self) -> None:
        worker = self.shared.worker
        length = self.track.shape[-1]
        self.mean, self.std = normalisation(self.track)
        cached = load_stems(self.cache_entry, self.stems_out) if self.cache_entry else None
        if self.keeps_separated():  # carry on after what the previous process finished
            self._restart(int(worker[STEMS_WRITTEN]), int(worker[SEPARATED_FROM]))
        elif cached is not None and cached[0] <= self.origin <= cached[1]:
            self._restart(cached[1], cached[0])  # carry on after what the cache holds
        else:
            self._restart(self.origin)
        # nothing new to store when the cache already holds everything from here to the end
        saved = cached is not None and cached[0] <= self.origin and cached[1] >= length
        seeks = int(self.shared.transport[SEEK_SERIAL])
        while not self.stop_event.is_set():
            # a seek restarts at the playhead; a playhead that outran the worker, ahead of it
            playing = bool(self.shared.transport[PLAY]) and seeks == self.shared.transport[SEEK_SERIAL]
            seeks = int(self.shared.transport[SEEK_SERIAL])
            playhead = playhead_frames(self.shared)
            if self._lost(playhead, playing):
                self._restart(self._restart_target(playhead, playing, length))
                saved = False
            if worker[STEMS_WRITTEN] >= length:
                if self.exact_from > worker[SEPARATED_FROM]:
                    self._redo_quick_region(length)
                    continue
                if self.cache_entry is not None and not saved:  # a failure is logged, never fatal
                    save_stems(self.cache_entry, self.stems_out, int(worker[SEPARATED_FROM]), length)
                    saved = True
                self.finished.set()
                time.sleep(self.poll_s * 10)
                continue
            self.finished.clear()
            if self.quick_pending:
                worker[STEMS_WRITTEN] = self._separate_quick(length)
            else:
                worker[STEMS_WRITTEN] = self._separate_next(length)

    def _lost(self, playhead: int, playing: bool) -> bool:
        """The playhead left what this pass covers: a seek, or it outran a slow machine."""
        worker = self.shared.worker
        if playhead > worker[STEMS_WRITTEN] + self.plan.hop_frames:
            return True
        return playhead < worker[SEPARATED_FROM] - (self.lead_frames if playing else 0)

    def _restart_target(self, playhead: int, playing: bool, length: int) -> int:
        """Where to start again: at a paused playhead; ahead of a playing one by the time a window
        takes (stems then arrive about when the playhead does; until then it plays dry)."""
        lead_s = 1.25 * float(self.shared.worker_seconds[MEAN_INFERENCE_S]) if playing else 0.0
        self.lead_frames = int(lead_s * self.track_rate)
        return min(playhead + self.lead_frames, max(0, length - 1))

    @property
    def track_rate(self) -> int:
        return int(self.separator.stream_rate)

    def _redo_quick_region(self, length: int) -> None:
        """At the track's end, the quick start's stems are replaced by offline's, so what is
        cached (and played on a later pass) is the offline separation throughout."""
        start = int(self.shared.worker[SEPARATED_FROM])
        self.ola.reset()
        self.floor, self.next_index = start, self.plan.first_window_covering(start)
        final = start
        while final < self.exact_from and not self.stop_event.is_set():
            final = self._separate_next(length, limit=self.exact_from)
        self.exact_from = start

    @in_native_section  # the exit waits for a window under way (engine/exit_guard.py)
    def _separate_next(self, length: int, limit: int | None = None) -> int:
        index, plan = self.next_index, self.plan
        start = plan.window_start(index)
        short = length - start if plan.centres_last_window and start + plan.window_frames > length else 0
        offset = (plan.window_frames - short) // 2 if short else 0
        self._read_normalised(start - offset, length)
        stems = self.separator(self.window)
        if not np.isfinite(stems).all():  # a broken model: that window is silence, never noise
            np.nan_to_num(stems, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        scale_back(stems, self.mean, self.std)
        if short:  # the part of the centred window that is the chunk, at the chunk's place
            self.shifted.fill(0.0)
            self.shifted[..., :short] = stems[..., offset : offset + short]
            stems = self.shifted
        final = self.ola.add(stems, index, 0, self.stems_out, length if limit is None else limit, self.floor)
        self._record(self.separator.last_seconds)
        self.next_index = index + 1
        return max(final, self.floor)  # a window that ends before the floor finalises nothing new

    @in_native_section  # the exit waits for a window under way (engine/exit_guard.py)
    def _separate_quick(self, length: int) -> int:
        """The quick first stems at a (re)start point: one short window run at its own length,
        its stems taken as they are; the full windows then finalise from where it ends (the
        stems in it are not offline's, the ones after it are)."""
        self.quick_pending = False
        origin = self.floor
        frames = min(self.quick_window.shape[-1], length - origin)
        self._read_normalised(origin, length, self.quick_window)
        stems = self.separator.separate_short(self.quick_window)
        if not np.isfinite(stems).all():
            np.nan_to_num(stems, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        scale_back(stems, self.mean, self.std)
        self.stems_out[..., origin : origin + frames] = stems[..., :frames]
        self.floor = self.exact_from = origin + frames
        return origin + frames

    def _read_normalised(self, position: int, length: int, out: np.ndarray | None = None) -> None:
        """The window from ``position``, normalised track-wide as models.separate does; the
        padding outside the track stays zero (it pads after normalising)."""
        out = self.window if out is None else out
        ring_read(self.track, position, out, length)
        inside = out[:, max(0, -position) : max(0, length - position)]
        inside -= self.mean
        inside /= self.std

    def _restart(self, origin: int, separated_from: int | None = None) -> None:
        """Separate from ``origin`` on; ``[separated_from, origin)`` is final already."""
        self.origin = self.floor = origin
        self.quick_pending = self.quick_window.shape[-1] > 0 and separated_from is None
        self.exact_from = origin if separated_from is None else separated_from
        self.next_index = self.plan.first_window_covering(origin)
        self.ola.reset()
        self.shared.worker[STEMS_WRITTEN] = origin  # never ahead of SEPARATED_FROM for a reader
        self.shared.worker[SEPARATED_FROM] = origin if separated_from is None else separated_from


def build_worker(
    spec: SessionSpec, separator: WindowSeparator, shared: SharedState, arrays: dict[str, np.ndarray]
) -> SeparationWorker:
    """The one place a session's worker is made, in this process or the separation process.

    ``arrays``: ``stems`` and, live, the ``input`` ring or, deck, the ``track``.
    """
    if spec.kind == LIVE:
        return LiveWorker(separator, spec.plan, shared, arrays["stems"], arrays["input"])
    return DeckWorker(
        separator,
        spec.plan,
        shared,
        arrays["stems"],
        arrays["track"],
        spec.cue_frames,
        spec.cache_entry,
        spec.resume,
        spec.quick_frames,
    )


def warm_up_worker_kernels(num_stems: int, channels: int) -> None:
    """Compile (or load from cache) the worker's kernels before the first window is due."""
    ring = np.zeros((channels, 8), np.float32)
    window = np.zeros((channels, 4), np.float32)
    ring_read(ring, 0, window, 8)
    acc = np.zeros((num_stems, channels, 8), np.float32)
    weights = np.zeros(8, np.float32)
    accumulate_window(acc, np.zeros(8, np.float32), np.zeros((num_stems, channels, 4), np.float32), weights, 0)
    finalize(acc, np.zeros(8, np.float32), np.zeros((num_stems, channels, 8), np.float32), 0, 4)
    discard(acc, np.zeros(8, np.float32), 0, 4)
