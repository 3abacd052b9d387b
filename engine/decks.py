"""Two decks for a DJ: two engines, one output, a crossfader and a headphone cue.

Each deck is an ordinary :class:`~engine.engine.Engine` (its own track, transport, loops, hot
cues, stems, tempo and separation worker) that opens no output itself. :class:`Decks` owns
the one output (stemdeck's JACK client, or a sounddevice stream): its callback runs each
deck's own block function into a preallocated scratch block, then :mod:`engine.audio.decks_mix`
mixes them (channel faders, crossfader, master; the cue bus for the headphones).

The control API, for the CLI, MIDI and the GUI (all thread-safe; the callback never takes the
lock they share):

- ``decks.deck("A")`` / ``decks.deck("B")`` is that deck's :class:`Engine`: stems, transport,
  loops, hot cues and tempo go straight to it (``decks.deck("B").set_mute("vocals")``). Loads
  go through :meth:`Decks.load` (it refuses the playing deck, and lets a paused worker run).
- mixer: :meth:`set_crossfader` (0 = A ... 1 = B), :meth:`set_crossfader_curve`,
  :meth:`set_volume_db` (channel fader), :meth:`set_master_db`, :meth:`set_cue` (the deck in
  the headphones), :meth:`set_cue_mix` (0 = cue only ... 1 = master only).
- :meth:`sync`: a deck's tempo to the other's BPM, its beats onto the other's.
- :meth:`status`: meters and each deck's :class:`EngineStatus`, a snapshot any thread may take.

Priority: separation of the deck on air (playing, and up on the master) wins the CPU. While
it is less than ``DecksConfig.priority_lead_s`` ahead of its playhead, the other deck's
separation process is stopped (SIGSTOP), and continued once the deck on air is that far
ahead (or done, or off air). Both processes already run at SCHED_IDLE against the audio
path; between themselves they would share the CPU evenly (benchmarks/decks.py measures both
ways). A thread worker (``EngineConfig.worker="thread"``) cannot be stopped: it shares. A
stopped worker is continued at :meth:`Decks.stop` and at the program's exit (atexit); a program
killed outright from a terminal leaves an orphaned process group, which the kernel sends SIGHUP
and SIGCONT, ending it.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stemdeck.engine.audio.compile_notice import notice_if_slow
from stemdeck.engine.audio.decks_mix import (
    CROSSFADER,
    CUE_A,
    CUE_B,
    CUE_MIX,
    CURVE,
    CURVES,
    LEVEL_A,
    LEVEL_B,
    LEVEL_CUE,
    LEVEL_MASTER,
    MASTER,
    VOLUME_A,
    VOLUME_B,
    MixBuffers,
    crossfader_gains,
    decks_block,
    idle_deck,
    mix_controls,
    mix_ramps,
    warm_up_decks_mix,
)
from stemdeck.engine.audio.jack_output import MASTER as MASTER_GROUP
from stemdeck.engine.audio.jack_output import JackStream
from stemdeck.engine.audio.jack_output import serves as jack_serves
from stemdeck.engine.audio.native import NativeRender
from stemdeck.engine.audio.record import RecordBuffers
from stemdeck.engine.audio.state import SEPARATED_FROM, STEMS_WRITTEN, playhead_frames
from stemdeck.engine.device import DeviceError, close_stream, open_stream, sounddevice
from stemdeck.engine.engine import (
    STREAM_LOST,
    Engine,
    EngineStatus,
    db_to_gain,
    fresh_recording_path,
    gain_to_db,
    recordings_folder,
)
from stemdeck.engine.recorder import Recorder, Take
from stemdeck.engine.session import DECK

DECK_NAMES = ("A", "B")
CUE_GROUP = "cue"
SYNC_BPM_TOLERANCE = 0.1  # what sync promises: the decks' heard tempos within this
PRIORITY_JOIN_TIMEOUT_S = 10.0  # the loop looks again every priority_poll_s; a load under way ends first


def _unit(value: float, name: str, give: str) -> float:
    """A 0-1 control's position, clamped; a NaN is refused in one line."""
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} is not a number (nan); give {give}")
    return min(1.0, max(0.0, value))


