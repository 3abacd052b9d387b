"""Count-in before a loop restarts (practice), driven block by block without a sound card: at
the loop's out point the deck plays N clicks, one a beat of the track's tempo (the first
accented), with the playhead waiting at the in point, then the loop from its in point, sample
for sample; off by default, where the loop wraps exactly as before."""

import numpy as np
import pytest
import soundfile as sf
from conftest import run_stemdeck
from test_engine_loop import SR, deck, looped_reference, play, tone_track

from stemdeck.engine.audio.click import ACCENT, BEAT, click_buffer
from stemdeck.engine.audio.state import playhead_frames
from stemdeck.engine.config import CountInConfig

BPM = 180.0  # a beat of 14700 frames at 44.1 kHz: the test stays short
BEAT_FRAMES = 14700
LOOP_IN, LOOP_OUT = int(0.5 * SR), int(0.8 * SR)
FADE = int(round(0.005 * SR))


def faded_out(track: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The track's ``[start, stop)`` as ``(frames, C)``, its last FADE frames faded towards silence."""
    out = track[:, start:stop].T.copy()
    left = stop - np.arange(start, stop)
    fading = left <= FADE
    out[fading] *= (left[fading] / (FADE + 1))[:, None]
    return out


def clicks(beats: int) -> np.ndarray:
    """``beats`` beats of the count-in ``(frames, 2)``: the accented click, then plain ones."""
    click = click_buffer(CountInConfig(), SR)
    mono = np.zeros(beats * BEAT_FRAMES, np.float32)
    for beat in range(beats):
        mono[beat * BEAT_FRAMES : beat * BEAT_FRAMES + click.shape[1]] = click[ACCENT if beat == 0 else BEAT]
    return np.stack([mono, mono], axis=1)


def counting_deck(beats: int):
    track = tone_track()
    engine = deck(track)
    engine.set_beat_grid(BPM)
    engine.set_count_in(beats)
    engine.set_loop(0.5, 0.8)
    engine.play()
    return track, engine


def test_two_beats_of_click_then_the_loop_from_its_in_point_sample_exact():
    track, engine = counting_deck(2)
    span, count = LOOP_OUT - LOOP_IN, 2 * BEAT_FRAMES
    out = play(engine, LOOP_OUT + 2 * (count + span))
    engine.stop()
    np.testing.assert_allclose(out[:LOOP_OUT], faded_out(track, 0, LOOP_OUT), atol=1e-6)
    for at in (LOOP_OUT, LOOP_OUT + count + span):  # every pass: the count-in, then the loop
        np.testing.assert_array_equal(out[at : at + count], clicks(2))
        np.testing.assert_allclose(out[at + count : at + count + span], faded_out(track, LOOP_IN, LOOP_OUT), atol=1e-6)
        np.testing.assert_allclose(  # before the seam's fade, the loop is the track itself
            out[at + count : at + count + span - FADE], track[:, LOOP_IN : LOOP_OUT - FADE].T, atol=1e-6
        )
    click = click_buffer(CountInConfig(), SR)
    for beat, row in ((0, ACCENT), (1, BEAT)):  # each click's peak where its beat puts it, within a sample
        start, peak_at = LOOP_OUT + beat * BEAT_FRAMES, int(np.abs(click[row]).argmax())
        assert abs(int(np.abs(out[start : start + BEAT_FRAMES, 0]).argmax()) - peak_at) <= 1
    assert abs(out[LOOP_OUT, 0]) < 1e-6 and np.abs(out[LOOP_OUT : LOOP_OUT + count]).max() > 0.4  # accent at -6 dB


def test_the_playhead_waits_at_the_in_point_during_the_count_in():
    _, engine = counting_deck(2)
    play(engine, LOOP_OUT)
    for _ in range(2 * BEAT_FRAMES // 4096):
        assert playhead_frames(engine.shared) == LOOP_IN
        play(engine, 4096, sizes=[4096])
    assert playhead_frames(engine.shared) == LOOP_IN
    play(engine, 2 * BEAT_FRAMES % 4096 + 100)
    assert playhead_frames(engine.shared) == LOOP_IN + 100
    engine.stop()


def test_off_by_default_the_loop_wraps_exactly_as_before():
    track = tone_track()
    engine = deck(track)
    assert engine.count_in == 0
    engine.set_beat_grid(BPM)
    engine.set_loop(0.5, 0.8)
    engine.play()
    out = play(engine, 2 * SR)
    expected = looped_reference(track, LOOP_IN, LOOP_OUT, FADE, 2 * SR)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    engine.set_count_in(4)
    engine.set_count_in(0)  # on and off again: as before
    more = play(engine, SR)
    engine.stop()
    np.testing.assert_allclose(more, looped_reference(track, LOOP_IN, LOOP_OUT, FADE, 3 * SR)[2 * SR :], atol=1e-6)


def test_without_a_tempo_the_count_in_clicks_at_120_bpm():
    track = tone_track()
    engine = deck(track)
    engine.set_count_in(1)
    engine.set_loop(0.5, 0.8)
    engine.play()
    beat = SR // 2
    out = play(engine, LOOP_OUT + beat + 100)
    engine.stop()
    click = click_buffer(CountInConfig(), SR)
    np.testing.assert_array_equal(out[LOOP_OUT : LOOP_OUT + click.shape[1], 0], click[ACCENT])
    assert not out[LOOP_OUT + click.shape[1] : LOOP_OUT + beat].any()
    np.testing.assert_allclose(out[LOOP_OUT + beat :], track[:, LOOP_IN : LOOP_IN + 100].T, atol=1e-6)


def test_a_recording_holds_the_count_in_as_heard(tmp_path):
    _, engine = counting_deck(2)
    engine.start_recording(tmp_path / "take.wav")
    heard = play(engine, LOOP_OUT + 2 * BEAT_FRAMES + 1000)
    take = engine.stop_recording()
    engine.stop()
    recorded, _ = sf.read(str(tmp_path / "take.wav"), dtype="float32", always_2d=True)
    assert take.frames == heard.shape[0] and take.dropped_frames == 0
    np.testing.assert_array_equal(recorded, heard)
    np.testing.assert_array_equal(recorded[LOOP_OUT : LOOP_OUT + 2 * BEAT_FRAMES], clicks(2))


@pytest.mark.parametrize("beats", [-1, 9, 2.5, True, "4"])
def test_a_bad_count_in_is_one_clear_line(beats):
    engine = deck(tone_track())
    with pytest.raises(ValueError, match=r"count-in .* is not a number of beats from 0 \(off\) to 8"):
        engine.set_count_in(beats)
    assert engine.count_in == 0
    engine.stop()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--count-in", "4"], "--count-in 4 needs --loop A:B"),
        (["--loop", "1:2", "--count-in", "0"], "--count-in 0: give a number of beats from 1 to 8"),
        (["--loop", "1:2", "--count-in", "9"], "--count-in 9: give a number of beats from 1 to 8"),
        (["--loop", "1:2", "--count-in", "two"], "--count-in two: give a number of beats from 1 to 8"),
        (["--loop", "1:2", "--count-in", "-1"], "--count-in -1: give a number of beats from 1 to 8"),
    ],
)
def test_the_cli_refuses_a_bad_count_in_in_one_line_before_loading_the_model(
    tmp_path, monkeypatch, capsys, args, expected
):
    import stemdeck.models.cli
    import stemdeck.models.loading
    from stemdeck.cli import main

    def loaded(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(stemdeck.models.cli, "load_for_command", loaded)
    monkeypatch.setattr(stemdeck.models.loading, "load_or_fetch", loaded)
    song = tmp_path / "song.wav"
    sf.write(song, tone_track().T, SR)
    assert main(["play", str(song), "--model", "passthrough", *args]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stemdeck: error: {expected}"), lines


def test_the_default_midi_pad_note_80_on_channel_1_toggles_a_bar_of_count_in_and_lights():
    from stemdeck.engine.midi import MidiConfig, MidiController, default_mapping
    from stemdeck.engine.midi.messages import parse

    engine = deck(tone_track())
    midi = MidiController(engine, default_mapping(len(engine.sources)), MidiConfig())
    binding = midi.mapping.find(parse([0x90, 80, 100]))
    assert binding.control == "count_in" and midi.mapping.find(parse([0x91, 80, 100])) is None  # channel 1 only
    assert midi.mapping.conflicts() == []
    lights = []
    for _ in range(2):
        midi.handle([0x90, 80, 100])
        midi.handle([0x90, 80, 0])  # the release changes nothing
        lights.append((engine.count_in, midi._feedback_message(binding, engine.mixer())[2]))
    engine.stop()
    assert lights == [(4, 127), (0, 0)]


@pytest.mark.parametrize("tempo", ["1", "0.8"])
def test_cli_play_counts_in_on_a_real_jack_server(jack_server, tmp_path, tempo):
    """`stemdeck play --loop --count-in 2 --record`: after the loop's first pass the take holds
    the accented click (the first beat's click is the same whatever tempo the tracker finds), at
    tempo 0.8 too (stretched: tests/test_engine_count_in_stretched.py measures it)."""
    track = 0.5 * tone_track()
    song, take = tmp_path / "song.wav", tmp_path / "take.wav"
    sf.write(str(song), track.T, SR, subtype="FLOAT")
    args = ["play", song, "--model", "passthrough", "--device", "cpu", "--loop", "0.5:0.8", "--count-in", "2"]
    result = run_stemdeck(*args, "--tempo", tempo, "--record", take, "--duration", "2", timeout_s=120)
    assert result.returncode == 0, result.stderr
    assert "count-in: 2 beat(s) before each restart of the loop" in result.stderr
    assert "note:" not in result.stderr
    recorded, _ = sf.read(str(take), dtype="float32", always_2d=True)
    click = click_buffer(CountInConfig(), SR)[ACCENT]
    if tempo != "1":  # the take holds the accented click, sample for sample
        starts = np.flatnonzero(recorded[1:, 0] == click[1])
        assert any(np.array_equal(recorded[i : i + click.size, 0], click) for i in starts)
        return
    heard = recorded[int(np.flatnonzero(np.abs(recorded[:, 0]) > 0)[0]) :]
    at = LOOP_OUT - LOOP_IN
    np.testing.assert_allclose(heard[: at - FADE], track[:, LOOP_IN : LOOP_OUT - FADE].T, atol=1e-6)
    np.testing.assert_allclose(heard[at : at + click.size, 0], click, atol=1e-6)
