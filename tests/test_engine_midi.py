"""MIDI without ports: message parsing, taper, encodings, mapping files and the controller's
effect on a real engine (headless deck, pass-through model whose stems are known fractions)."""

import itertools
import math

import numpy as np
import pytest

from stemdeck.engine.config import EngineConfig, WindowConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.midi import (
    Binding,
    Mapping,
    MappingError,
    MidiConfig,
    MidiController,
    cc_to_db,
    db_to_cc,
    default_mapping,
    load_mapping,
    parse,
    relative_delta,
    save_mapping,
)
from stemdeck.engine.midi.bindings import ConflictError, Scene
from stemdeck.engine.midi.mapping_file import parse_control
from stemdeck.models.nets.passthrough import PassThrough

SR = 44100
FAST_PLAN = WindowConfig(window_s=0.5, hop_s=0.1, lookahead_s=0.05, span_s=0.2)
VOCALS, BASS = 3, 1


# -- messages -------------------------------------------------------------------------------------


def test_parse_reads_notes_ccs_and_programs_with_one_based_channels():
    assert parse([0x90, 39, 100]).kind == "note_on"
    on = parse([0x93, 39, 100])
    assert (on.channel, on.number, on.value) == (4, 39, 100)
    assert parse([0x90, 39, 0]).kind == "note_off"  # velocity 0 is a release
    assert parse([0x80, 39, 64]).kind == "note_off"
    cc = parse([0xB0, 7, 127])
    assert (cc.kind, cc.channel, cc.number, cc.value) == ("cc", 1, 7, 127)
    assert parse([0xCF, 5]) == parse([0xCF, 5]) and parse([0xCF, 5]).channel == 16


@pytest.mark.parametrize(
    "data",
    [
        [0xF0, 0x7E, 0x7F, 0x06, 0x01, 0xF7],  # SysEx
        [0xF8],
        [0xFE],  # clock, active sensing
        [39, 100],  # running status: data bytes without a status byte
        [0xD0, 64],  # channel pressure
        [0xA0, 39, 10],  # polyphonic pressure
        [0xE0, 0, 64],  # pitch bend
        [0x90, 39],  # truncated
        [0x90, 39, 100, 1],  # too long
        [0x90, 200, 100],  # a data byte with the top bit set
        [],
    ],
)
def test_parse_drops_what_stemdeck_does_not_bind(data):
    assert parse(data) is None


# -- taper and encoders ---------------------------------------------------------------------------


def test_fader_taper_points_and_inverse():
    assert cc_to_db(0) == -math.inf
    assert cc_to_db(1) == pytest.approx(-54.0)
    assert cc_to_db(100) == 0.0
    assert cc_to_db(127) == pytest.approx(6.0)
    values = [cc_to_db(v) for v in range(1, 128)]
    assert all(b > a for a, b in itertools.pairwise(values))  # strictly rising, no dead zone
    for v in range(128):
        assert db_to_cc(cc_to_db(v)) == pytest.approx(v, abs=1e-9)


def test_relative_encodings():
    assert [relative_delta(v, "relative-twos") for v in (1, 5, 63, 127, 123, 64)] == [1, 5, 63, -1, -5, -64]
    assert [relative_delta(v, "relative-offset") for v in (65, 70, 63, 58, 64)] == [1, 6, -1, -6, 0]
    assert [relative_delta(v, "relative-signbit") for v in (1, 5, 65, 69)] == [1, 5, -1, -5]
    with pytest.raises(ValueError, match="not a relative encoding"):
        relative_delta(1, "absolute")


# -- mapping files --------------------------------------------------------------------------------


def test_default_mapping_as_documented():
    mapping = default_mapping()
    for stem in range(6):
        mute = mapping.find(parse([0x9A, 36 + stem, 100]))  # any channel
        assert (mute.control, mute.stem, mute.mode) == ("mute", stem, "toggle")
        fader = mapping.find(parse([0xB0, 1 + stem, 64]))
        assert (fader.control, fader.stem, fader.mode) == ("gain", stem, "absolute")
        assert mapping.find(parse([0xB1, 1 + stem, 64])) is None  # faders listen on channel 1 only
    assert mapping.conflicts() == []


