"""The engine's control side: the thread-safe API the CLI, GUI and MIDI drive.

It sizes the buffers (all at start), has its :class:`~engine.backends.WorkerBackend` run the
separation, opens the audio stream, and reads the lock-free status. It writes only the
controls and the transport: a load, a seek or a new live session is a request the callback
applies (see :mod:`engine.state`). The control lock only orders control writers among
themselves; the audio callback never takes it.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from stemdeck.engine.audio.callbacks import (
    DeckBuffers,
    LiveBuffers,
    MixerBuffers,
    live_block,
    warm_up_kernels,
)
from stemdeck.engine.audio.click import beat_frames, click_buffer
from stemdeck.engine.audio.compile_notice import notice_if_slow
from stemdeck.engine.audio.jack_output import JackStream
from stemdeck.engine.audio.jack_output import serves as jack_serves
from stemdeck.engine.audio.native import NativeRender
from stemdeck.engine.audio.record import RecordBuffers
from stemdeck.engine.audio.state import (
    COUNT_IN_BEAT_FRAMES,
    COUNT_IN_BEATS,
    FALLBACK,
    LATE_WINDOWS,
    LOOP_IN,
    LOOP_OUT,
    LOOP_SERIAL,
    MAX_INFERENCE_S,
    MEAN_INFERENCE_S,
    PLAY,
    PLAY_SERIAL,
    PLAYING_STEMS,
    POSITION,
    SCHEDULING,
    SEEK_SERIAL,
    SEEK_TARGET,
    SEPARATED_FROM,
    STEMS_WRITTEN,
    WINDOWS_DONE,
    XRUNS,
    first_stems_frames,
    gain_state,
    playhead_frames,
    seek_pending,
)
from stemdeck.engine.audio.stretched import stretched_deck_block, warm_up_stretched
from stemdeck.engine.backends import WorkerBackend, make_backend
from stemdeck.engine.config import MAX_COUNT_IN_BEATS, PRESETS, STREAM_LOST, EngineConfig, WindowConfig
from stemdeck.engine.device import DeviceError, close_stream, open_stream, renew_native_stream
from stemdeck.engine.memory import TrackMemory, TrackRecord, audio_key
from stemdeck.engine.practice import NUM_HOT_CUES, BeatGrid, LoopPoints
from stemdeck.engine.recorder import Recorder, Take
from stemdeck.engine.session import DECK, LIVE, SessionSpec, WorkerError
from stemdeck.engine.stretch.control import PracticeControls
from stemdeck.engine.worker.cache import load_whole_track
from stemdeck.engine.worker.calibrate import Calibration
from stemdeck.engine.worker.process import SharedMemoryFull, shared_memory_full_said
from stemdeck.engine.worker.scheduling import POLICY_NAMES
from stemdeck.engine.worker.windows import WindowPlan

MIN_GAIN_DB = -60.0  # at or below: silence
MAX_GAIN_DB = 12.0
MIN_LOOP_S = 0.02  # halving stops here: shorter is a buzz, not a loop
# A track left closer than this to its end (played out) opens at its cue next time, not parked
# where Play has nothing left to play
RESUME_END_MARGIN_S = 0.5


@dataclass(frozen=True)
class EngineStatus:
    """A snapshot for displays and scripts."""

    latency_frames: int  # from the sound going in (live) or play (deck) to the speaker
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
    seconds_ahead: float  # deck: separated audio ahead of the playhead; negative: separation is behind
    first_stems_s: float | None  # deck: play to first separated audio
    worker_error: str | None
    stream_error: str | None
    worker_notice: str | None = None  # e.g. the separation process died and is being restarted
    loop_in_s: float | None = None  # deck: the loop as set (in, out), and whether it plays
    loop_out_s: float | None = None
    looping: bool = False
    recording: str | None = None  # the file being recorded to
    record_dropped_frames: int = 0  # frames the recorder's writer had no room for, this take
    # how the separation yields the CPU: "nice", "idle", "nice (late at idle)", or "in process"
    separation_priority: str = "in process"

    @property
    def latency_samples(self) -> int:
        """The former name of ``latency_frames`` (the GUI reads it; the --stats JSON key keeps it)."""
        return self.latency_frames


def recordings_folder() -> Path:
    """``$STEMDECK_RECORDINGS_DIR``, else a "stemdeck" folder in the user's music folder."""
    import os

    import platformdirs

    return Path(os.environ.get("STEMDECK_RECORDINGS_DIR") or Path(platformdirs.user_music_dir()) / "stemdeck")