class DeckBusy(ValueError):
    """A load into the deck that is playing: the CLI and MIDI refuse it, the GUI asks first."""


@dataclass(frozen=True)
class DecksConfig:
    """The two-deck session's settings."""

    priority: bool = True  # stop the off-air deck's separation while the deck on air is behind
    priority_lead_s: float = 20.0  # how far ahead the deck on air must be before the other runs
    priority_poll_s: float = 0.1
    ramp_ms: float = 10.0  # fader and crossfader moves ramp over this (as the stem gains do)


@dataclass(frozen=True)
class DecksStatus:
    """A snapshot for displays: the mixer as set, its meters, and each deck's own status."""

    crossfader: float  # 0 = A ... 1 = B
    curve: str
    volume_db: tuple[float, float]
    master_db: float
    cue: tuple[bool, bool]  # which decks are in the headphones
    cue_mix: float  # 0 = cue only ... 1 = master only
    cue_output: bool  # a cue output exists (JACK cue_L/R, or a device with 4 outputs)
    peak: tuple[float, float, float, float]  # deck A and B (after their faders), master, cue
    rms: tuple[float, float, float, float]
    on_air: str | None  # the deck whose separation has priority ("A", "B" or None)
    paused_separation: str | None  # the deck whose separation waits for it, if any
    decks: tuple[EngineStatus, EngineStatus]
    stream_error: str | None = None
    latency_frames: int = 0  # play to speaker: one block and what the output adds after it


def deck_index(which: str | int) -> int:
    """``"A"``/``"B"`` (any case) or 0/1 to 0/1; anything else is one clear ValueError."""
    if isinstance(which, str) and which.upper() in DECK_NAMES:
        return DECK_NAMES.index(which.upper())
    if isinstance(which, int) and not isinstance(which, bool) and 0 <= which < len(DECK_NAMES):
        return which
    raise ValueError(f"unknown deck {which!r}; the decks are A and B")


