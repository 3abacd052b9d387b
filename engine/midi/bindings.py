"""Which MIDI message drives which control, and how a value becomes a setting.

A binding's key is (message family, channel, number); "any channel" overlaps every channel,
so two bindings conflict when their families and numbers match and their channels overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from stemdeck.engine.midi.messages import Message

# The stem order of every official model; 4-stem models use the first four.
STEM_NAMES = ("drums", "bass", "other", "vocals", "guitar", "piano")
STEM_CONTROLS = ("mute", "solo", "gain")
# practice: loop points and length, hot cue pads (and their shift layer, which clears), record
LOOP_CONTROLS = ("loop_in", "loop_out", "loop", "loop_halve", "loop_double")
SLOT_CONTROLS = ("hotcue", "hotcue_clear", "loop_beats")  # each needs its slot: a cue 1-8, or a beat count
KEY_PRESSES = ("tempo_reset", "key_down", "key_up")  # tempo back to 1; the key a semitone down / up
PRACTICE_CONTROLS = (*LOOP_CONTROLS, *SLOT_CONTROLS, *KEY_PRESSES, "count_in", "record")
# two decks (engine.decks): the A/B crossfader and the headphones' cue/master knob (the mixer's,
# no deck); a deck's channel fader, sync and headphone cue button (PFL). One deck: ignored.
MIXER_CONTROLS = ("crossfader", "cue_mix")
DECK_MIXER_CONTROLS = ("volume", "sync", "headphone")
DECKS_CONTROLS = (*MIXER_CONTROLS, *DECK_MIXER_CONTROLS)
CONTROLS = (*STEM_CONTROLS, "dry", "play", "cue", "tempo", *DECKS_CONTROLS, *PRACTICE_CONTROLS)
CONTINUOUS_CONTROLS = ("gain", "dry", "tempo", "volume", "crossfader", "cue_mix")  # a CC's position, not a press
DECK_NAMES = ("A", "B")
NOTE_MODES = ("toggle", "momentary")
CC_MODES = ("absolute", "relative-twos", "relative-offset", "relative-signbit", "button")
MESSAGE_FAMILIES = ("note", "cc")
# on/off things and presses; gain and dry are continuous
SWITCH_CONTROLS = ("mute", "solo", "play", "cue", *PRACTICE_CONTROLS, "sync", "headphone")
NUM_HOT_CUES = 8
LOOP_BEATS = (1, 2, 4, 8, 16)

UNITY_CC = 100  # a fader at 100 of 127 is 0 dB
TOP_DB = 6.0  # at 127
FLOOR_DB = -54.0  # at 1; 0 is silence
TAPER_POWER = 1.5  # more travel near unity, where ears need it
BUTTON_THRESHOLD = 64


def cc_to_tempo(value: float) -> float:
    """Tempo fader: 0 → 0.5, 64 → 1 (as recorded), 127 → 1.5; straight on each side of the middle."""
    value = min(max(value, 0.0), 127.0)
    return 0.5 + 0.5 * value / 64 if value <= 64 else 1.0 + 0.5 * (value - 64) / 63


def tempo_to_cc(tempo: float) -> float:
    """The tempo fader's inverse."""
    tempo = min(max(tempo, 0.5), 1.5)
    return (tempo - 0.5) * 128 if tempo <= 1.0 else 64 + (tempo - 1.0) * 126


def cc_to_db(value: float) -> float:
    """Fader taper: 0 → −∞ (silence), 1 → −54 dB, 100 → 0 dB, 127 → +6 dB."""
    if value <= 0:
        return -math.inf
    if value >= UNITY_CC:
        return TOP_DB * (min(value, 127) - UNITY_CC) / (127 - UNITY_CC)
    return FLOOR_DB * ((UNITY_CC - value) / (UNITY_CC - 1)) ** TAPER_POWER


