"""A MIDI controller driving the engine's controls, with learn, LED feedback and hot-plug.

rtmidi receives on its own thread (JACK's process thread for the JACK API, ALSA's reader) into
its queue, and no Python runs there: a dispatcher thread of ours reads that queue every
``input_poll_s``. An rtmidi callback would be Python on rtmidi's thread, waiting for the
interpreter lock; a port closed meanwhile (quitting while a fader moves) either waits on that
very thread (a hang) or frees the callback under it (a crash). The dispatcher applies the
messages through the engine's control API, whose settings the audio callback picks up at its
next block and ramps like any other gain change, and keeps the controller's LEDs equal to the
engine's state, whoever changed it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from stemdeck.engine import jack_server
from stemdeck.engine.midi.bindings import (
    CONTINUOUS_CONTROLS,
    DECKS_CONTROLS,
    KEY_PRESSES,
    Binding,
    Mapping,
    Scene,
    binding_from_message,
    cc_to_db,
    cc_to_tempo,
    db_to_cc,
    relative_delta,
    tempo_to_cc,
)
from stemdeck.engine.midi.mapping_file import MappingError, save_mapping
from stemdeck.engine.midi.messages import Message, control_change, note_on, parse
from stemdeck.engine.midi.ports import (
    MidiError,
    client_part,
    describe_ports,
    find_port,
    is_jack_client,
    midi_client_name,
    open_client,
    port_names,
    queued_messages,
    quiet_stderr,
)

FEEDBACK_ON, FEEDBACK_OFF = 127, 0
FAILURE_REPEAT_S = 5.0  # a failure that repeats (every fader step while no model is loaded) is said this often
COUNT_IN_BEATS = 4  # the count_in pad's clicks: one bar of 4/4
CC_TOP = 127
# How often the JACK server our ports live on is asked whether it runs: each ask is a connection
# the server accepts and drops, so not at every hot-plug poll.
JACK_CHECK_S = 1.0


class Controls(Protocol):
    """What MIDI drives: the engine's control API (the GUI adds nothing to it)."""

    sources: tuple[str, ...]

    def set_mute(self, stem: int, muted: bool = True) -> None: ...
    def set_solo(self, stem: int, soloed: bool = True) -> None: ...
    def set_gain(self, stem: int, db: float) -> None: ...
    def set_dry_mix(self, amount: float) -> None: ...
    def toggle_play(self) -> None: ...
    def cue(self) -> None: ...
    def mixer(self): ...
    def loop_in(self) -> None: ...
    def loop_out(self) -> None: ...
    def toggle_loop(self) -> None: ...
    def halve_loop(self) -> None: ...
    def double_loop(self) -> None: ...
    def loop_beats(self, beats: float) -> None: ...
    def hot_cue(self, number: int) -> None: ...
    def clear_hot_cue(self, number: int) -> None: ...
    def toggle_recording(self) -> None: ...
    def set_tempo(self, ratio: float) -> None: ...
    def set_key(self, semitones: float) -> None: ...
    def set_count_in(self, beats: int) -> None: ...

    tempo: float
    key: float
    count_in: int


# practice presses: control -> the Controls method it calls (a slot control passes its slot)
PRACTICE_METHODS = {
    "loop_in": "loop_in",
    "loop_out": "loop_out",
    "loop": "toggle_loop",
    "loop_halve": "halve_loop",
    "loop_double": "double_loop",
    "loop_beats": "loop_beats",
    "hotcue": "hot_cue",
    "hotcue_clear": "clear_hot_cue",
    "record": "toggle_recording",
}


@dataclass(frozen=True)
class MidiConfig:
    input: str | None = None  # a port name or part of it
    output: str | None = None  # None: the input controller's own output port, when it has one
    virtual: bool = False  # also open virtual ports another app can connect to
    api: str = "auto"  # "jack", "alsa", or "auto" (JACK when a server runs)
    client_name: str = "stemdeck"
    mapping_path: Path | None = None  # where learned bindings are saved; None: not saved
    hotplug_poll_s: float = 0.25
    idle_poll_s: float = 0.02  # how often LEDs follow changes made elsewhere (GUI, keyboard)
    # How often rtmidi's queue is read: every read wakes Python (on a 2-core VM an idle controller
    # costs 6 % of a core at 1 ms, 4.9 % at 5 ms, 2.9 % with the old rtmidi callback)
    input_poll_s: float = 0.001  # while the controller is in use: a message always makes the next period
    input_idle_poll_s: float = 0.005  # once it rests: the first press may be one period later
    input_idle_after_s: float = 30.0  # how long without a message before the controller rests


