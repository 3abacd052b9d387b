"""MIDI for practice, without ports: the default pads drive hot cues (set, jump, clear with the
shift layer), loop in/out/on/halve/double, loops by beats and record on a real headless deck;
their lights follow; TOML mappings and learn carry the cue and beat slots, bad ones in one line."""

import numpy as np
import pytest
import soundfile as sf
from test_engine_loop import SR, deck, play, tone_track

from stemdeck.engine.midi import MappingError, MidiConfig, MidiController, default_mapping, load_mapping, save_mapping
from stemdeck.engine.midi.bindings import Binding, Mapping
from stemdeck.engine.midi.mapping_file import parse_target
from stemdeck.engine.midi.messages import parse

NOTE_ON = 0x90
HOTCUE, HOTCUE_CLEAR, LOOP_IN, LOOP_OUT, LOOP, HALVE, DOUBLE, RECORD, BEATS_1 = 50, 58, 66, 67, 68, 69, 70, 71, 72


def press(midi, note: int) -> None:
    midi.handle([NOTE_ON, note, 100])
    midi.handle([NOTE_ON, note, 0])  # the release changes nothing


@pytest.fixture
def practice():
    engine = deck(tone_track())
    midi = MidiController(engine, default_mapping(len(engine.sources)), MidiConfig())
    yield engine, midi
    engine.stop()


def test_pads_set_jump_to_and_clear_hot_cues(practice):
    engine, midi = practice
    engine.seek(0.5)
    press(midi, HOTCUE + 2)  # pad 3, empty: set
    assert engine.hot_cues[2] == 0.5
    engine.seek(2.0)
    engine.play()
    press(midi, HOTCUE + 2)  # pad 3, set: jump
    out = play(engine, 256)
    np.testing.assert_allclose(out, engine._deck_buffers.track[:, SR // 2 : SR // 2 + 256].T, atol=1e-6)
    press(midi, HOTCUE_CLEAR + 2)  # shift + pad 3
    assert engine.hot_cues[2] is None
    assert (midi.applied, midi.ignored) == (3, 3)  # the releases change nothing


def test_pads_set_loop_in_out_toggle_halve_double_and_beats(practice):
    engine, midi = practice
    engine.play()
    play(engine, 11025)
    press(midi, LOOP_IN)
    play(engine, 22050)
    press(midi, LOOP_OUT)
    assert (engine.loop.in_frames, engine.loop.out_frames, engine.mixer().looping) == (11025, 33075, True)
    press(midi, HALVE)
    assert engine.loop.length_frames == 11025
    press(midi, DOUBLE)
    press(midi, DOUBLE)
    assert engine.loop.length_frames == 44100
    press(midi, LOOP)
    assert not engine.mixer().looping
    press(midi, BEATS_1 + 2)  # 4 beats: no tempo yet, said, nothing changes
    assert engine.loop.length_frames == 44100 and "tempo is not known" in midi.events[-1]
    engine.set_beat_grid(120.0)
    press(midi, BEATS_1 + 2)
    assert engine.loop.length_frames == 2 * SR and engine.mixer().looping


def test_the_record_pad_starts_and_stops_a_take_of_what_plays(practice, tmp_path, monkeypatch):
    engine, midi = practice
    monkeypatch.setenv("STEMDECK_RECORDINGS_DIR", str(tmp_path / "takes"))
    engine.play()
    press(midi, RECORD)
    assert engine.mixer().recording
    heard = play(engine, 4096)
    press(midi, RECORD)
    assert not engine.mixer().recording
    (take,) = (tmp_path / "takes").glob("stemdeck-*.wav")
    np.testing.assert_array_equal(sf.read(str(take), dtype="float32")[0], heard)


def test_practice_pads_light_with_their_state(practice):
    engine, midi = practice
    mapping = midi.mapping
    lights = {}
    for note in (HOTCUE, HOTCUE + 1, LOOP, RECORD):
        binding = mapping.find(parse([NOTE_ON, note, 100]))
        lights[note] = lambda b=binding: midi._feedback_message(b, engine.mixer())[2]
    assert [lights[n]() for n in (HOTCUE, HOTCUE + 1, LOOP, RECORD)] == [0, 0, 0, 0]
    engine.set_hot_cue(1)
    engine.set_loop(0.5, 1.0)
    assert [lights[n]() for n in (HOTCUE, HOTCUE + 1, LOOP, RECORD)] == [127, 0, 127, 0]


def test_mappings_carry_cue_and_beat_slots_through_toml(tmp_path):
    mapping = default_mapping()
    assert mapping.conflicts() == []
    mapping.bindings.append(Binding("cc", 30, "hotcue", 2, mode="button", slot=8))
    path = tmp_path / "m.toml"
    save_mapping(mapping, path)
    text = path.read_text()
    assert 'control = "hotcue"\ncue = 8' in text.replace("\r", "") or "cue = 8" in text
    assert load_mapping(path).bindings == mapping.bindings
    assert parse_target("hotcue:3") == ("hotcue", None, 3)
    assert parse_target("loop_beats:16") == ("loop_beats", None, 16)
    assert parse_target("loop_in") == ("loop_in", None, None)


@pytest.mark.parametrize(
    "table,error",
    [
        ('control = "hotcue"\ncue = 9\n', r"line 5: binding 1: hotcue needs cue 1, 2, 3, 4, 5, 6, 7, 8, not 9"),
        ('control = "hotcue"\n', r"binding 1: hotcue needs cue 1, .*, not None"),
        ('control = "loop_beats"\nbeats = 3\n', r"line 5: binding 1: loop_beats needs beats 1, 2, 4, 8, 16, not 3"),
        ('control = "loop_in"\ncue = 1\n', r"line 5: binding 1: loop_in takes no cue"),
        ('control = "hotcue"\ncue = 1\nbeats = 4\n', r"line 6: binding 1: hotcue takes no beats"),
    ],
)
def test_bad_slots_in_a_mapping_are_one_line_each(tmp_path, table, error):
    path = tmp_path / "bad.toml"
    path.write_text('[[binding]]\nmessage = "note"\nnumber = 60\n' + table)
    with pytest.raises(MappingError, match=error):
        load_mapping(path)


def test_learn_binds_a_hot_cue_pad(practice):
    engine, midi = practice
    midi.mapping = Mapping([])
    midi.learn("hotcue", slot=5)
    midi.handle([0x93, 99, 100])
    binding = midi.mapping.find(parse([0x93, 99, 100]))
    assert (binding.control, binding.slot, binding.channel) == ("hotcue", 5, 4)
    midi.handle([0x93, 99, 0])
    midi.handle([0x93, 99, 100])
    assert engine.hot_cues[4] == 0.0
