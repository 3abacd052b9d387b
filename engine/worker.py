"""The separation worker: cuts windows, runs the model, overlap-adds, publishes final stems.

It owns the accumulators and writes the stem buffer and the ``worker`` counters; it only reads
what the audio callback publishes. Windows are processed in order, so everything before the
next window's span is final after each one. :func:`build_worker` makes a session's worker,
wherever it runs (a thread of the engine's process, or the separation process).
"""
from __future__ import annotations

import threading
import time

import numpy as np

from .cache import CacheEntry, load_stems, save_stems
from .ola import accumulate_window, finalize, ring_read
from .separator import WindowSeparator
from .session import LIVE, Failure, SessionSpec
from .state import (MAX_INFERENCE_S, MEAN_INFERENCE_S, SEPARATED_FROM, STEMS_WRITTEN, WINDOWS_DONE, SharedState,
                    input_written_frames, playhead_frames)
from .windows import WindowPlan

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

    def add(self, stems: np.ndarray, index: int, origin: int, out: np.ndarray, limit: int) -> int:
        """Accumulate window ``index``; finalise what it completes into ``out``; return final-until."""
        plan = self.plan
        accumulate_window(self.acc, self.weight_acc, stems, plan.weights, plan.window_start(index, origin))
        begin = origin + index * plan.hop_frames
        end = min(plan.final_until(index, origin), limit)
        finalize(self.acc, self.weight_acc, out, begin, end)
        return end


class SeparationWorker(threading.Thread):
    """Base: the loop, timing statistics and error containment."""

    poll_s = 0.002

    def __init__(self, separator: WindowSeparator, plan: WindowPlan, shared: SharedState,
                 stems_out: np.ndarray):
        super().__init__(daemon=True, name=type(self).__name__)
        self.separator, self.plan, self.shared = separator, plan, shared
        self.stems_out = stems_out
        self.ola = OverlapAdd(stems_out.shape[0], stems_out.shape[1], plan)
        self.window = np.zeros((stems_out.shape[1], plan.window_frames), np.float32)
        self.stop_event = threading.Event()
        self.failure: Failure | None = None
        self.on_failure = None  # called with the Failure (the worker process reports it)
        self._inference_total_s = 0.0

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        self.reset_counters()
        try:
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
        self.shared.worker_seconds.fill(0.0)

    def keeps_separated(self) -> bool:
        """Whether the stems final so far stay valid for this session (a taken-over one)."""
        return False

    def separate_window(self, index: int, origin: int, available_until: int, source: np.ndarray,
                        limit: int) -> int:
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
    """Separates a loaded track ahead of the playhead, restarting there after a seek."""

    def __init__(self, separator, plan, shared, stems_out, track: np.ndarray, cue_frames: int = 0,
                 cache_entry: CacheEntry | None = None, resume: bool = False):
        super().__init__(separator, plan, shared, stems_out)
        self.track = track
        self.origin = min(max(0, cue_frames), max(0, track.shape[-1] - 1))
        self.finished = threading.Event()
        self.cache_entry = cache_entry
        self.resume = resume  # taking over from a process that died: keep what it finished

    def keeps_separated(self) -> bool:
        worker = self.shared.worker
        return self.resume and worker[SEPARATED_FROM] <= self.origin <= worker[STEMS_WRITTEN]

    def loop(self) -> None:
        plan, worker = self.plan, self.shared.worker
        length = self.track.shape[-1]
        cached = load_stems(self.cache_entry, self.stems_out) if self.cache_entry else None
        if self.keeps_separated():  # carry on after what the previous process finished
            self._restart(int(worker[STEMS_WRITTEN]), int(worker[SEPARATED_FROM]))
        elif cached is not None and cached[0] <= self.origin <= cached[1]:
            self._restart(cached[1], cached[0])  # carry on after what the cache holds
        else:
            self._restart(self.origin)
        # nothing new to store when the cache already holds everything from here to the end
        saved = cached is not None and cached[0] <= self.origin and cached[1] >= length
        index = 0
        while not self.stop_event.is_set():
            playhead = playhead_frames(self.shared)
            if playhead < worker[SEPARATED_FROM] or playhead > worker[STEMS_WRITTEN] + plan.hop_frames:
                self._restart(playhead)
                index, saved = 0, False
            if worker[STEMS_WRITTEN] >= length:
                if self.cache_entry is not None and not saved:  # a failure is logged, never fatal
                    save_stems(self.cache_entry, self.stems_out, int(worker[SEPARATED_FROM]), length)
                    saved = True
                self.finished.set()
                time.sleep(self.poll_s * 10)
                continue
            self.finished.clear()
            worker[STEMS_WRITTEN] = self.separate_window(index, self.origin, length, self.track, length)
            index += 1

    def _restart(self, origin: int, separated_from: int | None = None) -> None:
        """Separate from ``origin`` on; ``[separated_from, origin)`` is final already."""
        self.origin = origin
        self.ola.reset()
        self.shared.worker[STEMS_WRITTEN] = origin  # never ahead of SEPARATED_FROM for a reader
        self.shared.worker[SEPARATED_FROM] = origin if separated_from is None else separated_from


def build_worker(spec: SessionSpec, separator: WindowSeparator, shared: SharedState,
                 arrays: dict[str, np.ndarray]) -> SeparationWorker:
    """The one place a session's worker is made, in this process or the separation process.

    ``arrays``: ``stems`` and, live, the ``input`` ring or, deck, the ``track``.
    """
    if spec.kind == LIVE:
        return LiveWorker(separator, spec.plan, shared, arrays["stems"], arrays["input"])
    return DeckWorker(separator, spec.plan, shared, arrays["stems"], arrays["track"], spec.cue_frames,
                      spec.cache_entry, spec.resume)


def warm_up_worker_kernels(num_stems: int, channels: int) -> None:
    """Compile (or load from cache) the worker's kernels before the first window is due."""
    ring = np.zeros((channels, 8), np.float32)
    window = np.zeros((channels, 4), np.float32)
    ring_read(ring, 0, window, 8)
    acc = np.zeros((num_stems, channels, 8), np.float32)
    weights = np.zeros(8, np.float32)
    accumulate_window(acc, np.zeros(8, np.float32), np.zeros((num_stems, channels, 4), np.float32), weights, 0)
    finalize(acc, np.zeros(8, np.float32), np.zeros((num_stems, channels, 8), np.float32), 0, 4)