def fresh_recording_path(folder: Path) -> Path:
    """``folder/stemdeck-YYYYmmdd-HHMMSS.wav``, numbered if that exists (the folder is created)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, number = folder / f"stemdeck-{stamp}.wav", 1
    while path.exists():
        number += 1
        path = folder / f"stemdeck-{stamp}-{number}.wav"
    return path


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
    looping: bool = False  # practice state, for pads' lights and the GUI's buttons
    recording: bool = False
    hot_cues_set: tuple[bool, ...] = ()
    count_in: int = 0  # beats of click before each restart of the loop (0: off)


class Engine:
    """Live stems from a model: a file deck or live input, mixed with gain, mute and solo."""

    def __init__(self, model: nn.Module, config: EngineConfig = EngineConfig()):
        self.model, self.config = model, config
        self.sources = tuple(model.sources)
        self._fingerprint: str | None = None
        if config.cache_stems:
            from stemdeck.engine.worker.cache import cache_folder, clean_temporaries

            clean_temporaries(cache_folder())
        self.backend: WorkerBackend = make_backend(model, config)
        self.shared = self.backend.shared
        self._gains = gain_state(len(self.sources))
        self._control = threading.Lock()
        self._ramp_frames = max(1, int(config.ramp_ms * config.samplerate / 1000))
        self.calibration: Calibration | None = None
        self.live_refusal: str | None = None  # why live input is not offered on this machine
        self.plan: WindowPlan | None = None
        self.latency_frames = 0
        self.block_frames = 256  # until prepare() says which block the live session plays
        self._live_buffers: LiveBuffers | None = None  # what the callback is handed, built per session
        self._deck_buffers: DeckBuffers | None = None
        self._stream = None
        self._stream_error: str | None = None
        self._output_block_frames = 0  # the block the open output asks for (JACK: the server's period)
        self._mode: str | None = None  # LIVE or DECK once a session started (read it as ``mode``)
        self.cue_s = 0.0
        self._loop = LoopPoints()
        self.beat_grid: BeatGrid | None = None  # the track's tempo, once known (set_beat_grid)
        self.snap_to_beats = False  # loop points land on the nearest beat when a grid is known
        self._crossfade_frames = int(round(config.loop_crossfade_ms * config.samplerate / 1000))
        self._count_in_beats = 0  # clicks before each restart of the loop (set_count_in)
        self._click = click_buffer(config.count_in, config.samplerate)  # made once, copied by the callback
        self._cues: list[int | None] = [None] * NUM_HOT_CUES  # frames
        self.track_key: str | None = None  # the loaded track's name in the memory
        self.resume_s: float | None = None  # where the loaded track was left last time, if known
        self._memory: TrackMemory | None = None
        self._record = RecordBuffers.allocate(config.channels, max(1, int(config.record_buffer_s * config.samplerate)))
        self.recorder = Recorder(self._record, config.samplerate)
        self.practice = PracticeControls(len(self.sources), config.channels, config.samplerate)
        if config.beat_tracking:
            self.practice.warm_beats()  # the tracker's imports (seconds) before the first track

    @property
    def mode(self) -> str | None:
        """``"live"`` or ``"deck"`` once a session started, else None."""
        return self._mode

    @property
    def latency_samples(self) -> int:
        """The former name of ``latency_frames``."""
        return self.latency_frames

    # -- set-up --------------------------------------------------------------------------------------

    def prepare(
        self,
        window: WindowConfig | str | None = None,
        block_frames: int = 256,
        calibrate_plan: bool = True,
        refuse_live: bool = True,
    ) -> WindowPlan:
        """Fix the window plan (calibrated on this machine) and the latency for the session.

        A machine too slow for live input with this model raises, unless ``refuse_live`` is off:
        then the engine stays usable as a deck (which never needs the calibration) and
        ``start_live`` says why live input is not offered (``live_refusal``).
        """
        window = PRESETS[window] if isinstance(window, str) else (window or self.config.window)
        window = window.resolved(float(self.model.segment))
        self.live_refusal = None
        if calibrate_plan and self.config.inference_budget_s is None:
            try:
                self.calibration = self.backend.calibrate(window, self.config.headroom)
            except (ValueError, WorkerError) as exc:
                if refuse_live or getattr(exc, "kind", "ValueError") != "ValueError":
                    raise
                plan = self.prepare(window, block_frames, calibrate_plan=False)
                self.live_refusal = str(exc)
                return plan
            window, budget_s = self.calibration.window, self.calibration.budget_s
        else:
            budget_s = self.config.inference_budget_s or 0.0
        self.window = window
        self.plan = WindowPlan.from_config(window, self.config.samplerate, float(self.model.segment))
        budget_frames = int(math.ceil(budget_s * self.config.samplerate))
        self.latency_frames = self.plan.latency_frames(block_frames, budget_frames) + self.config.device_latency_frames
        self.block_frames = block_frames
        return self.plan

    def prepare_plan(self, plan: WindowPlan, block_frames: int = 256, budget_s: float = 0.0) -> None:
        """Use an explicit plan (e.g. ``WindowPlan.offline``), bypassing presets and calibration."""
        self.plan, self.block_frames = plan, block_frames
        self.latency_frames = plan.latency_frames(block_frames, int(math.ceil(budget_s * self.config.samplerate)))

    def _start_session(self, spec: SessionSpec, arrays: dict[str, np.ndarray]) -> None:
        self._warm_kernels()
        self._mode = spec.kind
        self.backend.start(spec, arrays)

    def _mixer_buffers(self) -> MixerBuffers:
        return MixerBuffers.of(self.shared, self._gains, self._ramp_frames)

    # -- live input ------------------------------------------------------------------------------------

    def start_live(
        self, input_device=None, output_device=None, stem_outputs: bool = False, input_channels: int = 2
    ) -> None:
        """Separate the sound card's input and play the mix (and each stem) latency-aligned."""
        self._follow_jack_period(input_device, output_device)
        self.start_live_headless()
        try:
            native = NativeRender(live_block, (self._live_buffers,), live=True)
            self._open(self._live_callback, input_device, output_device, input_channels, stem_outputs, native)
        except DeviceError:
            self._stop_worker()
            raise

    def _follow_jack_period(self, input_device, output_device) -> None:
        """The live latency counts one block; on JACK the server's period is the block."""
        jack = jack_serves(input_device, output_device)
        if jack is not None and jack.blocksize != self.block_frames:
            self.latency_frames += jack.blocksize - self.block_frames
            self.block_frames = jack.blocksize

    def start_live_headless(self) -> None:
        """Allocate the rings and start the worker; blocks then go through ``process_live_block``."""
        self._require_plan()
        if self.live_refusal is not None:
            raise WorkerError(self.live_refusal, "ValueError")
        self._stop_worker()
        channels = self.config.channels
        capacity = self.latency_frames + 2 * self.plan.window_frames + self.config.max_block_frames
        arrays = self.backend.allocate(
            {"input": ((channels, capacity), "float32"), "stems": ((len(self.sources), channels, capacity), "float32")}
        )
        s = self.shared
        self._live_buffers = LiveBuffers(
            arrays["input"],
            arrays["stems"],
            s.audio,
            s.worker,
            s.transport,
            self._mixer_buffers(),
            int(self.latency_frames),
            self._record,
        )
        self._seek_frames(0)  # the callback starts the new rings at 0
        self._start_session(SessionSpec(LIVE, self.plan), arrays)

    def _live_callback(self, indata, outdata, frames, time_info, status) -> None:
        live_block(indata, outdata, self._live_buffers, bool(status))

    # -- file deck -------------------------------------------------------------------------------------

    def load(self, path: str | Path, cue_s: float = 0.0) -> None:
        """Load a track; separation starts at once from the cue point, ahead of any play. An NI
        STEM file's stems are played as they are."""
        from stemdeck.models.audio import read_audio
        from stemdeck.models.stem_file import is_stem_file, read_stem_file

        if is_stem_file(path):
            master, stems, samplerate = read_stem_file(path)
            self.load_separated(master, stems, samplerate, cue_s)
            return
        audio, samplerate = read_audio(path)
        self.load_audio(audio, samplerate, cue_s)

    def load_audio(self, audio: np.ndarray, samplerate: int, cue_s: float = 0.0) -> None:
        """Load ``(channels, frames)`` audio read elsewhere (say, checked before the model loaded)."""
        from stemdeck.models.separate import match_channels, resample

        key = audio_key(audio, samplerate)  # the decoded samples, whatever rate the engine runs at
        track = match_channels(resample(audio, samplerate, self.config.samplerate), self.config.channels)
        self.load_array(np.ascontiguousarray(track, dtype=np.float32), cue_s, key=key)

    @property
    def deck_plan(self) -> WindowPlan:
        """The deck's chunking: offline separation's (the model's segment, overlap 0.25), which
        costs the least and gives ``models.separate``'s stems; no calibration, since the deck
        reads ahead of its playhead and a slow machine only plays dry longer."""
        segment_s = float(self.model.segment)
        if self.config.deck_window is not None:
            return WindowPlan.from_config(self.config.deck_window, self.config.samplerate, segment_s)
        return WindowPlan.offline(self.config.samplerate, segment_s)

    def load_separated(
        self,
        master: np.ndarray,
        stems: dict[str, np.ndarray],
        samplerate: int,
        cue_s: float = 0.0,
        key: str | None = None,
    ) -> None:
        """Load a track whose stems exist already (an NI STEM file): ``master`` and each stem
        ``(channels, frames)``, stems keyed by this engine's source names (one it lacks is
        silence). The deck plays them as a fully separated track; the model separates nothing."""
        from stemdeck.models.separate import match_channels, resample

        unknown = sorted(set(stems) - set(self.sources))
        if unknown:
            raise ValueError(f"the model's stems ({', '.join(self.sources)}) have no place for {', '.join(unknown)}")

        def at_engine_rate(audio: np.ndarray) -> np.ndarray:
            audio = match_channels(resample(audio, samplerate, self.config.samplerate), self.config.channels)
            return np.ascontiguousarray(audio, dtype=np.float32)

        track = at_engine_rate(master)
        separated = np.zeros((len(self.sources), *track.shape), np.float32)
        for name, audio in stems.items():
            audio = at_engine_rate(audio)[..., : track.shape[-1]]
            separated[self.sources.index(name), :, : audio.shape[-1]] = audio
        self.load_array(track, cue_s, separated, key=key or audio_key(master, samplerate))

    def load_array(
        self, track: np.ndarray, cue_s: float = 0.0, separated: np.ndarray | None = None, key: str | None = None
    ) -> None:
        """Load ``(channels, frames)`` audio at the engine's rate as the deck's track; with
        ``separated`` (its ``(stems, channels, frames)``), as a track separated already. ``key``
        names the track in the deck's memory (hot cues, loop, last position); by default the
        hash of ``track``."""
        if not math.isfinite(cue_s):
            raise ValueError(f"cue point {cue_s} s is not a number of seconds")
        self._remember()  # the track going out: where it was
        self.track_key = None
        self._stop_worker()
        with self._control:
            self.shared.transport[PLAY] = 0
            self.shared.transport[PLAY_SERIAL] += 1  # no first-stems time until the next play
        cue = min(max(0, int(cue_s * self.config.samplerate)), max(0, track.shape[-1] - 1))  # like seek
        specs = {"track": (track.shape, "float32"), "stems": ((len(self.sources), *track.shape), "float32")}
        try:
            arrays = self.backend.allocate(specs)
        except SharedMemoryFull:
            needed_bytes = 4 * track.size * (1 + len(self.sources))
            minutes, seconds = divmod(round(track.shape[-1] / self.config.samplerate), 60)
            what = f"a {minutes}:{seconds:02d} track and its stems"
            raise SharedMemoryFull(shared_memory_full_said(needed_bytes, what)) from None
        arrays["track"][:] = track
        # a damaged sample is silence, as models.separate takes it (and the mixer would play it)
        np.nan_to_num(arrays["track"], copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        if separated is not None:
            arrays["stems"][:] = separated
            np.nan_to_num(arrays["stems"], copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        cache = self._cache_path(track) if self.config.cache_stems and separated is None else None
        if cache is not None and load_whole_track(cache, arrays["stems"]):
            # here, not in the worker: its process takes a second or two to start, and the stems
            # play from the first block (the dry track played until then, mutes unheard)
            separated, cache = arrays["stems"], None
        if separated is not None:  # final from start to end: the worker takes it over as a resumed session
            self.shared.worker[SEPARATED_FROM], self.shared.worker[STEMS_WRITTEN] = 0, track.shape[-1]
        self._deck_buffers = self._deck_buffers_for(arrays["track"], arrays["stems"])
        self._renew_deck_output()
        self._set_loop(LoopPoints())
        self.beat_grid = None
        self._write_count_in()  # its beat: the fixed tempo until the track's is found
        self._recall(key or audio_key(track, self.config.samplerate), track.shape[-1])
        self._seek_frames(cue)  # the callback moves the playhead there, waiting for stems
        beats = self._beats_found if self.config.beat_tracking else None
        self.practice.track_loaded(
            self._deck_buffers,
            self._crossfade_frames,
            beats,
            self.backend.memory.specs(),
            self._ready_for_beats,
            self.config.beats_wait_max_s,
        )
        self.cue_s = cue / self.config.samplerate
        quick = int(self.config.deck_quick_start_s * self.config.samplerate)
        spec = SessionSpec(DECK, self.deck_plan, cue, cache, resume=separated is not None, quick_frames=quick)
        self._start_session(spec, arrays)

    def _deck_buffers_for(self, track: np.ndarray, stems: np.ndarray) -> DeckBuffers:
        s, block = self.shared, self.config.max_block_frames
        return DeckBuffers(
            track,
            stems,
            s.audio,
            s.worker,
            s.transport,
            self._mixer_buffers(),
            self._record,
            np.zeros((track.shape[0], block), np.float32),
            np.zeros((stems.shape[0], track.shape[0], block), np.float32),
            self._crossfade_frames,
            self._click,
        )

    def _cache_path(self, track: np.ndarray):
        from stemdeck.engine.worker.cache import CacheEntry, cache_folder, model_fingerprint, stems_key

        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        plan = self.deck_plan
        settings = (
            self.config.samplerate,
            self.config.precision,
            plan.window_frames,
            plan.hop_frames,
            plan.lookahead_frames,
            plan.span_frames,
            plan.pad_to_segment,
            "track-normalised, mean shared among the stems",  # before: all of it in each
        )
        path = cache_folder() / f"{stems_key(track, self._fingerprint, settings)}.npy"
        return CacheEntry(path, self.config.cache_max_bytes)

    def start_output(self, output_device=None, stem_outputs: bool = False) -> None:
        """Open the output device for the deck."""
        if self._mode != DECK:
            raise RuntimeError("load a track before starting the deck's output")
        self._open(self._deck_callback, None, output_device, 0, stem_outputs, self._deck_native())

    def _deck_native(self) -> NativeRender:
        """The deck's callback as JACK plays it natively (see :mod:`engine.audio.native`)."""
        return NativeRender(stretched_deck_block, (self._deck_buffers, self.practice.buffers))

    def _renew_deck_output(self) -> None:
        """A native callback points at the arrays it was given: a new track's must replace them."""
        if isinstance(self._stream, JackStream) and self._stream.route.native is not None:
            self._stream = self._stream.output.renew(self._stream, self._deck_native())
        elif self._stream is not None:
            renew_native_stream(self._stream, self._deck_native())

    def _deck_callback(self, outdata, frames, time_info, status) -> None:
        stretched_deck_block(outdata, self._deck_buffers, self.practice.buffers, bool(status))

    def play(self) -> None:
        """Play from the playhead; the time to the first separated audio counts from here."""
        with self._control:
            self.shared.transport[PLAY] = 1
            self.shared.transport[PLAY_SERIAL] += 1

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
        if self._mode != DECK:
            return
        if self.shared.transport[PLAY]:
            self.pause()
            self.seek(self.cue_s)
        else:
            self.cue_s = playhead_frames(self.shared) / self.config.samplerate

    def seek(self, seconds: float) -> None:
        """Move the playhead; separation restarts there unless it is already separated. A seek
        out of a playing loop leaves the loop (its points stay, for loop on)."""
        length = self._track_frames("seeking")
        target = min(max(0, int(seconds * self.config.samplerate)), max(0, length - 1))
        loop = self._loop
        if loop.active and loop.complete and not loop.in_frames <= target < loop.out_frames:
            self._set_loop(LoopPoints(loop.in_frames, loop.out_frames, False))
        self._seek_frames(target)

    # -- hot cues and the track's memory ----------------------------------------------------------------

    @property
    def hot_cues(self) -> tuple[float | None, ...]:
        """Hot cues 1-8 in seconds (None where unset); index 0 is cue 1."""
        sr = self.config.samplerate
        return tuple(None if frames is None else frames / sr for frames in self._cues)

    def hot_cue(self, number: int) -> None:
        """A DJ pad: jump to hot cue ``number`` (1-8), or set it at the playhead if it is empty."""
        self._track_frames("hot cues")
        if self._cues[self._cue_index(number)] is None:
            self.set_hot_cue(number)
        else:
            self.recall_hot_cue(number)

    def set_hot_cue(self, number: int) -> None:
        """Hot cue ``number`` at the playhead (on the nearest beat when snapping)."""
        index = self._cue_index(number)
        self._track_frames("hot cues")
        self._cues[index] = self._snapped(playhead_frames(self.shared))
        self._remember()

    def recall_hot_cue(self, number: int) -> None:
        """Jump to hot cue ``number``; an unset one does nothing."""
        self._track_frames("hot cues")
        frames = self._cues[self._cue_index(number)]
        if frames is not None:
            self.seek(frames / self.config.samplerate)

    def clear_hot_cue(self, number: int) -> None:
        self._cues[self._cue_index(number)] = None
        self._remember()

    @property
    def memory(self) -> TrackMemory:
        """The per-track memory (opened on first use; tests may hand in their own)."""
        if self._memory is None:
            self._memory = TrackMemory()
        return self._memory

    @memory.setter
    def memory(self, memory: TrackMemory) -> None:
        self._memory = memory

    def _cue_index(self, number: int) -> int:
        if not (isinstance(number, int) and 1 <= number <= NUM_HOT_CUES):
            raise ValueError(f"hot cue {number!r}: there are hot cues 1 to {NUM_HOT_CUES}")
        return number - 1

    def _remember(self) -> None:
        """Store the loaded track's cues, loop and position (a failure is logged, never raised)."""
        if self.track_key is None or self._mode != DECK:
            return
        sr, loop = self.config.samplerate, self._loop
        record = TrackRecord(
            self.hot_cues,
            None if loop.in_frames is None else loop.in_frames / sr,
            None if loop.out_frames is None else loop.out_frames / sr,
            playhead_frames(self.shared) / sr,
        )
        self.memory.save(self.track_key, record)

    def _recall(self, key: str, length: int) -> None:
        """Take the track's cues, loop (not playing) and last position from the memory."""
        record, sr = self.memory.load(key), self.config.samplerate

        def frames(seconds: float | None, end: int = length - 1) -> int | None:
            return None if seconds is None or round(seconds * sr) > end else int(round(seconds * sr))

        record = record or TrackRecord()
        self._cues = [frames(s) for s in record.cues]
        loop = LoopPoints(frames(record.loop_in_s), frames(record.loop_out_s, end=length))
        if loop.out_frames is not None and not loop.complete:
            loop = LoopPoints(loop.in_frames)
        self._set_loop(loop)
        played_out = length - 1 - int(RESUME_END_MARGIN_S * sr)
        self.resume_s = record.last_position_s if frames(record.last_position_s, played_out) is not None else None
        self.track_key = key

    # -- loops -----------------------------------------------------------------------------------------

    @property
    def loop(self) -> LoopPoints:
        """The loop as set, in frames at the engine's rate."""
        return self._loop

    @property
    def bpm(self) -> float | None:
        """The track's tempo once known (a beat tracker or the user set the grid), else None."""
        return None if self.beat_grid is None else self.beat_grid.bpm

    def set_beat_grid(self, bpm: float | None, first_beat_s: float = 0.0) -> None:
        """The track's tempo and first beat, for loops by beats and snapping (None: unknown)."""
        self.beat_grid = None if bpm is None else BeatGrid(float(bpm), float(first_beat_s))
        self._write_count_in()

    @property
    def count_in(self) -> int:
        """Clicks (one a beat) played before each restart of the loop; 0: off."""
        return self._count_in_beats

    def set_count_in(self, beats: int) -> None:
        """Before the loop restarts from its in point, ``beats`` clicks (1-8, 0 off) at the
        track's tempo (``bpm``; the config's fixed tempo while none is known), the first accented;
        the playhead waits at the in point meanwhile. At another tempo the clicks come one beat
        as heard apart (the track's beat over the tempo), the key shift leaves them as they are."""
        if isinstance(beats, bool) or not isinstance(beats, int) or not 0 <= beats <= MAX_COUNT_IN_BEATS:
            raise ValueError(f"count-in {beats!r} is not a number of beats from 0 (off) to {MAX_COUNT_IN_BEATS}")
        self._count_in_beats = beats
        self._write_count_in()

    def _write_count_in(self) -> None:
        """Hand the callback the count-in: the beat's length first, so it never takes a new
        number of beats with an old tempo's beat for longer than one count-in."""
        frames = beat_frames(self.bpm, self.config.count_in, self.config.samplerate)
        with self._control:
            self.shared.transport[COUNT_IN_BEAT_FRAMES] = frames
            self.shared.transport[COUNT_IN_BEATS] = self._count_in_beats

    def _ready_for_beats(self) -> bool:
        """Whether the beat search may take a core now: the deck's separation is far enough
        ahead of the playhead (``beats_after_ahead_s``), or has the whole track."""
        track_frames = self._deck_buffers.track.shape[-1]
        if int(self.shared.worker[STEMS_WRITTEN]) >= track_frames:
            return True
        ahead_frames = self._frames_ahead(playhead_frames(self.shared))
        return ahead_frames >= self.config.beats_after_ahead_s * self.config.samplerate

    def _beats_found(self, beats) -> None:
        """The beat tracker's grid for the loaded track (its thread calls this)."""
        try:
            self.set_beat_grid(beats.bpm, beats.first_beat_s)
        except ValueError:  # a tempo outside the grid's range: no grid
            pass

    # -- tempo and key -----------------------------------------------------------------------------------

    @property
    def tempo(self) -> float:
        """The deck's tempo: 1 as recorded, 0.5 half speed (the pitch stays)."""
        return self.practice.tempo

    @property
    def key(self) -> float:
        """The deck's key shift in semitones (the tempo stays)."""
        return self.practice.semitones

    def set_tempo(self, ratio: float) -> None:
        """0.5 to 1.5 times the recorded tempo, heard within 100 ms, without a click."""
        self.practice.set_tempo(ratio, self._control)

    def set_key(self, semitones: float) -> None:
        """-12 to +12 semitones, heard within 100 ms, without a click."""
        self.practice.set_semitones(semitones, self._control)

    def loop_in(self) -> None:
        """Set the loop's in point at the playhead (on the nearest beat when snapping)."""
        self._track_frames()
        self._set_loop(self._loop.with_in(self._snapped(playhead_frames(self.shared))))

    def loop_out(self) -> None:
        """Set the loop's out point at the playhead and play the loop from its in point."""
        self._track_frames()
        self._set_loop(self._loop.with_out(self._snapped(playhead_frames(self.shared))))

    def set_loop(self, in_s: float, out_s: float, active: bool = True) -> None:
        """A loop from ``in_s`` to ``out_s`` (seconds, within the track), playing if ``active``."""
        if not (math.isfinite(in_s) and math.isfinite(out_s)):
            raise ValueError(f"loop {in_s}:{out_s} is not a pair of times in seconds")
        length, sr = self._track_frames(), self.config.samplerate
        if in_s < 0 or out_s * sr > length + 1:
            raise ValueError(f"loop {in_s:g}-{out_s:g} s is outside the track (0-{length / sr:.2f} s)")
        points = LoopPoints(self._snapped(int(round(in_s * sr))), None).with_out(
            min(length, self._snapped(int(round(out_s * sr))))
        )
        self._set_loop(LoopPoints(points.in_frames, points.out_frames, bool(active)))

    def loop_beats(self, beats: float) -> None:
        """A loop of ``beats`` beats: from the in point of the loop playing, or of one being set
        with the playhead still inside what it would span; else from the playhead (an in point
        left far behind took the playhead back to it, 18 s in the trial that found it)."""
        if self.beat_grid is None:
            raise ValueError("the tempo is not known yet; set the loop's in and out points by hand")
        length_frames = self.beat_grid.beats_frames(beats, self.config.samplerate)
        playhead, loop = playhead_frames(self.shared), self._loop
        start = loop.in_frames
        if start is None or not (loop.active or start <= playhead < start + length_frames):
            start = self._snapped(playhead)
        track_frames = self._track_frames()
        if start >= track_frames - 1:  # the beat nearest the playhead lies past the end
            sr = self.config.samplerate
            raise ValueError(
                f"no {beats:g}-beat loop at {playhead / sr:.2f} s: the nearest beat is past the track's end "
                f"({track_frames / sr:.2f} s); start it before the last beat"
            )
        out = min(track_frames, start + length_frames)
        self._set_loop(LoopPoints(start, None).with_out(out))

    def toggle_loop(self) -> None:
        """Loop on or off; on again plays the same loop (the playhead jumps in if it is past it)."""
        loop = self._loop
        self._track_frames()
        if not loop.complete:
            raise ValueError("set the loop's in and out points first")
        self._set_loop(LoopPoints(loop.in_frames, loop.out_frames, not loop.active))

    def halve_loop(self) -> None:
        self._resize_loop(0.5)

    def double_loop(self) -> None:
        self._resize_loop(2.0)

    def clear_loop(self) -> None:
        self._set_loop(LoopPoints())

    def _resize_loop(self, factor: float) -> None:
        min_frames = max(int(MIN_LOOP_S * self.config.samplerate), 2 * self._crossfade_frames)
        self._set_loop(self._loop.resized(factor, min_frames, self._track_frames()))

    def _snapped(self, frames: int) -> int:
        if self.snap_to_beats and self.beat_grid is not None:
            return min(self.beat_grid.snap_frames(frames, self.config.samplerate), self._track_frames())
        return frames

    def _track_frames(self, using: str = "loops") -> int:
        """The deck's track length; hot cues, loops and seeking have none to move in otherwise (a
        seek in live mode moved the live input's read point: the output went silent, then
        replayed old input over and over)."""
        if self._mode == LIVE:
            raise ValueError(f"live input has no track for {using}; they are the file deck's")
        if self._mode != DECK:
            raise ValueError(f"no track is loaded for {using}; load one first")
        return int(self._deck_buffers.track.shape[-1])

    def _set_loop(self, loop: LoopPoints) -> None:
        """Hand the callback the loop to play: the pair between two serial increments."""
        loop_in, loop_out = loop.playing()
        with self._control:
            self._loop = loop
            t = self.shared.transport
            t[LOOP_SERIAL] += 1  # odd: a write under way
            t[LOOP_IN], t[LOOP_OUT] = loop_in, loop_out
            t[LOOP_SERIAL] += 1
        self._remember()

    def _seek_frames(self, frames: int) -> None:
        """Ask the callback to move its position (the deck's playhead, a live session's start)."""
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
        return MixerState(
            gain_db=tuple(gain_to_db(float(g)) for g in s.user_gain),
            mute=tuple(bool(m) for m in s.mute),
            solo=tuple(bool(v) for v in s.solo),
            dry_mix=float(s.dry_mix[0]),
            playing=bool(s.transport[PLAY]),
            looping=bool(self._loop.active and self._loop.complete),
            recording=self.recorder.recording,
            hot_cues_set=tuple(frames is not None for frames in self._cues),
            count_in=self._count_in_beats,
        )

    def set_dry_mix(self, amount: float) -> None:
        """0 plays the stems, 1 the latency-aligned dry signal; between, a crossfade."""
        amount = float(amount)
        if math.isnan(amount):
            raise ValueError("dry mix is not a number (nan); give 0 (stems) to 1 (dry)")
        with self._control:
            self.shared.dry_mix[0] = min(1.0, max(0.0, amount))

    # -- recording ---------------------------------------------------------------------------------------

    def start_recording(self, path: str | Path) -> None:
        """Record what the listener hears (the master output) to ``path``, WAV or FLAC by its
        extension, from the next block on; an existing file is refused, never overwritten."""
        self.recorder.start(path, callback_running=self.stream_active)

    def stop_recording(self) -> Take | None:
        """Finish the take (None if none was under way): its file, frames and dropped frames."""
        return self.recorder.stop(callback_running=self.stream_active)

    def toggle_recording(self, folder: str | Path | None = None) -> Take | None:
        """A record button: stop the take, or start one in ``folder`` (default: the recordings
        folder) under a fresh time-stamped name. Returns the finished take when it stops one."""
        if self.recorder.recording:
            return self.stop_recording()
        if self._mode is None:  # it wrote a take of nothing (0.0 s) and said it recorded
            raise ValueError("nothing is playing to record; open a track or start live input first")
        self.start_recording(fresh_recording_path(Path(folder) if folder else recordings_folder()))
        return None

    # -- status and lifetime -----------------------------------------------------------------------------

    def status(self) -> EngineStatus:
        """A snapshot; it only reads, so any thread may take one at any time."""
        s, sr, deck = self.shared, self.config.samplerate, self._mode == DECK
        plan = self.deck_plan if deck else self.plan
        hop_s = plan.hop_frames / sr if plan else 1.0
        levels = s.levels.copy()
        playhead = playhead_frames(s) if deck else int(s.audio[POSITION])
        ahead = self._frames_ahead(playhead) / sr if deck else 0.0
        first_stems = first_stems_frames(s) if deck else None
        rtf = float(s.worker_seconds[MEAN_INFERENCE_S]) / hop_s
        # The deck reads ahead of its playhead: only the output adds delay. Live: the plan's latency.
        latency = self._deck_latency_frames() if deck else self.latency_frames
        return EngineStatus(
            latency_frames=latency,
            latency_ms=1000.0 * latency / sr,
            samplerate=sr,
            sources=self.sources,
            peak=tuple(float(v) for v in levels[0]),
            rms=tuple(float(math.sqrt(v)) for v in levels[1]),
            xruns=int(s.audio[XRUNS]),
            late_windows=int(s.audio[LATE_WINDOWS]),
            fallback=bool(s.audio[FALLBACK] != PLAYING_STEMS or (deck and seek_pending(s))),
            realtime_factor=rtf,
            max_realtime_factor=float(s.worker_seconds[MAX_INFERENCE_S]) / hop_s,
            headroom=1.0 - rtf,
            windows_done=int(s.worker[WINDOWS_DONE]),
            position_s=playhead / sr,
            playing=bool(s.transport[PLAY]) if deck else self._stream is not None,
            seconds_ahead=ahead,
            first_stems_s=None if first_stems is None else first_stems / sr,
            worker_error=self.backend.failure(),
            worker_notice=self.backend.notice() or self.practice.notice,
            stream_error=self._stream_error,
            recording=None if self.recorder.path is None or not self.recorder.recording else str(self.recorder.path),
            record_dropped_frames=self.recorder.dropped_frames,
            separation_priority=POLICY_NAMES.get(int(s.worker[SCHEDULING]), "in process"),
            **self._loop_status(),
        )

    def _loop_status(self) -> dict:
        loop, sr = self._loop, self.config.samplerate
        return {
            "loop_in_s": None if loop.in_frames is None else loop.in_frames / sr,
            "loop_out_s": None if loop.out_frames is None else loop.out_frames / sr,
            "looping": bool(loop.active and loop.complete),
        }

    def _frames_ahead(self, playhead: int) -> int:
        """Deck: separated audio ahead of the playhead (positive), or how far separation is
        behind it (negative): the dry audio before separated audio starts, or by which the
        playhead has passed the last separated frame."""
        written, since = int(self.shared.worker[STEMS_WRITTEN]), int(self.shared.worker[SEPARATED_FROM])
        if playhead < since:
            return playhead - since
        return written - playhead

    @property
    def loaded_track(self) -> np.ndarray | None:
        """The deck's track ``(channels, frames)`` at the engine's rate (shared memory: copy it to
        keep it past a load or stop); None without one."""
        return self._deck_buffers.track if self._mode == DECK and self._deck_buffers is not None else None

    @property
    def track_seconds(self) -> float:
        return self._deck_buffers.track.shape[-1] / self.config.samplerate if self._mode == DECK else 0.0

    @property
    def stream_active(self) -> bool:
        return self._stream is not None and bool(self._stream.active)

    @property
    def output_open(self) -> bool:
        """Whether an output is open (it may have stopped since: see ``stream_active``)."""
        return self._stream is not None

    def stop_live(self) -> None:
        """End live separation: the take being recorded is finished, the stream closed and the
        worker stopped; the model stays, for the next start or a track."""
        if self._mode != LIVE:
            return
        if self.recorder.recording:
            self.recorder.stop(callback_running=self.stream_active)
        self.stop_output()
        self._stop_worker()

    @property
    def live_running(self) -> bool:
        return self._mode == LIVE and self.output_open

    def stop_output(self) -> None:
        """Stop playing and keep the session (the deck's track, its stems, the worker). sounddevice's
        stream is closed; on JACK the client and its ports stay (silent), with their connections."""
        stream, self._stream = self._stream, None
        close_stream(stream)

    def stop(self) -> None:
        self._remember()
        if self._memory is not None:
            self._memory.close()
        if self.recorder.recording:  # the take's last blocks are in the ring: finish the file first
            self.recorder.stop(callback_running=self.stream_active)
        self.stop_output()
        self.practice.stop()
        self.shared = self.backend.close()  # the last counters stay readable (status after stop)

    def abort(self) -> None:
        """End the separation at once, without cleaning up: the program is about to exit."""
        self.backend.abort()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------------------

    def _require_plan(self) -> None:
        if self.plan is None:
            raise RuntimeError("call prepare() (or prepare_plan()) before starting the engine")

    def _stop_worker(self) -> None:
        self.backend.stop_session()

    def _open(
        self, callback, input_device, output_device, input_channels: int, stem_outputs: bool, native=None
    ) -> None:
        """Play through the session's JACK client when JACK serves these devices, else sounddevice."""
        self._stream_error = None
        jack = jack_serves(input_device if input_channels else None, output_device)
        if jack is not None:
            if jack.samplerate != self.config.samplerate:
                raise DeviceError(
                    f"the JACK server runs at {jack.samplerate} Hz and this engine at "
                    f"{self.config.samplerate} Hz; start stemdeck again (it follows the server's rate)"
                )
            self._stream = jack.attach(
                callback,
                sources=self.sources,
                channels=self.config.channels,
                stem_outputs=stem_outputs,
                live=bool(input_channels),
                max_frames=self.config.max_block_frames,
                on_finished=self._on_finished,
                native=native,
            )
            block_frames = jack.blocksize
        else:
            output_channels = self.config.channels * (1 + len(self.sources)) if stem_outputs else self.config.channels
            self._stream = open_stream(
                callback=callback,
                samplerate=self.config.samplerate,
                blocksize=self.block_frames,
                input_device=input_device,
                output_device=output_device,
                input_channels=input_channels,
                output_channels=output_channels,
                on_finished=self._on_finished,
                native=native,
                max_frames=self.config.max_block_frames,
            )
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
        with notice_if_slow():
            warm_up_kernels(len(self.sources), self.config.channels)
            warm_up_stretched(len(self.sources), self.config.channels)

    # Used by tests and offline drivers: run the callback without a device.
    def process_live_block(self, indata: np.ndarray, outdata: np.ndarray) -> None:
        self._live_callback(indata, outdata, indata.shape[0], None, 0)

    def process_deck_block(self, outdata: np.ndarray) -> None:
        self._deck_callback(outdata, outdata.shape[0], None, 0)

    def wait_separated(self, frames: int, timeout_s: float = 60.0) -> bool:
        """Block (not in a callback!) until the worker has final stems up to ``frames``."""
        deadline = time.perf_counter() + timeout_s
        while int(self.shared.worker[STEMS_WRITTEN]) < frames:
            if time.perf_counter() > deadline or self.backend.failure():
                return False
            time.sleep(0.002)
        return True
