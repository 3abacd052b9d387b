"""Hot cues 1-8 and the deck's per-track memory: pads set and recall on the output, the memory
survives a restart in another process and finds the track by its content (renamed, re-encoded
losslessly, played at another rate), and a damaged or locked database never stops playback."""

import logging
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from test_engine_loop import SR, deck, play, tone_track

from stemdeck.engine.config import EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.memory import TrackMemory, TrackRecord, audio_key, memory_path
from stemdeck.models.nets.passthrough import PassThrough


def test_pads_set_and_recall_hot_cues_on_the_output():
    track = tone_track()
    engine = deck(track)
    engine.seek(0.5)
    engine.hot_cue(1)  # empty: set here
    engine.seek(1.25)
    engine.set_hot_cue(3)
    assert engine.hot_cues[:4] == (0.5, None, 1.25, None)
    engine.play()
    play(engine, 3000)
    engine.hot_cue(1)  # set: jump there, playing on
    out = play(engine, 512)
    np.testing.assert_allclose(out, track[:, int(0.5 * SR) : int(0.5 * SR) + 512].T, atol=1e-6)
    engine.recall_hot_cue(3)
    out = play(engine, 512)
    np.testing.assert_allclose(out, track[:, int(1.25 * SR) : int(1.25 * SR) + 512].T, atol=1e-6)
    engine.clear_hot_cue(3)
    engine.recall_hot_cue(3)  # unset: nothing moves
    assert engine.status().position_s == pytest.approx(1.25 + 512 / SR)
    for bad in (0, 9, "2"):
        with pytest.raises(ValueError, match="hot cues 1 to 8"):
            engine.hot_cue(bad)
    engine.stop()


FIRST_SESSION = """
import sys

from stemdeck.engine.config import EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.models.nets.passthrough import PassThrough


def main():
    engine = Engine(PassThrough(), EngineConfig(worker="thread", cache_stems=False))
    engine.load(sys.argv[1])
    for number, seconds in [(1, 0.25), (3, 1.5), (8, 2.75)]:
        engine.seek(seconds)
        engine.set_hot_cue(number)
    engine.set_loop(1.0, 1.5, active=False)
    engine.seek(1.7)
    engine.stop()


if __name__ == "__main__":  # helpers may start processes (spawn), which import this file again
    main()
"""


