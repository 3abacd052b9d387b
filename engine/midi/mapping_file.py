"""Mappings as TOML under the user's config dir: readable, editable, checked line by line."""

from __future__ import annotations

import contextlib
import math
import re
import tomllib
from pathlib import Path

from stemdeck.engine.midi.bindings import (
    CC_MODES,
    CONTINUOUS_CONTROLS,
    CONTROLS,
    DECK_NAMES,
    MESSAGE_FAMILIES,
    MIXER_CONTROLS,
    NOTE_MODES,
    SLOT_CONTROLS,
    STEM_CONTROLS,
    STEM_NAMES,
    Binding,
    ConflictError,
    Mapping,
    Scene,
    check_slot,
    default_mapping,
    two_deck_mapping,
)

HEADER = """\
# stemdeck MIDI mapping. Edit freely; `stemdeck midi show` checks it.
# message: "note" or "cc"; number: 0-127; channel: 1-16 or "any";
# control: mute, solo, gain (stem fader), dry (dry/stems crossfader), play (play/pause), cue;
#   practice: loop_in, loop_out, loop (on/off), loop_halve, loop_double, loop_beats (beats = 1, 2, 4,
#   8 or 16), hotcue (cue = 1-8: set when empty, else jump), hotcue_clear (cue = 1-8), record,
#   count_in (on with 4 beats / off);
#   two decks: crossfader and cue_mix (the mixer's), volume (channel fader), sync, headphone (cue in
#   the headphones); deck: "A" or "B", the deck a binding drives (two-deck sessions; default A);
# stem: 1-6 or a name (drums, bass, other, vocals, guitar, piano);
# mode: notes toggle | momentary; CCs absolute | relative-twos | relative-offset | relative-signbit | button;
# feedback: light the controller's pad with the control's state (Note On / CC 127 or 0).
# [[scene]] tables: Program Change <program> recalls mute, solo and gain_db (stems not named: 0 dB).
"""


MAX_FILE_BYTES = 1 << 20
MAX_BINDINGS = 1024  # 2 families x 128 numbers x 16 channels is 4096 without conflicts; real ones use dozens
MAX_SCENES = 128  # one per program
SCENE_GAIN_RANGE_DB = (-120.0, 12.0)
MAX_NAME_CHARS = 64


class MappingError(ValueError):
    pass


def user_mapping_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("stemdeck")) / "midi.toml"


def load_user_mapping(path: Path | None = None) -> Mapping:
    """The user's mapping, or the default one when there is none yet."""
    path = path or user_mapping_path()
    return load_mapping(path) if path.exists() else default_mapping()


def user_decks_mapping_path() -> Path:
    """The two-deck sessions' mapping: a file of its own, so the one-deck layout stays as it is."""
    return user_mapping_path().with_name("midi-decks.toml")


def load_user_decks_mapping(path: Path | None = None) -> Mapping:
    """The user's two-deck mapping, or :func:`two_deck_mapping` when there is none yet."""
    path = path or user_decks_mapping_path()
    return load_mapping(path) if path.exists() else two_deck_mapping()