def db_to_cc(db: float) -> float:
    """The taper's inverse (a float position, so relative encoders keep their fine steps)."""
    if db == -math.inf or db < FLOOR_DB:
        return 0.0
    if db >= 0:
        return UNITY_CC + min(db, TOP_DB) / TOP_DB * (127 - UNITY_CC)
    return UNITY_CC - (UNITY_CC - 1) * (db / FLOOR_DB) ** (1 / TAPER_POWER)


def relative_delta(value: int, encoding: str) -> int:
    """Steps an endless encoder turned: the three encodings controllers use."""
    if encoding == "relative-twos":  # 1..63 up, 127..65 down (two's complement of 7 bits)
        return value - 128 if value >= 64 else value
    if encoding == "relative-offset":  # 64 is rest: 65 is +1, 63 is −1
        return value - 64
    if encoding == "relative-signbit":  # bit 6 is the sign, the rest the size
        return -(value & 0x3F) if value & 0x40 else value & 0x3F
    raise ValueError(f"not a relative encoding: {encoding}")


@dataclass(frozen=True)
class Binding:
    message: str  # "note" or "cc"
    number: int  # 0-127
    control: str  # one of CONTROLS
    channel: int | None = None  # 1-16; None listens on every channel
    stem: int | None = None  # 0-based, for the stem controls
    mode: str = ""  # NOTE_MODES or CC_MODES; "" picks the usual one
    feedback: bool = True  # light the pad / ring with the control's state
    slot: int | None = None  # hotcue / hotcue_clear: the cue 1-8; loop_beats: the beats (1, 2, 4, 8, 16)
    line: int | None = field(default=None, compare=False)  # where a mapping file defined it
    deck: int | None = None  # two decks: 0 = A, 1 = B; None: the only deck (deck A), or the mixer's control

    def __post_init__(self):
        if not self.mode:
            usual = (
                "toggle" if self.message == "note" else ("button" if self.control in SWITCH_CONTROLS else "absolute")
            )
            object.__setattr__(self, "mode", usual)

    def matches(self, message: Message) -> bool:
        return (
            message.family == self.message and message.number == self.number and self.channel in (None, message.channel)
        )

    def overlaps(self, other: Binding) -> bool:
        return (
            self.message == other.message
            and self.number == other.number
            and (self.channel is None or other.channel is None or self.channel == other.channel)
        )

    def describe_message(self) -> str:
        channel = "any channel" if self.channel is None else f"channel {self.channel}"
        return f"{'note' if self.message == 'note' else 'CC'} {self.number} on {channel}"

    def describe_control(self, sources: tuple[str, ...] = STEM_NAMES) -> str:
        deck = "" if self.deck is None else f"deck {DECK_NAMES[self.deck]} "
        if self.slot is not None:
            return f"{deck}{self.control} {self.slot}"
        if self.stem is None:
            return f"{deck}{self.control}"
        name = sources[self.stem] if self.stem < len(sources) else f"stem {self.stem + 1}"
        return f"{deck}{self.control} {name}"


@dataclass(frozen=True)
class Scene:
    """A mixer snapshot that Program Change ``program`` recalls."""

    program: int
    name: str = ""
    gain_db: dict[int, float] = field(default_factory=dict)  # stem → dB; stems not named: 0 dB
    mute: frozenset[int] = frozenset()
    solo: frozenset[int] = frozenset()
    line: int | None = field(default=None, compare=False)


class ConflictError(ValueError):
    pass


