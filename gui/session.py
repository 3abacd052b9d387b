"""The app's side of the engine: one engine at a time, changed only on a background thread.

Everything slow (importing torch, loading a model, calibrating, reading and resampling a
file, opening a device) runs on the session's job thread, one job at a time, so the GUI never
waits for it. The GUI thread only uses the engine's control API (cheap, lock-free for the
audio callback) and its status snapshot. Results and errors come back as Qt signals.
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PyQt6.QtCore import QObject, pyqtSignal

from stemdeck.engine.exit_guard import native_section

DEMO_SECONDS = 20.0
WAVEFORM_COLUMNS = 1200
BLOCK_FRAMES = 256  # the engine's block when the GUI sets it (a JACK server's period may differ)


@dataclass
class SessionConfig:
    model: str | None = None  # None: htdemucs when it can be had, else the bundled tiny model
    preset: str = "balanced"
    latency_s: float | None = None  # instead of the preset
    output_device: str | None = None
    input_device: str | None = None
    headless: bool = False  # no sound device: tests and screenshots drive the blocks
    worker: str = "process"
    calibrate: bool = True
    precision: str = "auto"
    network_backend: str = "torch"  # stemdeck gui --backend: what runs the engine's windows


@dataclass(frozen=True)
class Track:
    path: Path | None
    name: str
    seconds: float
    peaks: np.ndarray  # (WAVEFORM_COLUMNS,) peak per column, for the overview


def user_message(exc: BaseException) -> str:
    """One line for the banner: our errors already say what to do."""
    from stemdeck.engine.device import DeviceError
    from stemdeck.engine.midi import MappingError, MidiError
    from stemdeck.models.audio import AudioError
    from stemdeck.models.checkpoint import CheckpointError
    from stemdeck.models.registry import ModelNotAvailableError

    known = (AudioError, CheckpointError, ModelNotAvailableError, DeviceError, MidiError, MappingError, ValueError)
    if isinstance(exc, known):
        return str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def carry_stem_mixer(mixer, sources: tuple[str, ...], new) -> None:
    """Each stem's gain, mute and solo from ``mixer`` (an engine's, its stems ``sources``) onto
    the ``new`` engine, for the stems it has too (a model switch)."""
    for stem, name in enumerate(sources):
        if name in new.sources:
            new.set_gain(name, mixer.gain_db[stem])
            new.set_mute(name, mixer.mute[stem])
            new.set_solo(name, mixer.solo[stem])


def overview_peaks(track: np.ndarray, columns: int = WAVEFORM_COLUMNS) -> np.ndarray:
    mono = np.abs(track).max(axis=0)
    usable = mono[: len(mono) // columns * columns] if len(mono) >= columns else np.pad(mono, (0, columns - len(mono)))
    return usable.reshape(columns, -1).max(axis=1)


class Session(QObject):
    busy = pyqtSignal(str)  # what the job thread is doing ("" when idle)
    model_ready = pyqtSignal(str, tuple)  # model name, sources
    track_ready = pyqtSignal(object)  # Track
    live_ready = pyqtSignal()
    live_stopped = pyqtSignal()
    failed = pyqtSignal(str)  # one line for the user

    def __init__(self, config: SessionConfig | None = None, model_loader: Callable | None = None):
        """``model_loader(name)`` gives a ``models.loading.LoadedModel`` (``name`` None: the default
        model); without one, models load as the command line's do, what happens shown as busy."""
        super().__init__()
        self.config = config or SessionConfig()
        self.engine = None
        self.model_name: str | None = None
        self.network_description: str | None = None  # what runs the windows where not torch
        self.track: Track | None = None
        self._track_audio: np.ndarray | None = None
        self._track_stems: dict[str, np.ndarray] | None = None  # an NI STEM file's, at the engine's rate
        self._load_model = model_loader or self._load_or_fetch
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run_jobs, name="stemdeck-session", daemon=True)
        self._thread.start()
        self.idle = threading.Event()
        self.idle.set()

    # -- jobs ---------------------------------------------------------------------------------------

    def _submit(self, label: str, job: Callable[[], None]) -> None:
        self.idle.clear()
        self._jobs.put((label, job))

    def _run_jobs(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            label, job = item
            self.busy.emit(label)
            try:
                with native_section():  # loading, calibrating: the exit waits for it (engine/exit_guard.py)
                    job()
            except Exception as exc:  # noqa: BLE001 - every failure becomes a message, the app goes on
                self.failed.emit(user_message(exc))
                if not isinstance(exc, (ValueError, OSError)) and "Error" not in type(exc).__name__:
                    traceback.print_exc()
            if self._jobs.empty():
                self.busy.emit("")
                self.idle.set()

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        return self.idle.wait(timeout_s)

    # -- what the GUI asks for ------------------------------------------------------------------------

    def choose_model(self, name: str | None, preset: str | None = None) -> None:
        self._submit(
            f"loading {name or 'the default model'}…",
            lambda: self._switch_or_stand_in(name, preset or self.config.preset),
        )

    def open_file(self, path: str | Path) -> None:
        self._submit(f"opening {Path(path).name}…", lambda: self._open_file(Path(path)))

    def open_array(self, audio: np.ndarray, samplerate: int, name: str) -> None:
        self._submit(f"loading {name}…", lambda: self._open_audio(self._at_engine_rate(audio, samplerate), name, None))

    def start_live(self) -> None:
        self._submit("starting live input…", self._start_live)

    def stop_live(self) -> None:
        self._submit("stopping live input…", self._stop_live)

    def set_output(self, device: str | None) -> None:
        self.config.output_device = device
        if self.engine is not None and self.engine._mode == "deck":
            self._submit("opening the output…", self._restart_output)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(30)
        if self.engine is not None:
            self.engine.stop()
            self.engine = None

    # -- on the job thread ------------------------------------------------------------------------------

    def _load_or_fetch(self, name: str | None):
        import sys

        from stemdeck.models.loading import load_or_fetch

        return load_or_fetch(name, report=self.busy.emit, progress_bar=sys.stderr.isatty())

    def _switch_or_stand_in(self, name: str | None, preset: str) -> None:
        """A model that cannot load leaves the current one; with none yet, the deck still plays."""
        from stemdeck.models.loading import FALLBACK_MODEL
        from stemdeck.models.registry import PASSTHROUGH, bundled_path

        try:
            self._switch_model(name, preset)
        except Exception as exc:
            if self.engine is not None or name == PASSTHROUGH:
                raise
            if bundled_path(FALLBACK_MODEL) is not None and name != FALLBACK_MODEL:
                self.failed.emit(f"{user_message(exc)} — the bundled tiny model separates meanwhile")
                self._switch_model(FALLBACK_MODEL, preset)
                return
            self.failed.emit(
                f"{user_message(exc)} — until then the pass-through stand-in plays the track "
                "(its stems are fixed fractions of the mix, not a separation)"
            )
            self._switch_model(PASSTHROUGH, preset)

    def _switch_model(self, name: str | None, preset: str) -> None:
        from stemdeck.engine.build import build_engine, session_window

        model, name = self._load_model(name)
        self.network_description = None
        engine = self._with_backend(
            lambda backend: build_engine(
                model,
                session_window(preset, self.config.latency_s),
                samplerate=self._device_rate(),
                block_frames=BLOCK_FRAMES,
                precision=self.config.precision,
                worker=self.config.worker,
                calibrate=self.config.calibrate,
                network_backend=backend,
                note=self._hear,
            )
        )
        old, self.engine = self.engine, engine
        playing, position_s = False, 0.0
        if old is not None:
            self._carry_mixer(old, engine)
            playing, position_s = old.mixer().playing, old.status().position_s
            old.stop()
        self.model_name, self.config.preset = name, preset
        self.model_ready.emit(name, tuple(model.sources))
        if self._track_audio is not None and self.track is not None:  # the track goes on where it was
            stems = self._track_stems
            if stems is not None and not set(stems) <= set(model.sources):
                stems = None  # a stem file's stems this model has no place for: it separates the master
            self._open_audio(self._track_audio, self.track.name, self.track.path, position_s, playing, stems)

    def _hear(self, line: str) -> None:
        """A note of the engine's build (an export, what runs the windows), shown as it happens;
        what runs the windows is kept for the status bar (``network_description``)."""
        from stemdeck.engine.build import NETWORK_NOTE

        if line.startswith(NETWORK_NOTE):
            self.network_description = line.removeprefix(NETWORK_NOTE)
        self.busy.emit(line)

    def _with_backend(self, build):
        """``build(backend)`` with ``--backend``'s; where that cannot run this model (not installed,
        a bag, a precision it lacks), the banner says why and torch's is built instead."""
        backend = self.config.network_backend
        try:
            return build(backend)
        except ValueError as exc:
            if backend in ("auto", "torch") or not str(exc).startswith("--backend"):
                raise
            self.failed.emit(f"{user_message(exc)} — torch separates instead")
            return build("torch")

    def _device_rate(self) -> int:
        from stemdeck.engine.config import EngineConfig

        if self.config.headless:  # no device: the engine's usual rate, whatever the model's
            return EngineConfig().samplerate
        from stemdeck.engine.build import device_rate
        from stemdeck.engine.device import DeviceError, resolve_device

        try:
            return device_rate(resolve_device(self.config.output_device, "output"))
        except DeviceError:  # no device yet (no JACK server, no card): the model and the track still
            # load, and opening the output says why nothing plays (it said "no model is loaded yet")
            return EngineConfig().samplerate

    @staticmethod
    def _carry_mixer(old, new) -> None:
        mixer = old.mixer()
        carry_stem_mixer(mixer, old.sources, new)
        new.set_dry_mix(mixer.dry_mix)

    def _open_file(self, path: Path) -> None:
        from stemdeck.engine.memory import audio_key
        from stemdeck.models.audio import read_audio
        from stemdeck.models.stem_file import is_stem_file, read_stem_file

        self._require_engine()
        if is_stem_file(path):  # an NI STEM file: its stems play as they are, nothing to separate
            master, stems, samplerate = read_stem_file(path)  # a broken one stops here, as below
            at_rate = {name: self._at_engine_rate(audio, samplerate) for name, audio in stems.items()}
            key = audio_key(master, samplerate)  # as the command line names it: cues are shared
            self._open_audio(self._at_engine_rate(master, samplerate), path.name, path, stems=at_rate, key=key)
            return
        audio, samplerate = read_audio(path)  # a bad file stops here: the current track plays on
        key = audio_key(audio, samplerate)
        self._open_audio(self._at_engine_rate(audio, samplerate), path.name, path, key=key, resume=True)

    def _at_engine_rate(self, audio: np.ndarray, samplerate: int) -> np.ndarray:
        from stemdeck.models.separate import match_channels, resample

        self._require_engine()
        rate, channels = self.engine.config.samplerate, self.engine.config.channels
        return np.ascontiguousarray(match_channels(resample(audio, samplerate, rate), channels), dtype=np.float32)

    def _open_audio(
        self,
        audio: np.ndarray,
        name: str,
        path: Path | None,
        cue_s: float = 0.0,
        play: bool = False,
        stems: dict[str, np.ndarray] | None = None,
        key: str | None = None,
        resume: bool = False,
    ) -> None:
        """Load ``audio`` on the deck at ``cue_s`` (a new track waits for play, as DJs load);
        with ``stems`` (at the engine's rate), as a track separated already. ``key`` names the
        track in the deck's memory (hot cues, loop); with ``resume``, the deck starts where the
        track was left last time."""
        self._require_engine()
        engine = self.engine
        engine.pause()
        engine.stop_output()
        if stems is None:
            engine.load_array(audio, cue_s, key=key)
        else:
            engine.load_separated(audio, stems, engine.config.samplerate, cue_s, key=key)
        if resume and engine.resume_s is not None:
            engine.seek(engine.resume_s)
        self._track_audio, self._track_stems = audio, stems
        self.track = Track(path, name, audio.shape[-1] / engine.config.samplerate, overview_peaks(audio))
        self.track_ready.emit(self.track)  # shown even where no output opens: its error says why it is silent
        if not self.config.headless:
            from stemdeck.engine.device import resolve_device

            engine.start_output(resolve_device(self.config.output_device, "output"))
            self._prestart_stretch(engine)
        if play:
            engine.play()

    @staticmethod
    def _prestart_stretch(engine) -> None:
        """The deck's stretch process started in the background with the window's first track,
        so that the first tempo or key change is heard at once (starting it then takes seconds)."""
        from stemdeck.engine.stretch.stretcher import stretch_available

        if stretch_available():
            engine.practice.stage.ensure_started(wait=False)

    def _restart_output(self) -> None:
        from stemdeck.engine.device import resolve_device

        self.engine.stop_output()
        self.engine.start_output(resolve_device(self.config.output_device, "output"))

    def _start_live(self) -> None:
        from stemdeck.engine.device import resolve_device

        self._require_engine()
        engine = self.engine
        engine.stop_output()
        if self.config.headless:
            engine.start_live_headless()
        else:
            engine.start_live(
                resolve_device(self.config.input_device, "input"), resolve_device(self.config.output_device, "output")
            )
        self.track, self._track_audio, self._track_stems = None, None, None
        self.live_ready.emit()

    def _stop_live(self) -> None:
        if self.engine is not None:
            self.engine.stop_live()
        self.live_stopped.emit()

    def _require_engine(self) -> None:
        if self.engine is None:
            raise ValueError("no model is loaded yet; pick one in the model menu")