class Decks:
    """Two engines on one output, with a DJ mixer between them and the speakers/headphones."""

    def __init__(self, deck_a: Engine, deck_b: Engine, config: DecksConfig = DecksConfig()):
        a, b = deck_a.config, deck_b.config
        if (a.samplerate, a.channels, deck_a.sources) != (b.samplerate, b.channels, deck_b.sources):
            raise ValueError("both decks need the same sample rate, channels and stems (one model)")
        self.decks = (deck_a, deck_b)
        self.config = config
        self.sources = deck_a.sources
        self.channels, self.samplerate = a.channels, a.samplerate
        self._max_frames = a.max_block_frames
        self._controls = mix_controls()  # control-written (under _control)
        self._ramps = mix_ramps()  # callback-owned
        self._levels = np.zeros((2, 4), np.float32)  # callback-written
        self._ramp_frames = max(1, int(config.ramp_ms * self.samplerate / 1000))
        self._control = threading.Lock()
        self._loading = threading.Lock()  # a load and the priority thread never act on a deck at once
        self._stream = None
        self._stream_error: str | None = None
        self._layout: _Layout | None = None
        self._loaded = np.zeros(2, np.int64)  # which decks have a track; control-written
        self._idle = idle_deck(len(self.sources), self.channels)  # what a deck without a track hands the kernel
        self._args: tuple | None = None  # decks_block's arguments after outdata, swapped whole
        self.cue_output = False
        self.notices: list[str] = []  # one-line things the user should know (no cue output...)
        self._paused: int | None = None  # the deck whose separation process is stopped
        self._on_air: int | None = None
        self._stop = threading.Event()
        self._priority_thread: threading.Thread | None = None
        self._record = RecordBuffers.allocate(self.channels, max(1, int(a.record_buffer_s * self.samplerate)))
        self.recorder = Recorder(self._record, self.samplerate)  # the master, as the listener hears it

    @classmethod
    def build(
        cls,
        model,
        *,
        samplerate: int,
        block_frames: int,
        precision: str = "auto",
        worker: str = "process",
        config: DecksConfig = DecksConfig(),
        network_backend: str = "torch",
        note: Callable[[str], None] | None = None,
    ) -> Decks:
        """Two decks of one ``model`` (loaded once, shared) for an output at ``samplerate``,
        each with its own separation worker; nothing plays until :meth:`start_output`."""
        from stemdeck.engine.build import build_engine, session_window

        def one() -> Engine:
            return build_engine(
                model,
                session_window("balanced"),
                samplerate=samplerate,
                block_frames=block_frames,
                precision=precision,
                worker=worker,
                calibrate=False,  # decks read ahead of their playheads: no live plan to calibrate
                network_backend=network_backend,
                note=note,
            )

        deck_a = one()
        try:
            return cls(deck_a, one(), config)
        except BaseException:
            deck_a.stop()
            raise

    # -- decks -----------------------------------------------------------------------------------------

    def deck(self, which: str | int) -> Engine:
        """Deck ``"A"`` or ``"B"`` (or 0/1): its engine, for stems, transport, loops, tempo."""
        return self.decks[deck_index(which)]

    def other(self, which: str | int) -> Engine:
        return self.decks[1 - deck_index(which)]

    def playing(self, which: str | int) -> bool:
        return bool(self.deck(which).mixer().playing)

    def load(self, which: str | int, path: str | Path, cue_s: float = 0.0) -> None:
        """Load a file into a deck that is not playing; its separation starts at once. The
        other deck plays on undisturbed. The playing deck refuses (:class:`DeckBusy`)."""
        self._load(which, lambda engine: engine.load(path, cue_s))

    def load_audio(self, which: str | int, audio: np.ndarray, samplerate: int, cue_s: float = 0.0) -> None:
        """:meth:`load` for ``(channels, frames)`` audio read already."""
        self._load(which, lambda engine: engine.load_audio(audio, samplerate, cue_s))

    def load_separated(self, which: str | int, master: np.ndarray, stems: dict, samplerate: int, cue_s=0.0) -> None:
        """:meth:`load` for an NI STEM file's master and stems, read already."""
        self._load(which, lambda engine: engine.load_separated(master, stems, samplerate, cue_s))

    def load_array(self, which: str | int, track: np.ndarray, cue_s: float = 0.0) -> None:
        """:meth:`load` for ``(channels, frames)`` float32 audio at the engine's rate."""
        self._load(which, lambda engine: engine.load_array(track, cue_s))

    def _load(self, which: str | int, load) -> None:
        index = deck_index(which)
        engine = self.decks[index]
        if self.playing(index):
            name, other = DECK_NAMES[index], DECK_NAMES[1 - index]
            raise DeckBusy(f"deck {name} is playing; pause it first, or load into deck {other}")
        with self._loading:
            self._resume_separation()  # its worker must answer the load's stop and start
            load(engine)
            self._refresh_output()  # the callback plays the new track's arrays from now on

    # -- mixer ------------------------------------------------------------------------------------------

    def _write(self, slot: int, value: float) -> None:
        with self._control:
            self._controls[slot] = value

    def set_crossfader(self, position: float) -> None:
        """0 plays deck A alone, 1 deck B alone; between, as the curve says."""
        self._write(CROSSFADER, _unit(position, "crossfader", "0 (deck A) to 1 (deck B)"))

    @property
    def crossfader(self) -> float:
        return float(self._controls[CROSSFADER])

    def set_crossfader_curve(self, curve: str) -> None:
        """``linear``, ``constant-power`` (the default) or ``cut``."""
        if curve not in CURVES:
            raise ValueError(f"unknown crossfader curve {curve!r}; use {', '.join(CURVES)}")
        self._write(CURVE, float(CURVES.index(curve)))

    @property
    def crossfader_curve(self) -> str:
        return CURVES[int(self._controls[CURVE])]

    def set_volume_db(self, which: str | int, db: float) -> None:
        """A deck's channel fader in dB (-inf or -60 and below: silence; at most +12)."""
        db = float(db)
        if math.isnan(db):
            raise ValueError(f"deck {DECK_NAMES[deck_index(which)]} volume is not a number (nan dB)")
        self._write((VOLUME_A, VOLUME_B)[deck_index(which)], db_to_gain(db))

    def volume_db(self, which: str | int) -> float:
        return gain_to_db(float(self._controls[(VOLUME_A, VOLUME_B)[deck_index(which)]]))

    def set_master_db(self, db: float) -> None:
        db = float(db)
        if math.isnan(db):
            raise ValueError("master volume is not a number (nan dB)")
        self._write(MASTER, db_to_gain(db))

    def set_cue(self, which: str | int, on: bool = True) -> None:
        """Put a deck in the headphones (pre-fader listen), or take it out."""
        self._write((CUE_A, CUE_B)[deck_index(which)], 1.0 if on else 0.0)

    def cue_on(self, which: str | int) -> bool:
        return bool(self._controls[(CUE_A, CUE_B)[deck_index(which)]])

    def toggle_cue(self, which: str | int) -> None:
        self.set_cue(which, not self.cue_on(which))

    def set_cue_mix(self, amount: float) -> None:
        """What the headphones hear: 0 the cued decks only, 1 the master only, between a blend."""
        self._write(CUE_MIX, _unit(amount, "cue mix", "0 (cue) to 1 (master)"))

    @property
    def cue_mix(self) -> float:
        return float(self._controls[CUE_MIX])

    # -- tempo and sync ---------------------------------------------------------------------------------

    @staticmethod
    def heard_bpm(engine: Engine) -> float | None:
        """The tempo a deck plays at: its track's BPM times its tempo fader (None: not known)."""
        return None if engine.bpm is None else engine.bpm * engine.tempo

    def sync(self, which: str | int) -> None:
        """Deck ``which`` to the other's tempo (its tempo fader, key lock on: the key stays), and
        its beats onto the other's (a jump of less than half a beat) when both grids are known."""
        index = deck_index(which)
        me, other = self.decks[index], self.decks[1 - index]
        names = DECK_NAMES[index], DECK_NAMES[1 - index]
        target = self.heard_bpm(other)
        if target is None or me.bpm is None:
            unknown = names[1] if target is None else names[0]
            raise ValueError(f"deck {unknown}'s tempo is not known yet; wait for its beat grid, then sync")
        ratio = target / me.bpm
        try:
            me.set_tempo(ratio)
        except ValueError as exc:
            raise ValueError(f"deck {names[0]} cannot reach {target:.1f} BPM: {exc}") from None
        self._align_beats(me, other)

    def _align_beats(self, me: Engine, other: Engine) -> None:
        """Seek ``me`` by under half a beat so its beat phase equals ``other``'s."""
        sr = self.samplerate
        mine = _beat_phase(me, playhead_frames(me.shared) / sr)
        theirs = _beat_phase(other, playhead_frames(other.shared) / sr)
        shift = (theirs - mine + 0.5) % 1.0 - 0.5  # in beats, the shorter way round
        if abs(shift) * me.beat_grid.beat_s * sr >= 1.0 and me.mode == DECK:
            me.seek(playhead_frames(me.shared) / sr + shift * me.beat_grid.beat_s)

    # -- output -----------------------------------------------------------------------------------------

    def start_output(self, output_device=None, stem_outputs: bool = False) -> None:
        """Open the one output: JACK ports ``master_L/R``, ``cue_L/R`` (and with ``stem_outputs``
        ``deckA_<stem>_L/R``, ``deckB_<stem>_L/R``), played by machine code that never takes the
        interpreter lock; or a sounddevice stream with the master on its first pair and the cue
        on its second where the device has one."""
        stem_channels = self.channels * len(self.sources) if stem_outputs else 0
        with notice_if_slow():
            warm_up_decks_mix(len(self.sources), self.channels, stem_channels)
            for engine in self.decks:
                engine._warm_kernels()
        self._stream_error = None
        jack = jack_serves(None, output_device)
        if jack is not None:
            self._open_jack(jack, stem_outputs)
        else:
            self._open_sounddevice(output_device, stem_outputs)
        self._start_priority()

    def _groups(self, cue: bool, stem_outputs: bool) -> tuple[str, ...]:
        stems = [f"deck{d}_{s}" for d in DECK_NAMES for s in self.sources] if stem_outputs else []
        return (MASTER_GROUP, *((CUE_GROUP,) if cue else ()), *stems)

    def _lay_out(self, frames: int, cue: bool, stem_outputs: bool) -> None:
        """The columns, and the mixer's buffers for them (scratch as wide as a deck's block)."""
        layout = _Layout.of(self.channels, len(self.sources), frames, cue, stem_outputs)
        width = self.channels + layout.stem_width
        self._layout = layout
        self._mix = MixBuffers(
            self._controls,
            self._ramps,
            self._levels,
            self._loaded,
            np.zeros((self._max_frames, width), np.float32),
            np.zeros((self._max_frames, width), np.float32),
            self._record,
            self._ramp_frames,
            self.channels,
            layout.cue_column,
            layout.stems_column,
            layout.stem_width,
        )
        self._args = self._kernel_arguments()

    def _kernel_arguments(self) -> tuple:
        """``decks_block``'s arguments after ``outdata``: each deck's buffers (as its own engine
        hands them to its kernel; a deck without a track, placeholders), then the mixer's."""
        decks = []
        for index, engine in enumerate(self.decks):
            loaded = engine.mode == DECK
            decks += engine._deck_native().arguments if loaded else self._idle
            self._loaded[index] = int(loaded)
        return (*decks, self._mix)

    def _refresh_output(self) -> None:
        """After a load: the callback (Python's, or JACK's machine code) takes the new arrays."""
        if self._layout is None:
            return
        self._args = self._kernel_arguments()
        stream = self._stream
        if isinstance(stream, JackStream) and stream.route.native is not None:
            self._stream = stream.output.renew(stream, NativeRender(decks_block, self._args))

    def _open_jack(self, jack, stem_outputs: bool) -> None:
        if jack.samplerate != self.samplerate:
            raise DeviceError(
                f"the JACK server runs at {jack.samplerate} Hz and the decks at "
                f"{self.samplerate} Hz; start stemdeck again (it follows the server's rate)"
            )
        self.cue_output = True
        self._lay_out(jack.blocksize, True, stem_outputs)
        self._stream = jack.attach(
            self._render,
            sources=self.sources,
            channels=self.channels,
            stem_outputs=stem_outputs,
            live=False,
            max_frames=self._max_frames,
            on_finished=self._on_finished,
            groups=self._groups(True, stem_outputs),
            native=NativeRender(decks_block, self._args),
        )

    def _open_sounddevice(self, output_device, stem_outputs: bool) -> None:
        sd = sounddevice()
        try:
            available = int(sd.query_devices(output_device, "output")["max_output_channels"])
        except (ValueError, sd.PortAudioError) as exc:
            raise DeviceError(f"no usable output device ({exc}); run `stemdeck devices`") from None
        stems = self.channels * 2 * len(self.sources) if stem_outputs else 0
        cue = available >= 2 * self.channels + stems
        if stem_outputs and available < self.channels + stems:
            raise DeviceError(
                f"--stem-outputs on two decks needs {self.channels + stems} output channels and this "
                f"device has {available}; use JACK, or leave --stem-outputs out"
            )
        if not cue:
            self.notices.append(
                f"no cue output: the device has {available} output channels, so the headphone cue is "
                "not heard; use JACK (ports cue_L/R) or a device with 4 outputs"
            )
        self.cue_output = cue
        block = self.decks[0].block_frames
        self._lay_out(block, cue, stem_outputs)
        self._stream = open_stream(
            callback=self._render,
            samplerate=self.samplerate,
            blocksize=block,
            input_device=None,
            output_device=output_device,
            input_channels=0,
            output_channels=self._layout.width,
            on_finished=self._on_finished,
        )

    def _render(self, outdata, frames, time_info, status) -> None:
        """The Python callback (sounddevice; JACK where machine code is not used): the same kernel."""
        a = self._args
        decks_block(outdata, a[0], a[1], a[2], a[3], a[4], bool(status))

    def process_block(self, outdata: np.ndarray) -> None:
        """Run the callback once without a device (tests, offline drivers): ``outdata`` is
        ``(frames, width)`` as :meth:`start_output` laid it out (or master + cue by default)."""
        if self._layout is None:
            self._lay_out(outdata.shape[0], True, False)
        self._render(outdata, outdata.shape[0], None, 0)

    def _on_finished(self) -> None:
        if self._stream is not None:
            self._stream_error = STREAM_LOST

    @property
    def output_open(self) -> bool:
        return self._stream is not None

    @property
    def stream_active(self) -> bool:
        return self._stream is not None and bool(self._stream.active)

    def stop_output(self) -> None:
        stream, self._stream = self._stream, None
        close_stream(stream)

    # -- recording --------------------------------------------------------------------------------------

    def start_recording(self, path: str | Path) -> None:
        """Record the master (what the audience hears) to ``path``, WAV or FLAC by its extension,
        from the next block on; an existing file is refused, never overwritten."""
        self.recorder.start(path, callback_running=self.stream_active)

    def stop_recording(self) -> Take | None:
        """Finish the take (None if none was under way)."""
        return self.recorder.stop(callback_running=self.stream_active)

    def toggle_recording(self, folder: str | Path | None = None) -> Take | None:
        """A record button: stop the take, or start one under a fresh time-stamped name."""
        if self.recorder.recording:
            return self.stop_recording()
        self.start_recording(fresh_recording_path(Path(folder) if folder else recordings_folder()))
        return None

    # -- separation priority ------------------------------------------------------------------------

    def on_air(self) -> int | None:
        """The deck heard on the master: playing, its fader and the crossfader up (the louder
        one when both are); None when neither is."""
        gain_a, gain_b = crossfader_gains(float(self._controls[CROSSFADER]), int(self._controls[CURVE]))
        sends = (gain_a * self._controls[VOLUME_A], gain_b * self._controls[VOLUME_B])
        heard = [i for i in (0, 1) if sends[i] > 0 and self.playing(i)]
        if not heard:
            return None
        return max(heard, key=lambda i: sends[i])

    def _start_priority(self) -> None:
        if self.config.priority and self._priority_thread is None:
            atexit.register(self._end_priority)  # never leave a stopped worker behind
            self._priority_thread = threading.Thread(target=self._priority_loop, name="stemdeck-decks", daemon=True)
            self._priority_thread.start()

    def _priority_loop(self) -> None:
        while not self._stop.wait(self.config.priority_poll_s):
            with self._loading:
                if not self._stop.is_set():  # ended meanwhile: it resumed the worker, leave it so
                    self._update_priority()

    def _end_priority(self) -> None:
        """No more stopping; a stopped worker continues. The loop's thread is joined: a daemon
        thread that drops the last reference to the decks (their models) during the interpreter's
        exit aborts it in torch's C++ frames ("terminate called without an active exception")."""
        self._stop.set()
        thread = self._priority_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(PRIORITY_JOIN_TIMEOUT_S)
        with self._loading:
            self._resume_separation()

    def _update_priority(self) -> None:
        on_air = self.on_air()
        self._on_air = on_air
        wanted = None if on_air is None or not self._needs_cpu(self.decks[on_air]) else 1 - on_air
        if wanted != self._paused:
            self._resume_separation()
            if wanted is not None and _signal_worker(self.decks[wanted], signal.SIGSTOP):
                self._paused = wanted

    def _needs_cpu(self, engine: Engine) -> bool:
        """Whether the deck's separation is less than the lead ahead of its playhead (and not done)."""
        if engine.mode != DECK:
            return False
        worker, length = engine.shared.worker, engine.track_seconds * self.samplerate
        written, since = int(worker[STEMS_WRITTEN]), int(worker[SEPARATED_FROM])
        playhead = playhead_frames(engine.shared)
        if since > playhead:
            return True  # the playhead is before what is separated: it plays dry
        if written >= length:
            return False  # separated to the end
        return written - playhead < self.config.priority_lead_s * self.samplerate

    def _resume_separation(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            _signal_worker(self.decks[paused], signal.SIGCONT)

    # -- status and lifetime ----------------------------------------------------------------------------

    def status(self) -> DecksStatus:
        levels, c = self._levels.copy(), self._controls
        return DecksStatus(
            crossfader=float(c[CROSSFADER]),
            curve=self.crossfader_curve,
            volume_db=(self.volume_db(0), self.volume_db(1)),
            master_db=gain_to_db(float(c[MASTER])),
            cue=(bool(c[CUE_A]), bool(c[CUE_B])),
            cue_mix=float(c[CUE_MIX]),
            cue_output=self.cue_output,
            peak=tuple(float(levels[0, k]) for k in (LEVEL_A, LEVEL_B, LEVEL_MASTER, LEVEL_CUE)),
            rms=tuple(math.sqrt(float(levels[1, k])) for k in (LEVEL_A, LEVEL_B, LEVEL_MASTER, LEVEL_CUE)),
            on_air=None if self._on_air is None else DECK_NAMES[self._on_air],
            paused_separation=None if self._paused is None else DECK_NAMES[self._paused],
            decks=(self.decks[0].status(), self.decks[1].status()),
            stream_error=self._stream_error,
            latency_frames=self._latency_frames(),
        )

    def _latency_frames(self) -> int:
        """One block plus the output's own latency (JACK's playback latency, sounddevice's)."""
        stream, layout = self._stream, self._layout
        if stream is None or layout is None:
            return self.decks[0].block_frames
        latency = getattr(stream, "latency", 0.0)
        latency = latency[-1] if isinstance(latency, (tuple, list)) else latency
        return layout.frames + int(round(float(latency or 0.0) * self.samplerate))

    def stop(self) -> None:
        """Stop the output and both decks (their workers continued first, so they can end)."""
        self._end_priority()
        atexit.unregister(self._end_priority)
        if self._priority_thread is not None:
            self._priority_thread.join(5)
        if self.recorder.recording:  # the take's last blocks are in the ring: finish the file first
            self.recorder.stop(callback_running=self.stream_active)
        self.stop_output()
        for engine in self.decks:
            engine.stop()

    def abort(self) -> None:
        for engine in self.decks:
            engine.abort()

    def __enter__(self) -> Decks:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class _Layout:
    """The output's columns: the master, the cue (if any), each deck's stems (if asked)."""

    frames: int  # the block the output asks for
    cue_column: int  # -1: no cue output
    stems_column: int  # -1: no stem outputs
    stem_width: int
    width: int

    @classmethod
    def of(cls, channels: int, num_stems: int, frames: int, cue: bool, stem_outputs: bool) -> _Layout:
        stem_width = channels * num_stems if stem_outputs else 0
        stems_column = (2 * channels if cue else channels) if stem_outputs else -1
        width = channels + (channels if cue else 0) + 2 * stem_width
        return cls(frames, channels if cue else -1, stems_column, stem_width, width)


def _beat_phase(engine: Engine, position_s: float) -> float:
    """Where ``position_s`` falls within its beat, 0 (on the beat) to 1."""
    grid = engine.beat_grid
    return ((position_s - grid.first_beat_s) / grid.beat_s) % 1.0


def _signal_worker(engine: Engine, signum: int) -> bool:
    """Stop or continue a deck's separation process; False where it has none (a thread worker)."""
    process = getattr(engine.backend, "process", None)
    pid = getattr(process, "pid", None)
    if pid is None or not process.alive:
        return False
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True