@dataclass
class Mapping:
    bindings: list[Binding] = field(default_factory=list)
    scenes: list[Scene] = field(default_factory=list)
    scene_channel: int | None = None  # Program Changes on other channels are ignored

    def find(self, message: Message) -> Binding | None:
        for binding in self.bindings:
            if binding.matches(message):
                return binding
        return None

    def scene_for(self, message: Message) -> Scene | None:
        if message.kind != "program" or self.scene_channel not in (None, message.channel):
            return None
        return next((scene for scene in self.scenes if scene.program == message.number), None)

    def conflicts(self) -> list[tuple[Binding, Binding]]:
        """Each binding that overlaps an earlier one, paired with the first such earlier binding.

        Linear in time and memory: bindings are grouped by (family, number), and within a group
        an "any channel" binding overlaps all the others.
        """
        found = []
        groups: dict[tuple[str, int], tuple[Binding | None, dict[int, Binding]]] = {}
        for binding in self.bindings:
            any_channel, by_channel = groups.get((binding.message, binding.number), (None, {}))
            earlier = any_channel or (
                next(iter(by_channel.values()), None) if binding.channel is None else by_channel.get(binding.channel)
            )
            if earlier is not None:
                found.append((earlier, binding))
            if binding.channel is None:
                any_channel = any_channel or binding
            else:
                by_channel.setdefault(binding.channel, binding)
            groups[(binding.message, binding.number)] = (any_channel, by_channel)
        return found

    def check(self) -> None:
        """One message may drive one control: refuse a mapping where two bindings share one."""
        for first, second in self.conflicts()[:1]:
            where = f" (lines {first.line} and {second.line})" if first.line and second.line else ""
            raise ConflictError(
                f"{second.describe_message()} drives both {first.describe_control()} "
                f"and {second.describe_control()}{where}; keep one"
            )

    def learn(self, binding: Binding) -> list[Binding]:
        """Add a learned binding; the bindings it replaces (same message, or same control) are returned."""
        replaced = [b for b in self.bindings if b.overlaps(binding) or _same_control(b, binding)]
        self.bindings = [b for b in self.bindings if b not in replaced] + [replace(binding, line=None)]
        return replaced


def _same_control(a: Binding, b: Binding) -> bool:
    return (
        a.control == b.control and a.stem == b.stem and a.slot == b.slot and a.message == b.message and a.deck == b.deck
    )


def binding_from_message(
    message: Message,
    control: str,
    stem: int | None = None,
    mode: str = "",
    slot: int | None = None,
    deck: int | None = None,
) -> Binding:
    """The binding MIDI learn makes: this message's number, on this message's channel (for
    ``deck`` 0 = A or 1 = B in a two-deck session)."""
    if message.family not in MESSAGE_FAMILIES:
        raise ValueError(f"{message.describe()} cannot drive a control; send a note or a CC")
    if message.family == "note" and control not in SWITCH_CONTROLS:
        raise ValueError(f"a note cannot ride {control}; move a fader or knob (a CC) instead")
    if control in MIXER_CONTROLS:
        deck = None  # the crossfader belongs to no deck
    return Binding(message.family, message.number, control, message.channel, stem, mode, slot=slot, deck=deck)


def check_slot(control: str, slot) -> int | None:
    """The slot a control takes (a hot cue 1-8, a loop of 1-16 beats), or a ValueError in one line."""
    if control not in SLOT_CONTROLS:
        if slot is not None:
            raise ValueError(f"{control} takes no cue or beat count")
        return None
    valid = LOOP_BEATS if control == "loop_beats" else tuple(range(1, NUM_HOT_CUES + 1))
    if isinstance(slot, bool) or slot not in valid:
        what = "beats" if control == "loop_beats" else "cue"
        raise ValueError(f"{control} needs {what} {', '.join(map(str, valid))}, not {slot!r}")
    return int(slot)