def load_mapping(path: Path) -> Mapping:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise MappingError(
                f"{path}: {path.stat().st_size} bytes is too long for a MIDI mapping "
                f"(at most {MAX_FILE_BYTES}); is it the right file?"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError(f"no file {path}; check the name (`stemdeck midi export FILE` writes a mapping)") from None
    except IsADirectoryError:
        raise MappingError(f"{path} is a folder; name a mapping file in it (.toml)") from None
    except UnicodeDecodeError:
        raise MappingError(f"{path} is not a text file; a MIDI mapping is TOML, as `midi export` writes") from None
    except OSError as exc:
        raise MappingError(f"cannot read MIDI mapping {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{path}: not valid TOML: {exc}") from None
    lines = _key_lines(text)
    try:
        return _mapping(data, lines)
    except (MappingError, ConflictError) as exc:
        raise MappingError(f"{path} {exc}") from None


def mapping_text(mapping: Mapping) -> str:
    """The mapping as its TOML file holds it."""
    import tomli_w

    document: dict = {"midi": {"scene_channel": mapping.scene_channel or "any"}}
    document["binding"] = [_binding_table(b) for b in mapping.bindings]
    if mapping.scenes:
        document["scene"] = [_scene_table(s) for s in mapping.scenes]
    return HEADER + tomli_w.dumps(document)


def save_mapping(mapping: Mapping, path: Path) -> None:
    """Write atomically, so a crash never leaves a half-written mapping behind."""
    if path.is_dir():
        raise MappingError(f"{path} is a folder; name a file in it, e.g. {path / 'mapping.toml'}")
    temporary = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(mapping_text(mapping), encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:  # a read-only folder or home, a full disk: the mapping as it was stays
        raise MappingError(f"cannot write {path} ({exc.strerror or exc}); the mapping there is unchanged") from None
    finally:
        with contextlib.suppress(OSError):  # a folder it cannot list: nothing was left in it
            temporary.unlink(missing_ok=True)


def parse_stem(value) -> int:
    """A 1-based number or a stem name → 0-based index."""
    if isinstance(value, bool):
        raise MappingError("stem must be a number 1-6 or a name")
    if isinstance(value, int) and 1 <= value <= len(STEM_NAMES):
        return value - 1
    if isinstance(value, str) and value.lower() in STEM_NAMES:
        return STEM_NAMES.index(value.lower())
    raise MappingError(f"unknown stem {value!r} (use 1-6 or {', '.join(STEM_NAMES)})")


def parse_control(text: str) -> tuple[str, int | None]:
    """``mute:vocals``, ``gain:2``, ``play`` → (control, stem)."""
    control, stem, _ = parse_target(text)
    return control, stem


def parse_target(text: str) -> tuple[str, int | None, int | None]:
    """``mute:vocals``, ``hotcue:3``, ``loop_beats:4``, ``play`` → (control, stem, slot)."""
    control, _, stem = text.partition(":")
    if control not in CONTROLS:
        raise MappingError(f"unknown control {control!r} (use {', '.join(CONTROLS)})")
    if control in SLOT_CONTROLS:
        try:
            return control, None, check_slot(control, int(stem) if stem.isdigit() else None)
        except ValueError as exc:
            raise MappingError(f"{exc}, e.g. {control}:{4 if control == 'loop_beats' else 1}") from None
    if control in STEM_CONTROLS:
        if not stem:
            raise MappingError(f"{control} needs a stem, e.g. {control}:vocals")
        return control, parse_stem(int(stem) if stem.isdigit() else stem), None
    if stem:
        raise MappingError(f"{control} takes no stem")
    return control, None, None


def _mapping(data: dict, lines: dict) -> Mapping:
    unknown = set(data) - {"midi", "binding", "scene"}
    if unknown:
        raise MappingError(
            f"line {lines.get((sorted(unknown)[0], None, None), '?')}: unknown table "
            f"{sorted(unknown)[0]!r} (use [midi], [[binding]], [[scene]])"
        )
    settings = data.get("midi", {})
    if not isinstance(settings, dict):
        raise MappingError(f"line {lines.get(('midi', None, None), '?')}: [midi] must be a table")
    scene_channel = _channel(settings.get("scene_channel", "any"), lines.get(("midi", 0, "scene_channel")))
    binding_tables = _tables(data, "binding", MAX_BINDINGS, lines)
    scene_tables = _tables(data, "scene", MAX_SCENES, lines)
    bindings = [_binding(table, i, lines) for i, table in enumerate(binding_tables)]
    scenes = [_scene(table, i, lines) for i, table in enumerate(scene_tables)]
    seen = set()
    for scene in scenes:
        if scene.program in seen:
            raise MappingError(f"line {scene.line}: program {scene.program} recalls two scenes; keep one")
        seen.add(scene.program)
    mapping = Mapping(bindings, scenes, scene_channel)
    mapping.check()
    return mapping


def _tables(data: dict, kind: str, most: int, lines: dict) -> list[dict]:
    """The ``[[kind]]`` tables, at most ``most`` of them (checked before any is parsed)."""
    tables = data.get(kind, [])
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise MappingError(f"line {lines.get((kind, 0, None), '?')}: {kind} entries must be [[{kind}]] tables")
    if len(tables) > most:
        raise MappingError(f"has {len(tables)} [[{kind}]] tables; at most {most} are allowed")
    return tables


def _binding(table: dict, index: int, lines: dict) -> Binding:
    def fail(key: str | None, reason: str):
        line = lines.get(("binding", index, key)) or lines.get(("binding", index, None))
        raise MappingError(f"line {line}: binding {index + 1}: {reason}")

    unknown = set(table) - {
        "message",
        "number",
        "channel",
        "control",
        "stem",
        "mode",
        "feedback",
        "cue",
        "beats",
        "deck",
    }
    if unknown:
        key = sorted(unknown)[0]
        fail(key, f"unknown key {key!r}")
    for key in ("message", "number", "control"):
        if key not in table:
            fail(None, f"{key} is missing")
    message, number, control = table["message"], table["number"], table["control"]
    if message not in MESSAGE_FAMILIES:
        fail("message", f"message must be note or cc, not {message!r}")
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 127:
        fail("number", f"number must be 0-127, not {number!r}")
    if control not in CONTROLS:
        fail("control", f"unknown control {control!r} (use {', '.join(CONTROLS)})")
    stem = None
    if control in STEM_CONTROLS:
        if "stem" not in table:
            fail(None, f"{control} needs a stem (1-6 or a name)")
        try:
            stem = parse_stem(table["stem"])
        except MappingError as exc:
            fail("stem", str(exc))
    elif "stem" in table:
        fail("stem", f"{control} takes no stem")
    slot_key = "beats" if control == "loop_beats" else "cue"
    for key in {"cue", "beats"} & set(table) - {slot_key if control in SLOT_CONTROLS else ""}:
        fail(key, f"{control} takes no {key}")
    try:
        slot = check_slot(control, table.get(slot_key))
    except ValueError as exc:
        fail(slot_key, str(exc))
    mode = table.get("mode", "")
    modes = NOTE_MODES if message == "note" else CC_MODES
    if mode and mode not in modes:
        fail("mode", f"mode {mode!r} does not fit a {message} (use {', '.join(modes)})")
    if message == "note" and control in CONTINUOUS_CONTROLS:
        fail("control", f"a note cannot ride {control}; bind a CC")
    feedback = table.get("feedback", True)
    if not isinstance(feedback, bool):
        fail("feedback", "feedback must be true or false")
    try:
        channel = _channel(table.get("channel", "any"), None)
    except MappingError as exc:
        fail("channel", str(exc))
    deck = table.get("deck")
    if deck is not None and (not isinstance(deck, str) or deck.upper() not in DECK_NAMES):
        fail("deck", f'deck must be "A" or "B", not {deck!r}')
    if deck is not None and control in MIXER_CONTROLS:
        fail("deck", f"{control} is the mixer's, not a deck's; leave deck out")
    deck = None if deck is None else DECK_NAMES.index(deck.upper())
    line = lines.get(("binding", index, None))
    return Binding(message, number, control, channel, stem, mode, feedback, slot=slot, line=line, deck=deck)


def _scene(table: dict, index: int, lines: dict) -> Scene:
    line = lines.get(("scene", index, None))

    def fail(reason: str):
        raise MappingError(f"line {line}: scene {index + 1}: {reason}")

    unknown = set(table) - {"program", "name", "gain_db", "mute", "solo"}
    if unknown:
        fail(f"unknown key {sorted(unknown)[0]!r}")
    program = table.get("program")
    if not isinstance(program, int) or isinstance(program, bool) or not 0 <= program <= 127:
        fail(f"program must be 0-127, not {program!r}")
    name = table.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
        fail(f"name must be text of at most {MAX_NAME_CHARS} characters")
    gain_table, mute_list, solo_list = (table.get("gain_db", {}), table.get("mute", []), table.get("solo", []))
    if not isinstance(gain_table, dict) or not isinstance(mute_list, list) or not isinstance(solo_list, list):
        fail("gain_db must be a table (stem = dB), mute and solo lists of stems")
    try:
        gains = {parse_stem(int(k) if str(k).isdigit() else k): _scene_gain_db(v) for k, v in gain_table.items()}
        mute = frozenset(parse_stem(s) for s in mute_list)
        solo = frozenset(parse_stem(s) for s in solo_list)
    except (MappingError, TypeError, ValueError) as exc:
        fail(str(exc))
    return Scene(program, name, gains, mute, solo, line=line)


def _scene_gain_db(value) -> float:
    """A finite gain in dB: a NaN or infinite gain would turn the whole output into NaN."""
    low, high = SCENE_GAIN_RANGE_DB
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise MappingError(f"gain_db must be a number of dB from {low:g} to {high:g}, not {value!r}")
    return float(value)


def _channel(value, line) -> int | None:
    if value == "any":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 16:
        return value
    where = f"line {line}: " if line else ""
    raise MappingError(f'{where}channel must be 1-16 or "any", not {value!r}')


_HEADER_LINE = re.compile(r"^\s*\[\[\s*(binding|scene)\s*\]\]")
_TABLE_LINE = re.compile(r"^\s*\[\s*([A-Za-z_]+)\s*\]")
_KEY_LINE = re.compile(r"^\s*([A-Za-z_]+)\s*=")


def _key_lines(text: str) -> dict:
    """(table, index, key) → line number, so errors point where the user must look."""
    lines, counts, current = {}, {"binding": -1, "scene": -1}, (None, None)
    for number, line in enumerate(text.splitlines(), 1):
        if header := _HEADER_LINE.match(line):
            kind = header.group(1)
            counts[kind] += 1
            current = (kind, counts[kind])
            lines[(*current, None)] = number
        elif table := _TABLE_LINE.match(line):
            current = (table.group(1), 0)
            lines.setdefault((table.group(1), None, None), number)
        elif (key := _KEY_LINE.match(line)) and current[0] is not None:
            lines.setdefault((*current, key.group(1)), number)
    return lines


def _binding_table(binding: Binding) -> dict:
    table = {
        "message": binding.message,
        "number": binding.number,
        "channel": binding.channel if binding.channel is not None else "any",
        "control": binding.control,
    }
    if binding.stem is not None:
        table["stem"] = STEM_NAMES[binding.stem]
    if binding.slot is not None:
        table["beats" if binding.control == "loop_beats" else "cue"] = binding.slot
    if binding.deck is not None:
        table["deck"] = DECK_NAMES[binding.deck]
    table["mode"] = binding.mode
    table["feedback"] = binding.feedback
    return table


def _scene_table(scene: Scene) -> dict:
    table = {
        "program": scene.program,
        "name": scene.name,
        "mute": [STEM_NAMES[s] for s in sorted(scene.mute)],
        "solo": [STEM_NAMES[s] for s in sorted(scene.solo)],
    }
    table["gain_db"] = {STEM_NAMES[s]: db for s, db in sorted(scene.gain_db.items()) if math.isfinite(db)}
    return table