def test_mapping_round_trips_through_toml(tmp_path):
    mapping = default_mapping()
    mapping.bindings.append(Binding("cc", 20, "gain", 3, VOCALS, "relative-twos", feedback=False))
    mapping.scenes.append(Scene(9, "bass up", gain_db={BASS: 4.5}, mute=frozenset({0})))
    path = tmp_path / "m.toml"
    save_mapping(mapping, path)
    loaded = load_mapping(path)
    assert loaded.bindings == mapping.bindings
    assert loaded.scenes == mapping.scenes
    assert 'stem = "vocals"' in path.read_text()  # readable names, not indices


def _write(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


GOOD = '[[binding]]\nmessage = "note"\nnumber = 36\ncontrol = "mute"\nstem = 1\n'


@pytest.mark.parametrize(
    "text, error",
    [
        (
            GOOD + '\n[[binding]]\nmessage = "note"\nnumber = 37\ncontrol = "mutee"\nstem = 2\n',
            r"bad.toml line 10: binding 2: unknown control 'mutee' \(use mute, solo, gain, dry, play, cue, .*record\)",
        ),
        (GOOD.replace("36", "128"), r"line 3: binding 1: number must be 0-127, not 128"),
        (GOOD.replace("stem = 1", 'stem = "voxals"'), r"line 5: binding 1: unknown stem 'voxals'"),
        (GOOD + 'mode = "relative-twos"\n', r"line 6: binding 1: mode 'relative-twos' does not fit a note"),
        (GOOD + "channel = 17\n", r"line 6: binding 1: channel must be 1-16"),
        (GOOD.replace("stem = 1\n", ""), r"line 1: binding 1: mute needs a stem"),
        (GOOD + 'colour = "red"\n', r"line 6: binding 1: unknown key 'colour'"),
        (
            '[[binding]]\nmessage = "note"\nnumber = 36\ncontrol = "gain"\nstem = 1\n',
            r"line 4: binding 1: a note cannot ride gain; bind a CC",
        ),
        (
            GOOD + GOOD.replace("mute", "solo"),
            r"note 36 on any channel drives both mute drums and solo drums \(lines 1 and 6\); keep one",
        ),
        ("[[scene]]\nprogram = 1\n[[scene]]\nprogram = 1\n", r"line 3: program 1 recalls two scenes"),
        (GOOD + "number = 1\n", r"bad.toml: not valid TOML: .*line 6"),
    ],
)
def test_invalid_mapping_is_rejected_with_the_line_and_reason(tmp_path, text, error):
    with pytest.raises(MappingError, match=error):
        load_mapping(_write(tmp_path, text))


def test_channel_specific_bindings_do_not_conflict_but_any_overlaps_all():
    a = Binding("cc", 1, "gain", 1, 0)
    assert Mapping([a, Binding("cc", 1, "gain", 2, 1)]).conflicts() == []
    with pytest.raises(ConflictError, match="CC 1 on any channel drives both gain drums and gain bass"):
        Mapping([a, Binding("cc", 1, "gain", None, 1)]).check()


def test_parse_control():
    assert parse_control("mute:vocals") == ("mute", VOCALS)
    assert parse_control("gain:2") == ("gain", BASS)
    assert parse_control("play") == ("play", None)
    with pytest.raises(MappingError, match="solo needs a stem"):
        parse_control("solo")
    with pytest.raises(MappingError, match="unknown control 'pitch'"):
        parse_control("pitch:1")


# -- the controller on a real engine --------------------------------------------------------------


@pytest.fixture
def deck():
    """A playing deck of a 441 Hz tone, fully separated (stems: 0.1/0.2/0.3/0.4 of it)."""
    engine = Engine(
        PassThrough(), EngineConfig(precision="fp32", inference_budget_s=0.0, worker="thread", cache_stems=False)
    )
    engine.prepare(FAST_PLAN, block_frames=256, calibrate_plan=False)
    tone = np.sin(2 * np.pi * 441 * np.arange(2 * SR) / SR).astype(np.float32)
    engine.load_array(np.stack([tone, tone]))
    assert engine.wait_separated(2 * SR - 1, timeout_s=60)
    engine.play()
    engine.tone = tone
    yield engine
    engine.stop()


def settled_ratio(engine, blocks: int = 3) -> float:
    """Output over dry after the 10 ms ramps: 1.0 with every stem at unity."""
    out = np.zeros((256, 2), np.float32)
    for _ in range(blocks):
        start = engine.status().position_s
        engine.process_deck_block(out)
    first = round(start * SR)
    dry = engine.tone[first : first + 256]
    return float(np.dot(out[:, 0], dry) / np.dot(dry, dry))


def controller(engine, mapping=None, **config):
    return MidiController(engine, mapping or default_mapping(len(engine.sources)), MidiConfig(**config))


def test_note_toggles_and_momentary_notes_hold(deck):
    midi = controller(
        deck, Mapping([Binding("note", 39, "mute", None, VOCALS), Binding("note", 50, "solo", 2, BASS, "momentary")])
    )
    midi.handle([0x95, 39, 100])
    assert deck.mixer().mute[VOCALS]
    assert settled_ratio(deck) == pytest.approx(0.6, abs=1e-5)  # the vocals (0.4) are gone
    midi.handle([0x85, 39, 0])  # a toggle ignores the release
    assert deck.mixer().mute[VOCALS]
    midi.handle([0x90, 39, 1])
    assert not deck.mixer().mute[VOCALS]
    midi.handle([0x91, 50, 100])  # held on channel 2
    assert deck.mixer().solo[BASS] and settled_ratio(deck) == pytest.approx(0.2, abs=1e-5)
    midi.handle([0x91, 50, 0])
    assert not deck.mixer().solo[BASS] and settled_ratio(deck) == pytest.approx(1.0, abs=1e-5)
    midi.handle([0x90, 50, 100])  # channel 1: not this binding's
    assert not deck.mixer().solo[BASS]
    assert midi.applied == 4 and midi.ignored == 2


def test_cc_faders_absolute_relative_and_buttons(deck):
    midi = controller(
        deck,
        Mapping(
            [
                Binding("cc", 1, "gain", 1, BASS),
                Binding("cc", 2, "gain", 1, VOCALS, "relative-twos"),
                Binding("cc", 3, "gain", 1, 0, "relative-offset"),
                Binding("cc", 4, "mute", 1, 2, "button"),
                Binding("cc", 5, "dry", 1),
            ]
        ),
    )
    midi.handle([0xB0, 1, 100])
    assert deck.mixer().gain_db[BASS] == pytest.approx(0.0, abs=1e-5)
    midi.handle([0xB0, 1, 0])
    assert deck.mixer().gain_db[BASS] <= -60  # silence
    assert settled_ratio(deck) == pytest.approx(0.8, abs=1e-5)
    midi.handle([0xB0, 1, int(round(db_to_cc(-6.0)))])
    assert deck.mixer().gain_db[BASS] == pytest.approx(-6.0, abs=0.3)
    for _ in range(3):
        midi.handle([0xB0, 2, 127])  # three clicks down from unity
    assert deck.mixer().gain_db[VOCALS] == pytest.approx(cc_to_db(97), abs=1e-4)
    midi.handle([0xB0, 2, 3])
    assert deck.mixer().gain_db[VOCALS] == pytest.approx(0.0, abs=1e-4)
    midi.handle([0xB0, 3, 64 + 27])  # offset encoding to the top: +6 dB
    assert deck.mixer().gain_db[0] == pytest.approx(6.0, abs=1e-4)
    midi.handle([0xB0, 4, 127])
    assert deck.mixer().mute[2]
    midi.handle([0xB0, 4, 0])
    assert not deck.mixer().mute[2]
    midi.handle([0xB0, 5, 127])
    assert deck.mixer().dry_mix == pytest.approx(1.0)


def test_fader_at_minus_6_db_halves_the_stem(deck):
    midi = controller(deck, Mapping([Binding("cc", 1, "gain", 1, VOCALS)]))
    midi.handle([0xB0, 1, round(db_to_cc(-6.0206))])
    expected = 0.6 + 0.4 * 10 ** (deck.mixer().gain_db[VOCALS] / 20)
    assert settled_ratio(deck) == pytest.approx(expected, abs=1e-5)
    assert 10 ** (deck.mixer().gain_db[VOCALS] / 20) == pytest.approx(0.5, abs=0.02)


def test_transport_and_scenes(deck):
    midi = controller(deck)
    midi.handle([0x90, 48, 100])  # play/pause
    assert not deck.mixer().playing
    midi.handle([0x90, 48, 100])
    assert deck.mixer().playing
    midi.handle([0xC3, 1])  # program 1: instrumental
    assert deck.mixer().mute == (False, False, False, True)
    assert settled_ratio(deck) == pytest.approx(0.6, abs=1e-5)
    midi.handle([0xC0, 2])  # a cappella
    assert deck.mixer().solo == (False, False, False, True) and deck.mixer().mute == (False,) * 4
    midi.handle([0xC0, 0])
    assert deck.mixer().solo == (False,) * 4
    midi.handle([0xC0, 99])  # no scene there
    assert "scene 2: a cappella recalled" in midi.events


def test_cue_returns_to_the_cue_point_and_pauses(deck):
    midi = controller(deck)
    settled_ratio(deck, blocks=10)
    midi.handle([0x90, 49, 100])
    out = np.zeros((256, 2), np.float32)
    deck.process_deck_block(out)  # the seek lands in the callback
    assert not deck.mixer().playing and deck.status().position_s == 0.0


def test_stems_the_model_lacks_and_unbound_messages_are_ignored(deck):
    midi = controller(deck)  # the default mapping has 6 stems; this model has 4
    midi.handle([0x90, 41, 100])  # mute stem 6
    midi.handle([0x90, 100, 100])  # nothing bound
    midi.handle([0xF0, 1, 2, 0xF7])
    midi.handle([0xD0, 3])
    assert deck.mixer().mute == (False,) * 4
    assert midi.ignored == 4 and midi.applied == 0


def test_learn_binds_the_next_message_and_saves_it(deck, tmp_path):
    path = tmp_path / "midi.toml"
    midi = controller(deck, mapping_path=path)
    midi.learn("gain", BASS)
    assert midi.learning
    midi.handle([0xF0, 1, 0xF7])  # not learnable: still waiting
    midi.handle([0xB4, 21, 90])
    assert not midi.learning
    midi.handle([0xB4, 21, 100])
    assert deck.mixer().gain_db[BASS] == pytest.approx(0.0, abs=1e-5)
    learned = load_mapping(path).find(parse([0xB4, 21, 0]))
    assert (learned.control, learned.stem, learned.channel, learned.mode) == ("gain", BASS, 5, "absolute")
    assert load_mapping(path).find(parse([0xB0, 2, 0])) is None  # the old bass fader binding was replaced
    assert "learned: CC 21 on channel 5 drives gain bass" in midi.events


def test_learning_a_bound_message_moves_it_and_says_so(deck):
    midi = controller(deck)
    midi.learn("solo", VOCALS)
    midi.handle([0x90, 36, 100])  # note 36 muted the drums
    assert "note 36 on any channel no longer drives mute drums" in midi.events
    midi.handle([0x90, 36, 0])
    midi.handle([0x90, 36, 100])
    assert deck.mixer().solo[VOCALS] and not deck.mixer().mute[0]


def test_learn_refuses_a_note_for_a_fader_and_cancel_leaves_all_as_it_was(deck):
    midi = controller(deck)
    before = list(midi.mapping.bindings)
    midi.learn("gain", VOCALS)
    midi.handle([0x90, 60, 100])
    assert midi.learning and "a note cannot ride gain; move a fader or knob (a CC) instead" in midi.events
    midi.cancel_learn()
    assert not midi.learning and midi.wait_learned(0) is None
    midi.handle([0xB0, 90, 1])
    assert midi.mapping.bindings == before


# -- midi export / import on the command line: the user's files ---------------------------------


def test_export_to_a_folder_or_a_missing_folder_is_one_line_and_leaves_nothing(tmp_path, capsys):
    """A folder gave IsADirectoryError and left ``<folder>.tmp``; a mistyped folder was made."""
    from stemdeck.cli import main

    mapping = ["--midi-map", str(tmp_path / "midi.toml")]
    folder = tmp_path / "exports"
    folder.mkdir()
    assert main(["midi", "export", str(folder), *mapping]) == 1
    assert main(["midi", "export", str(tmp_path / "none" / "x.toml"), *mapping]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"stemdeck: error: {folder} is a folder; name a file in it, e.g. {folder / 'mapping.toml'}",
        f"stemdeck: error: no folder {tmp_path / 'none'}; create it or export elsewhere",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"] and not list(folder.iterdir())
    assert main(["midi", "export", str(folder / "mine.toml"), *mapping]) == 0
    assert len(load_mapping(folder / "mine.toml").bindings) == len(default_mapping().bindings)


def test_export_keeps_a_file_that_is_there_unless_forced(tmp_path, capsys):
    """``midi export demo.wav`` replaced the user's song with a mapping and said it was done."""
    from stemdeck.cli import main

    mapping = ["--midi-map", str(tmp_path / "midi.toml")]
    song = tmp_path / "demo.wav"
    song.write_bytes(b"RIFF and the rest of a song")
    beside_a_file = tmp_path / "demo.wav" / "x.toml"
    assert main(["midi", "export", str(song), *mapping]) == 1
    assert main(["midi", "export", str(beside_a_file), *mapping]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"stemdeck: error: {song} exists; choose another name or add --force to overwrite it",
        f"stemdeck: error: {song} is a file, not a folder; export elsewhere",
    ]
    assert song.read_bytes() == b"RIFF and the rest of a song"
    assert main(["midi", "export", str(song), "--force", *mapping]) == 0
    assert len(load_mapping(song).bindings) == len(default_mapping().bindings)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: None, "no file {path}; check the name (`stemdeck midi export FILE` writes a mapping)"),
        (lambda path: path.mkdir(), "{path} is a folder; name a mapping file in it (.toml)"),
        (lambda path: path.write_bytes(b"\xf6\x00\xff binary"), "{path} is not a text file; a MIDI mapping is TOML"),
    ],
)
def test_importing_what_is_no_mapping_says_what_it_is_in_one_line(tmp_path, capsys, make, message):
    """A missing file, a folder and a binary file gave Python's own errors ([Errno 2], codec...)."""
    from stemdeck.cli import main

    path = tmp_path / "nope.toml"
    make(path)
    assert main(["midi", "import", str(path), "--midi-map", str(tmp_path / "midi.toml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"stemdeck: error: {message.format(path=path)}"), err
    assert not (tmp_path / "midi.toml").exists()


def test_importing_an_empty_file_keeps_the_mapping(tmp_path, capsys):
    """An empty file replaced the mapping with nothing, and said so as if it were done."""
    from stemdeck.cli import main

    mine = tmp_path / "midi.toml"
    mapping = default_mapping()
    save_mapping(mapping, mine)
    before = mine.read_bytes()
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert main(["midi", "import", str(empty), "--midi-map", str(mine)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"stemdeck: error: {empty} holds no bindings or scenes; the mapping is unchanged"
    )
    assert mine.read_bytes() == before


@pytest.mark.parametrize("command", [["import", "{source}"], ["reset"]])
def test_a_mapping_that_cannot_be_written_is_one_line(tmp_path, capsys, command):
    """A read-only folder (here /sys, read-only even to root) gave PermissionError's traceback."""
    from stemdeck.cli import main

    source = tmp_path / "mine.toml"
    save_mapping(default_mapping(), source)
    target = "/sys/stemdeck-test-mapping.toml"
    args = ["midi", *(part.format(source=source) for part in command), "--midi-map", target]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"stemdeck: error: cannot write {target} (Permission denied); the mapping there is unchanged"]


def test_export_to_dash_prints_the_mapping_and_writes_no_file(tmp_path, capsys, monkeypatch):
    """`midi export -` wrote a file named "-"; as other tools do, it prints to standard output."""
    from stemdeck.cli import main
    from stemdeck.engine.midi.mapping_file import load_mapping

    mine = tmp_path / "midi.toml"
    save_mapping(default_mapping(), mine)
    monkeypatch.chdir(tmp_path)
    assert main(["midi", "export", "-", "--midi-map", str(mine)]) == 0
    printed = capsys.readouterr().out
    assert printed == mine.read_text(encoding="utf-8") and not (tmp_path / "-").exists()
    (tmp_path / "printed.toml").write_text(printed, encoding="utf-8")
    assert load_mapping(tmp_path / "printed.toml") == load_mapping(mine)