def test_hot_cues_loop_and_position_survive_a_restart_and_follow_the_content(tmp_path):
    song = tmp_path / "song.wav"
    sf.write(str(song), tone_track().T, SR, subtype="PCM_16")
    script = tmp_path / "first_session.py"
    script.write_text(FIRST_SESSION)
    done = subprocess.run([sys.executable, str(script), str(song)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert memory_path().is_file()
    same_samples = tmp_path / "renamed.flac"  # another name, another container, the same samples
    sf.write(str(same_samples), sf.read(str(song), dtype="int16")[0], SR, subtype="PCM_16")
    for path, rate in [(song, SR), (same_samples, SR), (song, 48000)]:
        engine = Engine(PassThrough(), EngineConfig(worker="thread", cache_stems=False, samplerate=rate))
        engine.load(path)
        assert engine.hot_cues == pytest.approx((0.25, None, 1.5, None, None, None, None, 2.75), abs=1.0 / rate)
        assert engine.status().loop_in_s == pytest.approx(1.0, abs=1.0 / rate)
        assert engine.status().loop_out_s == pytest.approx(1.5, abs=1.0 / rate)
        assert not engine.status().looping  # remembered, not playing until loop on
        assert engine.resume_s == pytest.approx(1.7, abs=1.0 / rate)
        engine.seek(engine.resume_s)  # left where it was found: the next session finds it there too
        engine.stop()
    other = tmp_path / "other.wav"
    sf.write(str(other), 0.5 * tone_track().T, SR, subtype="PCM_16")
    engine = Engine(PassThrough(), EngineConfig(worker="thread", cache_stems=False))
    engine.load(other)
    assert engine.hot_cues == (None,) * 8 and engine.resume_s is None
    engine.stop()


def test_a_damaged_database_is_said_once_and_the_deck_plays_on(caplog):
    path = memory_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    track = tone_track(1.0)
    with caplog.at_level(logging.WARNING, logger="stemdeck.memory"):
        engine = deck(track)
        engine.seek(0.5)
        engine.set_hot_cue(2)
        engine.play()
        engine.recall_hot_cue(2)
        out = play(engine, 256)
        engine.stop()
    np.testing.assert_allclose(out, track[:, SR // 2 : SR // 2 + 256].T, atol=1e-6)
    assert engine.hot_cues[1] == 0.5
    warnings = [r for r in caplog.records if "track memory" in r.getMessage()]
    assert len(warnings) == 1 and "playing on without it" in warnings[0].getMessage()


def test_a_locked_database_costs_no_wait_and_is_used_again_once_free(caplog):
    track = tone_track(1.0)
    engine = deck(track)
    holder = sqlite3.connect(str(memory_path()))
    holder.execute("BEGIN EXCLUSIVE")  # another program writing, for as long as it likes
    with caplog.at_level(logging.WARNING, logger="stemdeck.memory"):
        started = time.perf_counter()
        for number in (1, 2, 3):
            engine.seek(0.1 * number)
            engine.set_hot_cue(number)
        took_s = time.perf_counter() - started
    assert took_s < 1.0  # three saves given up on after the short lock timeout each
    assert len([r for r in caplog.records if "track memory" in r.getMessage()]) == 1
    holder.rollback()
    holder.close()
    engine.set_hot_cue(4)  # free again: saved (the playhead is still at 0.3 s)
    engine.stop()
    record = TrackMemory().load(audio_key(track, SR))
    assert record is not None and record.cues[:4] == pytest.approx((0.1, 0.2, 0.3, 0.3), abs=1e-4)


def test_rows_that_are_not_times_are_ignored():
    memory = TrackMemory()
    memory.save("k", TrackRecord())
    connection = sqlite3.connect(str(memory_path()))
    with connection:
        connection.execute(
            "UPDATE tracks SET cues = ?, loop_in = ?, last_position = ? WHERE key = 'k'",
            ('[1.5, "x", -2, null, 1e999, true, 3, 4, 5, 6]', "soon", float("nan")),
        )
    connection.close()
    record = memory.load("k")
    assert record.cues == (1.5, None, None, None, None, None, 3.0, 4.0)
    assert record.loop_in_s is None and record.last_position_s is None


def test_live_input_refuses_hot_cues_loops_and_seeks_and_plays_on_aligned():
    """A hot cue pressed in live mode (F1, a MIDI pad) sought the live input's rings: the output
    went silent, then replayed old input every few seconds. Live input has no track: the pads,
    loops and seeks are refused in one line and the output stays the input, delayed."""
    from test_engine_backends import BLOCK, thread_engine, tone

    engine = thread_engine()
    engine.load_array(tone(2.0), 0.0)
    engine.seek(0.5)
    engine.set_hot_cue(1)  # the deck's track had a cue
    engine.start_live_headless()
    for press, message in [
        (lambda: engine.hot_cue(1), "^live input has no track for hot cues; they are the file deck's$"),
        (lambda: engine.recall_hot_cue(1), "no track for hot cues"),
        (lambda: engine.seek(0.0), "no track for seeking"),
        (engine.loop_in, "no track for loops"),
        (engine.toggle_loop, "no track for loops"),
    ]:
        with pytest.raises(ValueError, match=message):
            press()
    signal, out = tone(1.0), np.zeros((BLOCK, 2), np.float32)
    starts = range(0, SR - BLOCK, BLOCK)
    for start in starts:
        assert engine.wait_separated(start + BLOCK - engine.latency_frames, timeout_s=30)
        engine.process_live_block(np.ascontiguousarray(signal[:, start : start + BLOCK].T), out)
    latency = engine.latency_frames
    assert np.allclose(out[:, 0], signal[0, start - latency : start - latency + BLOCK], atol=1e-5)
    engine.stop()


def test_a_track_left_at_its_end_opens_at_its_cue_not_parked_there():
    """Played to its end last time: Play would have nothing left to play."""
    track = tone_track(3.0)
    key = audio_key(track, SR)
    for left_s, resumed in [(2.999, None), (2.6, None), (2.4, 2.4)]:  # 0.5 s from the end or closer: not resumed
        memory = TrackMemory()
        memory.save(key, TrackRecord((None,) * 8, None, None, left_s))
        engine = Engine(PassThrough(), EngineConfig(worker="thread", cache_stems=False))
        engine.memory = memory
        engine.load_array(track, 0.0, key=key)
        assert engine.resume_s == (None if resumed is None else pytest.approx(resumed))
        engine.stop()