def default_mapping(num_stems: int = 6) -> Mapping:
    """Notes 36-41 toggle mutes and 42-47 solos of stems 1-6 on any channel; CC 1-6 on channel 1
    ride the faders, CC 7 the dry/stems crossfader; notes 48 and 49 are play/pause and cue;
    programs 0-3 recall full mix, instrumental, a cappella and no drums. Practice: notes 50-57 are
    hot cue pads 1-8 (set when empty, else jump) and 58-65 the same pads with shift (clear);
    66-70 loop in, loop out, loop on/off, halve, double; 71 record; 72-76 loops of 1, 2, 4, 8
    and 16 beats; CC 8 on channel 1 the tempo (64: as recorded), notes 77-79 tempo reset, key
    down and key up a semitone; note 80 on channel 1 the count-in on (a bar of 4 beats) / off."""
    bindings = [Binding("note", 36 + s, "mute", None, s) for s in range(num_stems)]
    bindings += [Binding("note", 42 + s, "solo", None, s) for s in range(num_stems)]
    bindings += [Binding("cc", 1 + s, "gain", 1, s) for s in range(num_stems)]
    bindings += [Binding("cc", 7, "dry", 1), Binding("note", 48, "play"), Binding("note", 49, "cue")]
    bindings += [Binding("note", 50 + c, "hotcue", slot=c + 1) for c in range(NUM_HOT_CUES)]
    bindings += [Binding("note", 58 + c, "hotcue_clear", slot=c + 1) for c in range(NUM_HOT_CUES)]
    bindings += [Binding("note", 66 + i, control) for i, control in enumerate(LOOP_CONTROLS)]
    bindings += [Binding("note", 71, "record")]
    bindings += [Binding("note", 72 + i, "loop_beats", slot=beats) for i, beats in enumerate(LOOP_BEATS)]
    bindings += [Binding("cc", 8, "tempo", 1)] + [Binding("note", 77 + i, c) for i, c in enumerate(KEY_PRESSES)]
    bindings += [Binding("note", 80, "count_in", 1)]
    vocals, drums = STEM_NAMES.index("vocals"), STEM_NAMES.index("drums")
    scenes = [
        Scene(0, "full mix"),
        Scene(1, "instrumental", mute=frozenset({vocals})),
        Scene(2, "a cappella", solo=frozenset({vocals})),
        Scene(3, "no drums", mute=frozenset({drums})),
    ]
    return Mapping(bindings, scenes)


# Two decks: each deck's layout on its own channel, the tempo moved off CC 8 for the crossfader.
DECK_CHANNELS = (1, 2)
DECKS_TEMPO_CC = 9
DECKS_VOLUME_CC = 10
CROSSFADER_CC = 8
CUE_MIX_CC = 11
SYNC_NOTE, HEADPHONE_NOTE = 81, 82


def two_deck_mapping(num_stems: int = 6) -> Mapping:
    """Two decks (``stemdeck play A B``): deck A answers on MIDI channel 1 and deck B on channel 2,
    each with the one-deck layout of :func:`default_mapping` (notes 36-47 mutes and solos, 48/49
    play and cue, 50-80 practice; CC 1-6 stem faders, CC 7 dry), except the tempo fader, which is
    CC 9 on the deck's channel (CC 8 on channel 1 is the crossfader). Added per deck: CC 10 the
    channel fader, note 81 sync, note 82 the headphone cue (PFL). The mixer's, on channel 1:
    CC 8 the A/B crossfader (0 = A, 127 = B), CC 11 the headphones' cue/master mix. Programs
    0-3 recall a scene on the deck whose channel sends them."""
    one = default_mapping(num_stems)
    bindings = []
    for deck, channel in enumerate(DECK_CHANNELS):
        for binding in one.bindings:
            number = DECKS_TEMPO_CC if (binding.message, binding.control) == ("cc", "tempo") else binding.number
            bindings.append(replace(binding, channel=channel, number=number, deck=deck))
        bindings += [
            Binding("cc", DECKS_VOLUME_CC, "volume", channel, deck=deck),
            Binding("note", SYNC_NOTE, "sync", channel, deck=deck),
            Binding("note", HEADPHONE_NOTE, "headphone", channel, deck=deck),
        ]
    bindings += [Binding("cc", CROSSFADER_CC, "crossfader", 1), Binding("cc", CUE_MIX_CC, "cue_mix", 1)]
    return Mapping(bindings, one.scenes)
