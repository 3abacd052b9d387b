"""The engine's control side: the thread-safe API the CLI, GUI and MIDI drive.

It owns the buffers (all sized at start), starts the separation worker and the audio stream,
and reads the lock-free status. The control lock only orders control writers among
themselves; the audio callback never takes it.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from .calibrate import Calibration, calibrate
from .callbacks import deck_block, live_block, warm_up_kernels
from .config import PRESETS, EngineConfig, WindowConfig
from .device import DeviceError, open_stream
from .jack_output import serves as jack_serves
from .separator import WindowSeparator
from .state import (BLOCKS, FALLBACK, INPUT_WRITTEN, LATE_WINDOWS, MAX_INFERENCE_S, MEAN_INFERENCE_S, PLAY, PLAYHEAD,
                    PLAYING_STEMS, POSITION, SEEK_SERIAL, SEEK_TARGET, STEMS_WRITTEN, WAITING_FOR_STEMS, WINDOWS_DONE,
                    XRUNS, SharedState, gain_state)
from .windows import WindowPlan
from .process import SharedBlock, WorkerError, WorkerProcess, clean_stale_segments
from .worker import DeckWorker, LiveWorker, SeparationWorker, warm_up_worker_kernels

STREAM_LOST = ("the audio stream stopped: the device was removed or the sound server quit; "
               "reconnect it (or restart the server) and start again")
GIL_SWITCH_INTERVAL_S = 0.0005
MIN_GAIN_DB = -60.0  # at or below: silence
MAX_GAIN_DB = 12.0
# A separation process that dies (killed for memory, say) is restarted while the audio plays
# dry; more deaths than this within the window means something is wrong with it: give up.
MAX_WORKER_RESTARTS = 3
WORKER_RESTART_WINDOW_S = 60.0
SUPERVISE_POLL_S = 0.1


@dataclass(frozen=True)
class EngineStatus:
    """A snapshot for displays and scripts."""

    latency_samples: int
    latency_ms: float
    samplerate: int
    sources: tuple[str, ...]
    peak: tuple[float, ...]  # per stem, then the mix
    rms: tuple[float, ...]
    xruns: int
    late_windows: int
    fallback: bool  # this block plays dry because stems were late
    realtime_factor: float  # mean inference time / hop: the worker's share of real time
    max_realtime_factor: float
    headroom: float
    windows_done: int
    position_s: float
    playing: bool
    seconds_ahead: float  # deck: separated audio ahead of the playhead
    first_stems_s: float | None  # deck: play to first separated audio
    worker_error: str | None
    stream_error: str | None
    worker_notice: str | None = None  # e.g. the separation process died and is being restarted


def db_to_gain(db: float) -> float:
    return 0.0 if db <= MIN_GAIN_DB else 10.0 ** (min(db, MAX_GAIN_DB) / 20.0)


def gain_to_db(gain: float) -> float:
    return MIN_GAIN_DB if gain <= 10.0 ** (MIN_GAIN_DB / 20.0) else 20.0 * math.log10(gain)


@dataclass(frozen=True)
class MixerState:
    """What the controls are set to (not what the ramps have reached)."""

    gain_db: tuple[float, ...]
    mute: tuple[bool, ...]
    solo: tuple[bool, ...]
    dry_mix: float
    playing: bool


class Engine:
    """Live stems from a model: a file deck or live input, mixed with gain, mute and solo."""

    def __init__(self, model: nn.Module, config: EngineConfig = EngineConfig()):
        self.model, self.config = model, config
        if config.worker not in ("process", "thread"):
            raise ValueError(f"worker must be 'process' or 'thread', got {config.worker!r}")
        self.sources = tuple(model.sources)
        self._process: WorkerProcess | None = None
        self._blocks: list[SharedBlock] = []
        self._retired_blocks: list[SharedBlock] = []
        self._fingerprint: str | None = None
        self._session_args: tuple | None = None  # (kind, specs, cache_path): to restart a dead worker
        self._process_lock = threading.RLock()
        self._supervisor: threading.Thread | None = None
        self._closing = threading.Event()
        self._restart_times: list[float] = []
        self._worker_notice: str | None = None
        self._worker_fatal: str | None = None
        self.worker_restart_s: float | None = None  # how long the last restart took
        if config.cache_stems:
            from .cache import cache_folder, clean_temporaries
            clean_temporaries(cache_folder())
        if config.worker == "process":
            clean_stale_segments()
            self._state_block = SharedBlock(SharedState.specs(len(self.sources)))
            self.shared = SharedState.create(len(self.sources), self._state_block.arrays)
        else:
            self.shared = SharedState.create(len(self.sources))
        self._gains = gain_state(len(self.sources))
        self._control = threading.Lock()
        self._ramp_frames = max(1, int(config.ramp_ms * config.samplerate / 1000))
        self.calibration: Calibration | None = None
        self.plan: WindowPlan | None = None
        self.latency_samples = 0
        self._worker: SeparationWorker | None = None
        self._stream = None
        self._stream_error: str | None = None
        self._output_block_frames = 0  # the block the open output asks for (JACK: the server's period)
        self._mode: str | None = None
        self._play_started: float | None = None
        self._first_stems_s: float | None = None
        self.cue_s = 0.0

    # -- set-up --------------------------------------------------------------------------------------

    def prepare(self, window: WindowConfig | str | None = None, block_frames: int = 256,
                calibrate_plan: bool = True) -> WindowPlan:
        """Fix the window plan (calibrated on this machine) and the latency for the session."""
        window = PRESETS[window] if isinstance(window, str) else (window or self.config.window)
        window = window.resolved(float(self.model.segment))
        if calibrate_plan and self.config.inference_budget_s is None:
            if self.config.worker == "process":
                self.calibration = self._worker_process().calibrate(window, self.config.headroom)
            else:
                self.calibration = calibrate(self._separator_for, window, self.config.headroom)
            window, budget_s = self.calibration.window, self.calibration.budget_s
        else:
            budget_s = self.config.inference_budget_s or 0.0
        self.window = window
        self.plan = WindowPlan.from_config(window, self.config.samplerate, float(self.model.segment))
        budget_frames = int(math.ceil(budget_s * self.config.samplerate))
        self.latency_samples = (self.plan.latency_frames(block_frames, budget_frames)
                                + self.config.device_latency_frames)
        self.block_frames = block_frames
        return self.plan

    def prepare_plan(self, plan: WindowPlan, block_frames: int = 256, budget_s: float = 0.0) -> None:
        """Use an explicit plan (e.g. ``WindowPlan.offline``), bypassing presets and calibration."""
        self.plan, self.block_frames = plan, block_frames
        self.latency_samples = plan.latency_frames(block_frames, int(math.ceil(budget_s * self.config.samplerate)))

    def _separator_for(self, window: WindowConfig) -> WindowSeparator:
        return self._separator(WindowPlan.from_config(window, self.config.samplerate, float(self.model.segment)))

    def _separator(self, plan: WindowPlan) -> WindowSeparator:
        return WindowSeparator(self.model, plan, self.config.precision, threads=self._threads(),
                               stream_rate=self.config.samplerate)

    def _threads(self) -> int:
        import os
        return self.config.inference_threads or max(1, (os.cpu_count() or 2) - 1)

    def _worker_process(self) -> WorkerProcess:
        with self._process_lock:
            if self._process is not None and not self._process.alive:
                self._process.close()
                self._process = None
            if self._process is None:
                self._process = WorkerProcess(self.model, self._state_block.spec, self.config.precision,
                                              self._threads(), self.config.samplerate)
            return self._process

    def _allocate(self, **arrays: tuple[tuple[int, ...], str]) -> dict[str, np.ndarray]:
        """Session buffers: in shared memory for the worker process, else private."""
        if self.config.worker == "thread":
            return {key: np.zeros(shape, dtype) for key, (shape, dtype) in arrays.items()}
        self._blocks = [SharedBlock({key: spec}) for key, spec in arrays.items()]
        return {key: block.arrays[key] for key, block in zip(arrays, self._blocks)}

    def _start_session(self, kind: str, arrays: dict[str, np.ndarray], cue_frames: int = 0,
                       cache_path=None) -> None:
        self._warm_kernels()
        self._mode = kind
        if self.config.worker == "process":
            specs = {key: block.spec for key, block in zip(arrays, self._blocks)}
            with self._process_lock:
                self._worker_process().start(kind, self.plan, specs, cue_frames, cache_path)
                self._session_args = (kind, specs, cache_path)
                self._worker_fatal = self._worker_notice = None  # a new session starts afresh
            self._supervise()
            return
        separator = self._new_separator()
        warm_up_worker_kernels(len(self.sources), self.config.channels)
        if kind == "live":
            self._worker = LiveWorker(separator, self.plan, self.shared, arrays["stems"], arrays["input"])
        else:
            self._worker = DeckWorker(separator, self.plan, self.shared, arrays["stems"], arrays["track"],
                                      cue_frames, cache_path)
        self._worker.start()

    def _new_separator(self) -> WindowSeparator:
        separator = self._separator(self.plan)
        separator.warm_up(1)
        return separator

    # -- live input ------------------------------------------------------------------------------------

    def start_live(self, input_device=None, output_device=None, stem_outputs: bool = False,
                   input_channels: int = 2) -> None:
        """Separate the sound card's input and play the mix (and each stem) latency-aligned."""
        self._follow_jack_period(input_device, output_device)
        self.start_live_headless()
        try:
            self._open(self._live_callback, input_device, output_device, input_channels, stem_outputs)
        except DeviceError:
            self._stop_worker()
            raise

    def _follow_jack_period(self, input_device, output_device) -> None:
        """The live latency counts one block; on JACK the server's period is the block."""
        jack = jack_serves(input_device, output_device)
        if jack is not None and jack.blocksize != self.block_frames:
            self.latency_samples += jack.blocksize - self.block_frames
            self.block_frames = jack.blocksize

    def start_live_headless(self) -> None:
        """Allocate the rings and start the worker; blocks then go through ``process_live_block``."""
        self._require_plan()
        self._stop_worker()
        channels = self.config.channels
        capacity = self.latency_samples + 2 * self.plan.window_frames + self.config.max_block_frames
        arrays = self._allocate(input=((channels, capacity), "float32"),
                                stems=((len(self.sources), channels, capacity), "float32"))
        self._input_ring, self._stem_ring = arrays["input"], arrays["stems"]
        for slot in (POSITION, INPUT_WRITTEN, FALLBACK):
            self.shared.audio[slot] = 0
        self._start_session("live", arrays)

    def _live_callback(self, indata, outdata, frames, time_info, status) -> None:
        s = self.shared
        live_block(indata, outdata, self._input_ring, self._stem_ring, s.audio, s.worker, s.user_gain,
                   s.mute, s.solo, s.dry_gain, self._gains, s.levels, self.latency_samples,
                   self._ramp_frames, bool(status))

    # -- file deck -------------------------------------------------------------------------------------

    def load(self, path: str | Path, cue_s: float = 0.0) -> None:
        """Load a track; separation starts at once from the cue point, ahead of any play."""
        from models.audio import read_audio

        self._require_plan()
        audio, samplerate = read_audio(path)
        self.load_audio(audio, samplerate, cue_s)

    def load_audio(self, audio: np.ndarray, samplerate: int, cue_s: float = 0.0) -> None:
        """Load ``(channels, frames)`` audio read elsewhere (say, checked before the model loaded)."""
        from models.separate import match_channels, resample

        track = match_channels(resample(audio, samplerate, self.config.samplerate), self.config.channels)
        self.load_array(np.ascontiguousarray(track, dtype=np.float32), cue_s)

    def load_array(self, track: np.ndarray, cue_s: float = 0.0) -> None:
        """Load ``(channels, frames)`` audio at the engine's rate as the deck's track."""
        self._require_plan()
        if not math.isfinite(cue_s):
            raise ValueError(f"cue point {cue_s} s is not a number of seconds")
        self._stop_worker()
        with self._control:
            self.shared.transport[PLAY] = 0
        cue = min(max(0, int(cue_s * self.config.samplerate)), max(0, track.shape[-1] - 1))  # like seek
        arrays = self._allocate(track=(track.shape, "float32"),
                                stems=((len(self.sources), *track.shape), "float32"))
        arrays["track"][:] = track
        self._track, self._deck_stems = arrays["track"], arrays["stems"]
        self._seek_frames(cue)
        self.shared.audio[PLAYHEAD] = cue
        self.cue_s = cue / self.config.samplerate
        self.shared.audio[FALLBACK] = WAITING_FOR_STEMS
        self._first_stems_s = None
        self._start_session("deck", arrays, cue, self._cache_path(track) if self.config.cache_stems else None)

    def _cache_path(self, track: np.ndarray):
        from .cache import CacheEntry, cache_folder, model_fingerprint, stems_key

        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        plan = self.plan
        settings = (self.config.samplerate, self.config.precision, plan.window_frames, plan.hop_frames,
                    plan.lookahead_frames, plan.span_frames, plan.pad_to_segment)
        path = cache_folder() / f"{stems_key(track, self._fingerprint, settings)}.npy"
        return CacheEntry(path, self.config.cache_max_bytes)

    def start_output(self, output_device=None, stem_outputs: bool = False) -> None:
        """Open the output device for the deck."""
        if self._mode != "deck":
            raise RuntimeError("load a track before starting the deck's output")
        self._open(self._deck_callback, None, output_device, 0, stem_outputs)

    def _deck_callback(self, outdata, frames, time_info, status) -> None:
        s = self.shared
        deck_block(outdata, self._track, self._deck_stems, s.audio, s.worker, s.transport, s.user_gain,
                   s.mute, s.solo, s.dry_gain, self._gains, s.levels, self._ramp_frames, bool(status))

    def play(self) -> None:
        with self._control:
            self.shared.transport[PLAY] = 1
        self._play_started = time.perf_counter()
        self._first_stems_s = None

    def pause(self) -> None:
        with self._control:
            self.shared.transport[PLAY] = 0

    def toggle_play(self) -> None:
        if self.shared.transport[PLAY]:
            self.pause()
        else:
            self.play()

    def cue(self) -> None:
        """A CDJ's cue: while playing, back to the cue point and pause; while paused, set it here."""
        if self._mode != "deck":
            return
        if self.shared.transport[PLAY]:
            self.pause()
            self.seek(self.cue_s)
        else:
            self.cue_s = int(self.shared.audio[PLAYHEAD]) / self.config.samplerate

    def seek(self, seconds: float) -> None:
        """Move the playhead; separation restarts there unless it is already separated."""
        length = self._track.shape[-1] if self._mode == "deck" else 0
        self._seek_frames(min(max(0, int(seconds * self.config.samplerate)), max(0, length - 1)))

    def _seek_frames(self, frames: int) -> None:
        with self._control:
            self.shared.transport[SEEK_TARGET] = frames
            self.shared.transport[SEEK_SERIAL] += 1

    # -- mixer controls ----------------------------------------------------------------------------------

    def stem_index(self, stem: str | int) -> int:
        if isinstance(stem, int):
            if 0 <= stem < len(self.sources):
                return stem
        elif stem in self.sources:
            return self.sources.index(stem)
        raise ValueError(f"unknown stem {stem!r}; this model has {', '.join(self.sources)}")

    def set_gain(self, stem: str | int, db: float) -> None:
        """-inf dB is silence and +inf the top of the fader; NaN is refused (the mixer also
        silences any non-finite gain that reaches it another way)."""
        db = float(db)
        if math.isnan(db):
            raise ValueError(f"gain for {stem!r} is not a number (nan dB); give a level in dB")
        with self._control:
            self.shared.user_gain[self.stem_index(stem)] = db_to_gain(db)

    def set_mute(self, stem: str | int, muted: bool = True) -> None:
        with self._control:
            self.shared.mute[self.stem_index(stem)] = int(muted)

    def set_solo(self, stem: str | int, soloed: bool = True) -> None:
        with self._control:
            self.shared.solo[self.stem_index(stem)] = int(soloed)

    def mixer(self) -> MixerState:
        s = self.shared
        return MixerState(gain_db=tuple(gain_to_db(float(g)) for g in s.user_gain),
                          mute=tuple(bool(m) for m in s.mute), solo=tuple(bool(v) for v in s.solo),
                          dry_mix=float(s.dry_gain[0]), playing=bool(s.transport[PLAY]))

    def set_dry_mix(self, amount: float) -> None:
        """0 plays the stems, 1 the latency-aligned dry signal; between, a crossfade."""
        amount = float(amount)
        if math.isnan(amount):
            raise ValueError("dry mix is not a number (nan); give 0 (stems) to 1 (dry)")
        with self._control:
            self.shared.dry_gain[0] = min(1.0, max(0.0, amount))

    # -- status and lifetime -----------------------------------------------------------------------------

    def status(self) -> EngineStatus:
        s, sr = self.shared, self.config.samplerate
        hop_s = self.plan.hop_frames / sr if self.plan else 1.0
        levels = s.levels.copy()
        playhead = int(s.audio[PLAYHEAD]) if self._mode == "deck" else int(s.audio[POSITION])
        ahead = (int(s.worker[STEMS_WRITTEN]) - playhead) / sr if self._mode == "deck" else 0.0
        if (self._first_stems_s is None and self._play_started is not None and self._mode == "deck"
                and s.audio[FALLBACK] == PLAYING_STEMS and s.audio[BLOCKS] > 0 and s.worker[STEMS_WRITTEN] > playhead):
            self._first_stems_s = time.perf_counter() - self._play_started
        worker_error = self._worker_error()
        rtf = float(s.worker_seconds[MEAN_INFERENCE_S]) / hop_s
        # The deck reads ahead of its playhead: only the output adds delay. Live: the plan's latency.
        latency = self._deck_latency_frames() if self._mode == "deck" else self.latency_samples
        return EngineStatus(
            latency_samples=latency, latency_ms=1000.0 * latency / sr,
            samplerate=sr, sources=self.sources,
            peak=tuple(float(v) for v in levels[0]), rms=tuple(float(math.sqrt(v)) for v in levels[1]),
            xruns=int(s.audio[XRUNS]), late_windows=int(s.audio[LATE_WINDOWS]),
            fallback=s.audio[FALLBACK] != PLAYING_STEMS, realtime_factor=rtf,
            max_realtime_factor=float(s.worker_seconds[MAX_INFERENCE_S]) / hop_s, headroom=1.0 - rtf,
            windows_done=int(s.worker[WINDOWS_DONE]), position_s=playhead / sr,
            playing=bool(s.transport[PLAY]) if self._mode == "deck" else self._stream is not None,
            seconds_ahead=max(0.0, ahead), first_stems_s=self._first_stems_s,
            worker_error=worker_error, worker_notice=self._worker_notice,
            stream_error=self._stream_error)

    @property
    def track_seconds(self) -> float:
        return self._track.shape[-1] / self.config.samplerate if self._mode == "deck" else 0.0

    @property
    def stream_active(self) -> bool:
        return self._stream is not None and bool(self._stream.active)

    def stop_output(self) -> None:
        """Stop playing and keep the session (the deck's track, its stems, the worker). sounddevice's
        stream is closed; on JACK the client and its ports stay (silent), with their connections."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception:  # the device may already be gone
                pass

    def stop(self) -> None:
        self._closing.set()
        self.stop_output()
        self._stop_worker()
        with self._process_lock:
            if self._process is not None:
                self._process.close()
                self._process = None
        self._release_shared_memory()

    def _release_shared_memory(self) -> None:
        """Keep the last counters readable (status after stop), then free the segments."""
        for block in self._retired_blocks + self._blocks:
            block.close()
        self._retired_blocks, self._blocks = [], []
        if self.config.worker == "process" and self._state_block.arrays:
            self.shared = SharedState(**{key: array.copy() for key, array in self._state_block.arrays.items()})
            self._state_block.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------------------

    def _require_plan(self) -> None:
        if self.plan is None:
            raise RuntimeError("call prepare() (or prepare_plan()) before starting the engine")

    def _worker_error(self) -> str | None:
        if self.config.worker == "process":  # failures short of the restart limit are notices
            return self._worker_fatal
        if self._worker is not None and self._worker.error is not None:
            return f"{type(self._worker.error).__name__}: {self._worker.error}"
        return None

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        with self._process_lock:
            self._session_args = None  # nothing for the supervisor to restart
            if self._process is not None:
                self._process.stop_session()
        # A running stream may still read the previous session's arrays for one more block:
        # free them one session later.
        for block in self._retired_blocks:
            block.close()
        self._retired_blocks, self._blocks = self._blocks, []

    # -- the separation process's supervisor ---------------------------------------------------------

    def _supervise(self) -> None:
        """Start (once) the thread that restarts a separation process that died mid-session."""
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise_loop, name="stemdeck-supervisor",
                                                daemon=True)
            self._supervisor.start()

    def _supervise_loop(self) -> None:
        while not self._closing.wait(SUPERVISE_POLL_S):
            process = self._process
            failed = process is not None and (not process.alive or process.poll_error() is not None)
            if failed and self._session_args is not None:
                self._restart_worker(process)

    def _restart_worker(self, dead: WorkerProcess) -> None:
        """A new process takes the session over from the playhead; until it delivers, the
        callback plays the latency-aligned dry signal, as for a late window."""
        with self._process_lock:
            if self._process is not dead or self._session_args is None or self._closing.is_set():
                return  # stopped or replaced meanwhile
            dead.close()  # a session that failed leaves its process running: end it
            began = time.monotonic()
            last = dead.poll_error() or f"it exited with code {dead.exitcode}"
            while self._count_restart():
                self._worker_notice = (f"the separation process failed ({last}); playing the dry signal "
                                       f"while it restarts ({len(self._restart_times)} of {MAX_WORKER_RESTARTS})")
                kind, specs, cache_path = self._session_args
                cue = int(self.shared.audio[PLAYHEAD]) if kind == "deck" else 0
                try:
                    self._worker_process().start(kind, self.plan, specs, cue, cache_path, resume=True)
                except WorkerError as exc:
                    last = str(exc)
                    continue
                self.worker_restart_s = time.monotonic() - began
                self._worker_notice = (f"the separation process failed ({last}); restarted it in "
                                       f"{self.worker_restart_s:.1f} s, the dry signal played meanwhile")
                return
            self._session_args = None
            self._worker_fatal = (f"the separation process failed {len(self._restart_times)} times within "
                                  f"{WORKER_RESTART_WINDOW_S:.0f} s (last: {last}); the dry signal plays on; "
                                  "restart stemdeck or try a smaller model (--model tiny)")

    def _count_restart(self) -> bool:
        """Record one more restart; False once the recent ones exceed the limit."""
        now = time.monotonic()
        self._restart_times = [t for t in self._restart_times if now - t < WORKER_RESTART_WINDOW_S] + [now]
        return len(self._restart_times) <= MAX_WORKER_RESTARTS

    def _open(self, callback, input_device, output_device, input_channels: int, stem_outputs: bool) -> None:
        """Play through the session's JACK client when JACK serves these devices, else sounddevice."""
        self._stream_error = None
        # Python hands the GIL over after this long: well inside one audio period, so the
        # callback never waits long on the worker's Python code between torch kernels.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        jack = jack_serves(input_device if input_channels else None, output_device)
        if jack is not None:
            if jack.samplerate != self.config.samplerate:
                raise DeviceError(f"the JACK server runs at {jack.samplerate} Hz and this engine at "
                                  f"{self.config.samplerate} Hz; start stemdeck again (it follows the server's rate)")
            self._stream = jack.attach(callback, sources=self.sources, channels=self.config.channels,
                                       stem_outputs=stem_outputs, live=bool(input_channels),
                                       max_frames=self.config.max_block_frames, on_finished=self._on_finished)
            block_frames = jack.blocksize
        else:
            output_channels = self.config.channels * (1 + len(self.sources)) if stem_outputs else self.config.channels
            self._stream = open_stream(callback=callback, samplerate=self.config.samplerate,
                                       blocksize=self.block_frames, input_device=input_device,
                                       output_device=output_device, input_channels=input_channels,
                                       output_channels=output_channels, on_finished=self._on_finished)
            block_frames = self.block_frames
        self._output_block_frames = block_frames

    def _deck_latency_frames(self) -> int:
        """Play to speaker on the deck: one block, plus what the device (sounddevice's, or JACK's
        playback latency) adds after it; the model adds nothing, it reads ahead of the playhead."""
        stream = self._stream
        if stream is None:
            return self.block_frames
        latency = getattr(stream, "latency", 0.0)
        latency = latency[-1] if isinstance(latency, (tuple, list)) else latency
        return self._output_block_frames + int(round(float(latency or 0.0) * self.config.samplerate))

    def _on_finished(self) -> None:
        if self._stream is not None:  # not stopped by us: the device or server went away
            self._stream_error = STREAM_LOST

    def _warm_kernels(self) -> None:
        """Compile the callback kernels now, not in the first audio block."""
        warm_up_kernels(len(self.sources), self.config.channels)

    # Used by tests and offline drivers: run the callback without a device.
    def process_live_block(self, indata: np.ndarray, outdata: np.ndarray) -> None:
        self._live_callback(indata, outdata, indata.shape[0], None, 0)

    def process_deck_block(self, outdata: np.ndarray) -> None:
        self._deck_callback(outdata, outdata.shape[0], None, 0)

    def wait_separated(self, frames: int, timeout_s: float = 60.0) -> bool:
        """Block (not in a callback!) until the worker has final stems up to ``frames``."""
        deadline = time.perf_counter() + timeout_s
        while int(self.shared.worker[STEMS_WRITTEN]) < frames:
            if time.perf_counter() > deadline or self._worker_error():
                return False
            time.sleep(0.002)
        return True

