"""Recording: the file holds exactly what the callback played (master after mute, solo, gain, the
crossfader and the loop), WAV bit for bit and FLAC to 24 bits; a writer that falls behind costs
counted frames, never a blocked callback; bad names are one line."""

import time

import numpy as np
import pytest
import soundfile as sf
from conftest import run_stemdeck
from test_engine_loop import SR, deck, looped_reference, play, tone_track

from stemdeck.engine.audio.record import WRITTEN
from stemdeck.engine.recorder import Recorder, RecorderConfig, record_format

BLOCK_SIZES = [1, 64, 65, 512, 8193]


def played_in_real_time(engine, frames: int) -> np.ndarray:
    """One block, then the time a device would take to ask for the next: the writer drains."""
    heard = play(engine, frames, [frames])
    deadline = time.monotonic() + 5.0
    while engine._record.read[0] < engine._record.counters[WRITTEN] and time.monotonic() < deadline:
        time.sleep(0.001)
    return heard


def mixed_deck(**config):
    engine = deck(tone_track(), **config)
    engine.set_gain("bass", -6.0)
    engine.set_mute("vocals")
    engine.set_dry_mix(0.25)
    engine.set_loop(0.5, 0.8)
    return engine


def test_a_wav_recording_equals_the_output_sample_for_sample(tmp_path):
    engine = mixed_deck()
    path = tmp_path / "take.wav"
    engine.start_recording(path)
    assert engine.status().recording == str(path)
    play(engine, 4410)  # paused: the listener hears silence, and so does the file
    engine.play()
    heard = np.concatenate([np.zeros((4410, 2), np.float32), play(engine, 2 * SR, BLOCK_SIZES)])
    take = engine.stop_recording()
    engine.stop()
    recorded, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == SR and take.frames == heard.shape[0] and take.dropped_frames == 0 and take.error is None
    assert np.abs(heard).max() > 0.1
    np.testing.assert_array_equal(recorded, heard)


def test_a_flac_recording_equals_the_output_to_24_bits(tmp_path):
    engine = mixed_deck()
    engine.play()
    engine.start_recording(tmp_path / "take.flac")
    heard = play(engine, SR // 2, BLOCK_SIZES)
    take = engine.stop_recording()
    engine.stop()
    recorded, _ = sf.read(str(take.path), dtype="float32", always_2d=True)
    assert recorded.shape == heard.shape
    assert np.abs(recorded - heard).max() <= 2.0**-23


def test_a_writer_that_falls_behind_drops_counted_blocks_and_never_blocks(tmp_path):
    engine = mixed_deck(record_buffer_s=0.01)  # 441 frames of ring
    engine.recorder = Recorder(engine._record, SR, RecorderConfig(poll_s=30.0))  # a writer asleep after its first look
    engine.play()
    engine.start_recording(tmp_path / "slow.wav")
    heard = play(engine, 5 * 256, [256])  # the first block fits, the other four find no room
    assert engine.status().record_dropped_frames == 4 * 256
    take = engine.stop_recording()
    engine.stop()
    assert (take.frames, take.dropped_frames) == (256, 1024)
    recorded, _ = sf.read(str(take.path), dtype="float32", always_2d=True)
    np.testing.assert_array_equal(recorded, heard[:256])


def test_takes_follow_each_other_in_the_same_ring(tmp_path):
    engine = mixed_deck(record_buffer_s=0.05)  # smaller than what each take holds: the ring wraps
    engine.play()
    takes = []
    for name in ["one.wav", "two.wav"]:
        engine.start_recording(tmp_path / name)
        heard = np.concatenate([played_in_real_time(engine, 2205) for _ in range(3)])
        take = engine.stop_recording()
        recorded, _ = sf.read(str(take.path), dtype="float32", always_2d=True)
        takes.append((recorded, heard))
        play(engine, 1000)  # not recorded
    engine.stop()
    for recorded, heard in takes:
        np.testing.assert_array_equal(recorded, heard)


def test_bad_record_names_are_one_line_and_nothing_is_overwritten(tmp_path):
    with pytest.raises(ValueError, match="records WAV or FLAC; name it .wav or .flac"):
        record_format(tmp_path / "take.mp3")
    existing = tmp_path / "keep.wav"
    existing.write_bytes(b"precious")
    engine = deck(tone_track(0.5))
    with pytest.raises(ValueError, match="exists; choose another name"):
        engine.start_recording(existing)
    with pytest.raises(ValueError, match="cannot record to"):
        engine.start_recording(tmp_path / "no-such-folder" / "take.wav")
    assert existing.read_bytes() == b"precious" and not engine.recorder.recording
    assert engine.stop_recording() is None
    engine.stop()


@pytest.mark.slow  # the real command end to end: 20-35 s on a loaded 2-core machine
def test_cli_play_loops_and_records_what_jack_plays(jack_server, tmp_path):
    """`stemdeck play --loop --record` on a real JACK server: the file is the loop from its in
    point, from its first sample (every take began with a JACK period of silence: the recording
    was armed before play), seam crossfade and all (stems and dry are the same sound with the
    pass-through model, so stems arriving mid-way change nothing)."""
    track = 0.5 * tone_track()
    song, take = tmp_path / "song.wav", tmp_path / "take.wav"
    sf.write(str(song), track.T, SR, subtype="FLOAT")
    result = run_stemdeck(
        "play",
        song,
        "--model",
        "passthrough",
        "--device",
        "cpu",
        "--loop",
        "0.51:0.9",
        "--record",
        take,
        "--duration",
        "2.5",
        timeout_s=120,
    )
    assert result.returncode == 0, result.stderr
    assert "looping 0.51 s to 0.9 s" in result.stderr
    assert "recorded" in result.stderr and "dropped" not in result.stderr
    recorded, rate = sf.read(str(take), dtype="float32", always_2d=True)
    assert abs(recorded[0, 0]) > 0.1  # the tone at 0.51 s, not silence
    heard = recorded
    assert rate == SR and heard.shape[0] > SR  # two passes and more (a loaded machine runs fewer cycles)
    loop_in, loop_out = int(round(0.51 * SR)), int(round(0.9 * SR))
    expected = looped_reference(track, loop_in, loop_out, int(round(0.005 * SR)), heard.shape[0], start=loop_in)
    np.testing.assert_allclose(heard, expected, atol=1e-6)


def test_live_input_records_what_it_plays(tmp_path):
    """Live: the take is the latency-aligned output, block for block (here the dry input while
    the first stems are on their way, then the stems)."""
    from stemdeck.engine.config import EngineConfig, WindowConfig
    from stemdeck.engine.engine import Engine
    from stemdeck.models.nets.passthrough import PassThrough

    engine = Engine(PassThrough(), EngineConfig(inference_budget_s=0.0, worker="thread", cache_stems=False))
    engine.prepare(WindowConfig(window_s=0.5, hop_s=0.1, lookahead_s=0.05, span_s=0.2), 256, calibrate_plan=False)
    engine.start_live_headless()
    engine.set_mute("vocals")
    engine.start_recording(tmp_path / "live.wav")
    signal = tone_track(1.0)
    heard = []
    for start in range(0, signal.shape[1] - 512, 512):
        block = np.ascontiguousarray(signal[:, start : start + 512].T)
        out = np.zeros((512, 2), np.float32)
        engine.process_live_block(block, out)
        heard.append(out)
    take = engine.stop_recording()
    engine.stop()
    heard = np.concatenate(heard)
    assert np.abs(heard).max() > 0.1
    np.testing.assert_array_equal(sf.read(str(take.path), dtype="float32", always_2d=True)[0], heard)