@dataclass(frozen=True)
class LearnResult:
    binding: Binding
    replaced: tuple[Binding, ...]


@dataclass
class _Port:
    client: object | None  # None: a JACK port between its stopped server's client and the next
    wanted: str | None  # what the user asked for; None for a virtual port
    name: str = ""
    connected: bool = False
    receives: bool = field(init=False)
    jack: bool = field(init=False)

    def __post_init__(self) -> None:
        self.receives, self.jack = _receives(self.client), is_jack_client(self.client)


@dataclass
class _Learn:
    control: str
    stem: int | None
    mode: str
    slot: int | None = None
    deck: int | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: LearnResult | None = None


class MidiController:
    def __init__(
        self,
        controls: Controls,
        mapping: Mapping,
        config: MidiConfig = MidiConfig(),
        report: Callable[[str], None] | None = None,
    ):
        self.controls, self.mapping, self.config = controls, mapping, config
        self._report = report or (lambda text: None)
        self.events: deque[str] = deque(maxlen=50)  # what happened, newest last (for the GUI)
        self.received = 0  # every message that reached the dispatcher, learned ones too
        self.applied = 0  # messages that drove a control
        self.ignored = 0  # the rest: unbound, unbindable (SysEx, pressure...), a toggle's release
        self._last_failure, self._last_failure_s = "", 0.0  # what _guarded said last, and when
        self._lock = threading.Lock()  # rtmidi objects: dispatcher and watcher (rtmidi's thread runs no Python)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._inputs: list[_Port] = []
        self._output: _Port | None = None
        self._virtual_output: _Port | None = None
        self._jack_server: jack_server.Server | None = None  # the JACK2 server our JACK ports live on, if known
        self._jack_gone = False  # that server stopped: its ports are closed until it is back
        self._jack_checked_s = 0.0  # when the server was last asked
        self._sent: dict[tuple, list[int]] = {}
        self._positions: dict[tuple, float] = {}  # fader positions (0-127) for relative encoders
        self._buttons: dict[Binding, bool] = {}
        self._learn: _Learn | None = None

    # -- lifetime -----------------------------------------------------------------------------------

    def start(self) -> MidiController:
        cfg = self.config
        if cfg.input is None and not cfg.virtual:
            raise MidiError("no MIDI input: name one (--midi-in, see `stemdeck midi list`) or use --midi-virtual")
        try:
            if cfg.input is not None:
                self._inputs.append(self._open_input(cfg.input))
            if cfg.virtual:
                self._inputs.append(self._open_virtual_input())
                self._virtual_output = self._open_virtual_output()
            self._output = self._open_output()
        except Exception:
            self.close()  # no half-open ports left behind
            raise
        if any(port.jack for port in self._ports()):
            self._jack_server = jack_server.running_server()
        for target in (self._dispatch_loop, self._watch_loop):
            thread = threading.Thread(target=target, name=f"midi-{target.__name__}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        with self._lock:
            for port in self._ports():
                if port.client is not None:
                    with quiet_stderr():
                        port.client.close_port()
                        port.client.delete()
            self._inputs, self._output, self._virtual_output = [], None, None

    def _ports(self) -> list[_Port]:
        return [port for port in (*self._inputs, self._output, self._virtual_output) if port is not None]

    def __enter__(self) -> MidiController:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def input_names(self) -> list[str]:
        return [p.name for p in self._inputs if p.connected]

    @property
    def output_name(self) -> str | None:
        return self._output.name if self._output and self._output.connected else None

    # -- ports --------------------------------------------------------------------------------------

    def _open_input(self, wanted: str) -> _Port:
        client = open_client("in", self.config.api, self._client_name("in"))
        port = _Port(client, wanted)
        names = port_names(client)
        index = find_port(names, wanted, self.config.client_name)
        if index is None:
            client.delete()
            raise MidiError(f"no MIDI input matches {wanted!r}; inputs: {describe_ports(names)}")
        self._connect(port, index, names)
        return port

    def _open_virtual_input(self) -> _Port:
        client = open_client("in", self.config.api, self._client_name("in"))
        self._listen(client)
        with quiet_stderr():
            client.open_virtual_port("control in")
        return _Port(client, None, f"{self._client_name('in')}:control in", True)

    def _open_virtual_output(self) -> _Port:
        client = open_client("out", self.config.api, self._client_name("out"))
        with quiet_stderr():
            client.open_virtual_port("feedback out")
        return _Port(client, None, f"{self._client_name('out')}:feedback out", True)

    def _open_output(self) -> _Port | None:
        """The named output, else the output of the controller we listen to (for its LEDs)."""
        wanted = self.config.output
        if wanted is None:
            named = [p for p in self._inputs if p.wanted is not None]
            if not named:
                return None
            wanted = client_part(named[0].name)
        client = open_client("out", self.config.api, self._client_name("out"))
        names = port_names(client)
        index = find_port(names, wanted, self.config.client_name)
        if index is None:
            client.delete()
            if self.config.output is not None:
                raise MidiError(f"no MIDI output matches {wanted!r}; outputs: {describe_ports(names)}")
            return None  # a controller without LEDs
        port = _Port(client, wanted)
        self._connect(port, index, names)
        return port

    def _client_name(self, direction: str) -> str:
        return midi_client_name(self.config.client_name, direction)

    def _listen(self, client) -> None:
        client.ignore_types(sysex=True, timing=True, active_sense=True)

    def _connect(self, port: _Port, index: int, names: list[str]) -> None:
        if port.receives:
            self._listen(port.client)
        with quiet_stderr():
            port.client.open_port(index, "control in" if port.receives else "feedback out")
        port.name, port.connected = names[index], True

    def _watch_loop(self) -> None:
        """Hot-plug: notice a port that went away, reconnect by name when it is back; and the
        JACK server that our JACK ports live on stopping and coming back."""
        while not self._stop.wait(self.config.hotplug_poll_s):
            with self._lock:
                self._watch_jack()
                for port in [*self._inputs, self._output]:
                    if port is not None and port.wanted is not None and not (self._jack_gone and port.jack):
                        self._watch(port)

    def _watch_jack(self) -> None:
        """A JACK server that stops takes our ports on it along (virtual ones included), while
        their clients still list the old ports: the server is asked directly. When it is back,
        each such port gets a new client; virtual ports are opened again, named ones are found
        again by :meth:`_watch` as after an unplug."""
        now_s = time.monotonic()
        if self._jack_server is None or now_s - self._jack_checked_s < JACK_CHECK_S:
            return
        self._jack_checked_s = now_s
        if not self._jack_gone and not self._jack_server.runs():
            self._jack_gone = True
            for port in self._ports():
                port.connected = port.connected and not port.jack
            self._say("the JACK server stopped: its MIDI ports are closed; stemdeck opens them again when it is back")
        if self._jack_gone and (server := jack_server.running_server()) is not None:
            try:
                self._reopen_jack_ports()
            except MidiError as exc:  # the server is still starting: the next poll tries again
                self._say(f"the JACK server is back, but its MIDI ports did not open yet: {exc}")
                return
            self._jack_server, self._jack_gone = server, False
            self._sent.clear()  # the LEDs are sent again, all of them
            self._say("the JACK server is back: MIDI ports open again")

    def _reopen_jack_ports(self) -> None:
        """Each JACK port on a new client of the (new) server. Every old client goes first: a
        client opened while another of the stopped server's is still open here registers its
        ports where no other program sees them."""
        stale = [port for port in self._ports() if port.jack and not port.connected]
        for port in stale:
            if port.client is not None:
                with quiet_stderr():
                    port.client.delete()
                port.client = None
        for port in stale:
            direction = "in" if port.receives else "out"
            port.client = open_client(direction, "jack", self._client_name(direction))
            if port.wanted is None:  # virtual: ours to open
                if port.receives:
                    self._listen(port.client)
                with quiet_stderr():
                    port.client.open_virtual_port("control in" if port.receives else "feedback out")
                port.connected = True

    def _watch(self, port: _Port) -> None:
        names = port_names(port.client)
        if port.connected and port.name not in names:
            with quiet_stderr():
                port.client.close_port()
            port.connected = False
            self._say(f"MIDI port {port.name!r} disconnected; stemdeck keeps running and reconnects when it is back")
        elif not port.connected:
            index = find_port(names, port.wanted, self.config.client_name)  # plug numbers may change
            if index is not None:
                self._connect(port, index, names)
                if port is self._output:
                    self._sent.clear()  # the controller forgot its LEDs: send them all again
                self._say(f"MIDI port {port.name!r} reconnected")

    # -- messages -----------------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        """Apply what arrived, oldest first; then the LEDs, at once after a message and every
        ``idle_poll_s`` for changes made elsewhere. Reads every ``input_poll_s`` while the
        controller is in use, every ``input_idle_poll_s`` once it rests (each read wakes Python)."""
        cfg = self.config
        next_sync_s, last_message_s = 0.0, time.monotonic()  # a controller just opened is about to be used
        while not self._stop.is_set():
            now_s = time.monotonic()
            resting = now_s - last_message_s > cfg.input_idle_after_s
            time.sleep(cfg.input_idle_poll_s if resting else cfg.input_poll_s)
            received = self._read_inputs()
            for data in received:
                self._guarded(self.handle, data)
            if received:
                last_message_s = now_s
            if received or now_s >= next_sync_s:
                self._guarded(self._sync_loaded)
                next_sync_s = now_s + cfg.idle_poll_s

    def _read_inputs(self) -> list[list[int]]:
        """The messages rtmidi queued since the last read, port by port."""
        with self._lock:
            return [data for port in self._inputs if port.client is not None for data in queued_messages(port.client)]

    def _guarded(self, step: Callable, *args) -> None:
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001 - e.g. no engine yet, or one being replaced
            text, now_s = f"MIDI message not applied: {str(exc).splitlines()[0]}", time.monotonic()
            if text != self._last_failure or now_s - self._last_failure_s >= FAILURE_REPEAT_S:
                self._say(text)
                self._last_failure, self._last_failure_s = text, now_s

    def _sync_loaded(self) -> None:
        if not self._stop.is_set() and self.controls.sources:
            self._sync_feedback()

    def handle(self, data) -> None:
        """Apply one raw message (on the dispatcher thread)."""
        self.received += 1
        message = parse(data)
        if message is None:
            self.ignored += 1
            return
        if self._learn is not None:
            self._learn_from(message)
            return
        scene = self.mapping.scene_for(message)
        binding = self.mapping.find(message) if scene is None else None
        if scene is not None:
            self._recall(scene, self._deck_of_channel(message.channel))
        elif binding is None or not self._apply(binding, message):
            self.ignored += 1
            return
        self.applied += 1

    @property
    def two_decks(self) -> bool:
        """Whether the controls are two decks (:class:`engine.decks.Decks`), not one engine."""
        return hasattr(type(self.controls), "deck")  # a class attribute: a proxy must not load a model to say no

    def _target(self, binding: Binding):
        """The engine a binding drives: its deck's in a two-deck session, else the one engine."""
        return self.controls.deck(binding.deck or 0) if self.two_decks else self.controls

    def _deck_of_channel(self, channel: int):
        """Two decks: deck A answers channel 1, deck B channel 2 (a scene's Program Change)."""
        return self.controls.deck(1 if channel == 2 else 0) if self.two_decks else self.controls

    def _apply(self, binding: Binding, message: Message) -> bool:
        if binding.control in DECKS_CONTROLS and not self.two_decks:
            return False  # a two-deck control in a one-deck session
        c = self._target(binding)
        stem = binding.stem
        if stem is not None and stem >= len(c.sources):
            return False  # a 6-stem binding on a 4-stem model
        if binding.message == "note":
            pressed = message.kind == "note_on"
            if binding.mode == "momentary" and binding.control in ("mute", "solo"):
                self._set_switch(c, binding.control, stem, pressed)
                return True
            if pressed:
                self._press(binding, c)
            return pressed  # a toggle's release changes nothing
        value = message.value
        if binding.mode == "button":
            on = value >= 64
            if binding.control in ("mute", "solo"):
                self._set_switch(c, binding.control, stem, on)
            elif on and not self._buttons.get(binding, False):
                self._press(binding, c)
            self._buttons[binding] = on
            return True
        if binding.control not in CONTINUOUS_CONTROLS:
            return False
        position = float(value)
        if binding.mode != "absolute":
            position = min(CC_TOP, max(0.0, self._position(binding) + relative_delta(value, binding.mode)))
        self._positions[_key(binding)] = position
        self._ride(binding, c, position)
        return True

    def _ride(self, binding: Binding, c, position: float) -> None:
        """A continuous control to ``position`` (0-127)."""
        control, decks, deck = binding.control, self.controls, binding.deck or 0
        if control == "gain":
            c.set_gain(binding.stem, cc_to_db(position))
        elif control == "tempo":
            c.set_tempo(cc_to_tempo(position))
        elif control == "dry":
            c.set_dry_mix(position / CC_TOP)
        elif control == "volume":
            decks.set_volume_db(deck, cc_to_db(position))
        elif control == "crossfader":
            decks.set_crossfader(position / CC_TOP)
        else:
            decks.set_cue_mix(position / CC_TOP)

    def _position(self, binding: Binding) -> float:
        key = _key(binding)
        if key not in self._positions:
            self._positions[key] = self._state_position(binding, self._target(binding))
        return self._positions[key]

    def _state_position(self, binding: Binding, c) -> float:
        """Where the control stands now (0-127), whoever moved it last."""
        control, decks = binding.control, self.controls
        if control == "tempo":
            return tempo_to_cc(c.tempo)
        if control == "volume":
            volume = decks.volume_db(binding.deck or 0)
            return db_to_cc(volume) if math.isfinite(volume) else 0.0
        if control in ("crossfader", "cue_mix"):
            return (decks.crossfader if control == "crossfader" else decks.cue_mix) * CC_TOP
        mixer = c.mixer()
        return db_to_cc(mixer.gain_db[binding.stem]) if control == "gain" else mixer.dry_mix * CC_TOP

    def _press(self, binding: Binding, c) -> None:
        control, stem, slot = binding.control, binding.stem, binding.slot
        if control in KEY_PRESSES:
            if control == "tempo_reset":
                c.set_tempo(1.0)
                self._positions.pop((binding.deck, "tempo", None), None)
            else:
                c.set_key(min(12, max(-12, round(c.key) + (1 if control == "key_up" else -1))))
            return
        if control == "count_in":
            c.set_count_in(0 if c.count_in else COUNT_IN_BEATS)
            return
        if control in PRACTICE_METHODS or control == "sync":
            method = getattr(c, PRACTICE_METHODS[control]) if control != "sync" else self.controls.sync
            args = (binding.deck or 0,) if control == "sync" else (() if slot is None else (slot,))
            try:
                method(*args)
            except ValueError as exc:  # e.g. loop out before loop in, beats before the tempo is known
                self._say(str(exc))
            return
        if control == "headphone":
            self.controls.toggle_cue(binding.deck or 0)
            return
        mixer = c.mixer()
        if control == "mute":
            c.set_mute(stem, not mixer.mute[stem])
        elif control == "solo":
            c.set_solo(stem, not mixer.solo[stem])
        elif control == "play":
            c.toggle_play()
        elif control == "cue":
            c.cue()

    @staticmethod
    def _set_switch(c, control: str, stem: int, on: bool) -> None:
        (c.set_mute if control == "mute" else c.set_solo)(stem, on)

    def _recall(self, scene: Scene, c) -> None:
        for stem in range(len(c.sources)):
            c.set_gain(stem, scene.gain_db.get(stem, 0.0))
            c.set_mute(stem, stem in scene.mute)
            c.set_solo(stem, stem in scene.solo)
            for deck in (None, 0, 1):
                self._positions.pop((deck, "gain", stem), None)
        self._say(f"scene {scene.program}{': ' + scene.name if scene.name else ''} recalled")

    # -- MIDI learn ---------------------------------------------------------------------------------

    def learn(
        self, control: str, stem: int | None = None, mode: str = "", slot: int | None = None, deck: int | None = None
    ) -> None:
        """Arm a control (of ``deck`` 0 = A or 1 = B, in a two-deck session): the next note or
        CC that arrives is bound to it."""
        self._learn = _Learn(control, stem, mode, slot, deck)

    def cancel_learn(self) -> None:
        learn, self._learn = self._learn, None
        if learn is not None:
            learn.done.set()

    @property
    def learning(self) -> bool:
        return self._learn is not None

    def wait_learned(self, timeout_s: float | None = None) -> LearnResult | None:
        learn = self._learn
        if learn is None:
            return None
        learn.done.wait(timeout_s)
        return learn.result

    def _learn_from(self, message: Message) -> None:
        learn = self._learn
        if message.kind in ("note_off", "program"):
            return  # the release of the pad pressed to learn, or nothing learnable: keep waiting
        try:
            binding = binding_from_message(message, learn.control, learn.stem, learn.mode, learn.slot, learn.deck)
        except ValueError as exc:
            self._say(str(exc))
            return
        replaced = tuple(self.mapping.learn(binding))
        learn.result = LearnResult(binding, replaced)
        if self.config.mapping_path is not None:
            try:
                save_mapping(self.mapping, self.config.mapping_path)
            except MappingError as exc:  # learned all the same: it drives the control until quit
                self._say(f"{exc}; the binding works until you quit")
        self._learn = None
        for old in replaced:
            self._say(f"{old.describe_message()} no longer drives {old.describe_control(self.controls.sources)}")
        self._say(f"learned: {binding.describe_message()} drives {binding.describe_control(self.controls.sources)}")
        learn.done.set()

    # -- LED feedback -------------------------------------------------------------------------------

    def _sync_feedback(self) -> None:
        outputs = [p for p in (self._output, self._virtual_output) if p is not None and p.connected]
        if not outputs:
            return
        mixers: dict = {}  # one snapshot per deck per pass
        for binding in self.mapping.bindings:
            if binding.control in DECKS_CONTROLS and not self.two_decks:
                continue
            target = self._target(binding)
            if id(target) not in mixers:
                mixers[id(target)] = target.mixer()
            message = self._feedback_message(binding, mixers[id(target)], target)
            key = (binding.message, binding.channel, binding.number)
            if message is None or self._sent.get(key) == message:
                continue
            with self._lock:
                for port in outputs:
                    if port.connected:
                        port.client.send_message(message)
            self._sent[key] = message

    def _feedback_message(self, binding: Binding, mixer, target=None) -> list[int] | None:
        """The message that shows ``binding``'s state (``mixer``: its deck's), or None for none."""
        target = self.controls if target is None else target
        if not binding.feedback or (binding.stem is not None and binding.stem >= len(mixer.mute)):
            return None
        control, stem = binding.control, binding.stem
        if control in ("mute", "solo", "play"):
            on = mixer.mute[stem] if control == "mute" else mixer.solo[stem] if control == "solo" else mixer.playing
            value = FEEDBACK_ON if on else FEEDBACK_OFF
        elif control in ("loop", "record", "hotcue", "count_in"):
            value = FEEDBACK_ON if _practice_lit(control, binding.slot, mixer) else FEEDBACK_OFF
        elif control == "gain" and binding.mode == "absolute":
            value = round(db_to_cc(mixer.gain_db[stem]) if math.isfinite(mixer.gain_db[stem]) else 0)
        elif control == "dry" and binding.mode == "absolute":
            value = round(mixer.dry_mix * CC_TOP)
        elif control == "tempo" and binding.mode == "absolute":
            value = round(tempo_to_cc(getattr(target, "tempo", 1.0)))
        elif control == "headphone":
            value = FEEDBACK_ON if self.controls.cue_on(binding.deck or 0) else FEEDBACK_OFF
        elif control in ("volume", "crossfader", "cue_mix") and binding.mode == "absolute":
            value = round(self._state_position(binding, target))
        else:
            return None
        channel = binding.channel or 1
        value = min(CC_TOP, max(0, value))
        return (
            note_on(channel, binding.number, value)
            if binding.message == "note"
            else control_change(channel, binding.number, value)
        )

    def _say(self, text: str) -> None:
        self.events.append(text)
        self._report(text)


def _practice_lit(control: str, slot: int | None, mixer) -> bool:
    """A practice pad's light: the loop plays, a take is recording, the count-in is on, the hot
    cue is set."""
    if control == "count_in":
        return bool(getattr(mixer, "count_in", 0))
    if control == "loop":
        return bool(getattr(mixer, "looping", False))
    if control == "record":
        return bool(getattr(mixer, "recording", False))
    cues = getattr(mixer, "hot_cues_set", ())
    return slot is not None and slot <= len(cues) and bool(cues[slot - 1])


def _receives(client) -> bool:
    """Whether an rtmidi client is an input (``MidiIn``), whose queue the dispatcher reads."""
    return hasattr(client, "get_message")


def _key(binding: Binding) -> tuple:
    """A fader's place in the remembered positions: its deck, control and stem."""
    return (binding.deck, binding.control, binding.stem)
