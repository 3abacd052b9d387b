"""Loop A-B on the deck, driven block by block without a sound card: the output repeats exactly
the chosen span (seam sample-accurate), the seam's crossfade keeps a sine free of clicks, stems
and dry loop together, halve/double and loops by beats. The pass-through model's stems are known
fractions of the track, loaded as a separated track so no worker has to catch up."""

import numpy as np
import pytest

from stemdeck.engine.audio.transport import advance, read_source, read_span, readable_frames, seam_frames
from stemdeck.engine.config import EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.practice import parse_loop, parse_time_s
from stemdeck.models.nets.passthrough import DEFAULT_FRACTIONS, PassThrough

SR = 44100
BLOCK_SIZES = [1, 64, 65, 512, 8193]  # 8193 is above max_block_frames: the callback reads it in pieces
TONE_HZ = 437.0  # no whole number of periods in the loops below: a hard cut would step


def tone_track(seconds: float = 3.0, hz: float = TONE_HZ) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    mono = np.sin(2 * np.pi * hz * t).astype(np.float32)
    return np.stack([mono, 0.5 * mono])


def deck(track: np.ndarray, **config) -> Engine:
    engine = Engine(PassThrough(), EngineConfig(worker="thread", cache_stems=False, **config))
    stems = np.stack([f * track for f in DEFAULT_FRACTIONS]).astype(np.float32)
    engine.load_array(track, 0.0, separated=stems)
    return engine


def play(engine: Engine, frames: int, sizes=BLOCK_SIZES) -> np.ndarray:
    """``frames`` of the deck's output ``(frames, 2)``, in blocks of awkward sizes."""
    outs, done, i = [], 0, 0
    while done < frames:
        n = min(sizes[i % len(sizes)], frames - done)
        out = np.zeros((n, 2), np.float32)
        engine.process_deck_block(out)
        outs.append(out)
        done, i = done + n, i + 1
    return np.concatenate(outs)


def looped_reference(
    track: np.ndarray, loop_in: int, loop_out: int, fade: int, frames: int, start: int = 0
) -> np.ndarray:
    """Playing from ``start`` into the loop, in NumPy: ``(frames, C)``."""
    span = loop_out - loop_in
    positions = start + np.arange(frames)
    late = positions >= loop_out
    positions[late] = loop_in + (positions[late] - loop_in) % span
    out = track[:, positions].T.copy()
    seam = (positions >= loop_out - fade) & (positions < loop_out)
    weight = ((positions[seam] - (loop_out - fade) + 1) / (fade + 1))[:, None]
    out[seam] += weight * (track[:, positions[seam] - span].T - out[seam])
    return out


def test_a_loop_repeats_exactly_the_chosen_span_with_the_seam_where_it_belongs():
    track = tone_track()
    engine = deck(track)
    engine.set_loop(0.5, 0.8)
    engine.play()
    loop_in, loop_out, fade = int(0.5 * SR), int(0.8 * SR), int(round(0.005 * SR))
    assert (engine.loop.in_frames, engine.loop.out_frames) == (loop_in, loop_out)
    out = play(engine, 2 * SR)
    engine.stop()
    span = loop_out - loop_in
    np.testing.assert_allclose(out, looped_reference(track, loop_in, loop_out, fade, 2 * SR), atol=1e-6)
    # sample-accurate seam: the frame after the loop's last is the in point's, every pass
    for seam_at in range(loop_out, 2 * SR - span, span):
        np.testing.assert_allclose(
            out[seam_at : seam_at + span - fade], track[:, loop_in : loop_out - fade].T, atol=1e-6
        )
    np.testing.assert_allclose(out[loop_out:], out[loop_in : 2 * SR - span], atol=1e-6)  # period = the span
    assert engine.status().looping


def max_step(signal: np.ndarray) -> float:
    return float(np.abs(np.diff(signal[:, 0])).max())


@pytest.mark.parametrize("crossfade_ms", [5.0, 0.0])
def test_the_seam_does_not_click_on_a_sine(crossfade_ms):
    track = tone_track()
    engine = deck(track, loop_crossfade_ms=crossfade_ms)
    engine.set_loop(0.5, 0.7341)
    engine.play()
    out = play(engine, int(1.5 * SR))
    engine.stop()
    natural_step = 2 * np.pi * TONE_HZ / SR  # the largest step of a unit sine between two samples
    if crossfade_ms:  # stated level: within 10 % of the sine's own steepest step
        assert max_step(out) < 1.1 * natural_step
    else:  # the check can fail: a hard cut here steps by many times the sine's own step
        assert max_step(out) > 5 * natural_step


def test_stems_and_dry_loop_together_through_mute_and_crossfader():
    track = tone_track()
    engine = deck(track, ramp_ms=0.1)
    engine.set_mute("vocals")  # stems give 0.6 of the track
    engine.set_dry_mix(0.5)  # half that, half the dry track: 0.8 of the track
    engine.set_loop(0.25, 0.5)
    engine.play()
    out = play(engine, SR)
    engine.stop()
    expected = 0.8 * looped_reference(track, int(0.25 * SR), int(0.5 * SR), int(round(0.005 * SR)), SR)
    np.testing.assert_allclose(out[64:], expected[64:], atol=1e-5)  # after the 0.1 ms ramps


def test_loop_in_and_out_while_playing_then_halve_double_and_off():
    track = tone_track()
    engine = deck(track)
    engine.play()
    play(engine, 11025)
    engine.loop_in()
    play(engine, 13230)
    engine.loop_out()
    assert (engine.loop.in_frames, engine.loop.out_frames, engine.loop.active) == (11025, 24255, True)
    out = play(engine, 13230)
    np.testing.assert_allclose(out[:-300], track[:, 11025 : 24255 - 300].T, atol=1e-6)  # from the in point
    engine.halve_loop()
    assert engine.loop.out_frames == 11025 + 6615
    out = play(engine, 3 * 6615, sizes=[6615])
    np.testing.assert_allclose(out[6615:], out[:-6615], atol=1e-6)  # the half span repeats
    engine.double_loop()
    assert engine.loop.out_frames == 24255
    engine.toggle_loop()
    assert not engine.status().looping and engine.status().loop_in_s == pytest.approx(0.25)
    before = engine.status().position_s
    out = play(engine, 20000)
    assert engine.status().position_s == pytest.approx(before + 20000 / SR)  # plays on past the out point
    engine.stop()


def test_a_seek_out_of_the_loop_leaves_it_and_loop_on_jumps_back_in():
    track = tone_track()
    engine = deck(track)
    engine.set_loop(0.5, 1.0)
    engine.play()
    engine.seek(2.0)
    assert not engine.loop.active
    play(engine, 256)
    assert engine.status().position_s == pytest.approx(2.0 + 256 / SR)
    engine.toggle_loop()
    out = play(engine, 256)
    np.testing.assert_allclose(out, track[:, int(0.5 * SR) : int(0.5 * SR) + 256].T, atol=1e-6)
    engine.stop()


def test_loops_by_beats_need_a_tempo_and_snap_to_the_grid():
    engine = deck(tone_track(6.0))
    with pytest.raises(ValueError, match="tempo is not known"):
        engine.loop_beats(4)
    assert engine.bpm is None
    engine.set_beat_grid(120.0, first_beat_s=0.1)
    assert engine.bpm == 120.0
    engine.snap_to_beats = True
    engine.seek(0.37)  # the nearest beat is 0.1 + 0.5 = 0.6 s
    engine.play()
    play(engine, 1)
    engine.loop_in()
    assert engine.loop.in_frames == int(0.6 * SR)
    for beats, seconds in [(1, 0.5), (4, 2.0), (16, 6.0 - 0.6)]:  # 16 beats would pass the end: cut there
        engine.loop_beats(beats)
        assert engine.loop.out_frames - engine.loop.in_frames == int(round(seconds * SR))
    engine.clear_loop()
    engine.seek(5.9)  # the nearest beat, 6.1 s, is past the end (the trial's: "the loop's out point
    play(engine, 1)  # must come after its in point")
    with pytest.raises(ValueError) as refused:
        engine.loop_beats(4)
    assert str(refused.value) == (
        "no 4-beat loop at 5.90 s: the nearest beat is past the track's end (6.00 s); start it before the last beat"
    )
    with pytest.raises(ValueError, match="out of range"):
        engine.set_beat_grid(float("nan"))
    engine.stop()


def test_a_beat_loop_starts_at_the_playhead_once_the_in_point_is_left_behind():
    """An in point set at 0.6 s, the track played on to 4 s, "2 beats" chosen: the playhead was
    taken back 3.4 s to a loop at the in point. A loop playing keeps its in point when resized."""
    engine = deck(tone_track(6.0))
    engine.set_beat_grid(120.0, first_beat_s=0.1)
    engine.snap_to_beats = True
    engine.seek(0.6)
    engine.play()
    play(engine, 1)
    engine.loop_in()  # at 0.6 s, then left behind
    engine.seek(4.0)
    play(engine, 1)
    engine.loop_beats(2)
    assert (engine.loop.in_frames, engine.loop.out_frames) == (round(4.1 * SR), round(5.1 * SR))  # the nearest beat
    play(engine, 1)
    engine.loop_beats(1)  # playing: resized from its in point
    assert (engine.loop.in_frames, engine.loop.out_frames) == (round(4.1 * SR), round(4.6 * SR))
    engine.stop()


def test_bad_loops_are_one_clear_line():
    engine = deck(tone_track())
    with pytest.raises(ValueError, match="outside the track"):
        engine.set_loop(1.0, 9.0)
    with pytest.raises(ValueError, match="after its in point"):
        engine.set_loop(2.0, 1.0)
    with pytest.raises(ValueError, match="in point first"):
        engine.loop_out()
    with pytest.raises(ValueError, match="before halving"):
        engine.halve_loop()
    engine.stop()


def test_loop_times_parse_in_seconds_and_minutes():
    assert parse_loop("12.5:20") == (12.5, 20.0)
    assert parse_loop("1:02.5:1:10") == (62.5, 70.0)
    assert parse_time_s("2:03.25") == 123.25
    for text, message in [("1:30:2", "both in seconds"), ("5:3", "must come after"), ("x:3", "not a time")]:
        with pytest.raises(ValueError, match=message):
            parse_loop(text)


@pytest.mark.parametrize("loop_in,loop_out", [(0, 0), (100, 400), (0, 300), (350, 351)])
def test_advance_agrees_with_what_read_source_reads(loop_in, loop_out):
    """The position function STRETCH reuses gives the position reading ends at, and read_span
    bounds every frame read (frame k of the source holds k + 1; 0 is past the end)."""
    rng = np.random.default_rng(0)
    source = np.arange(1, 501, dtype=np.float32)[None]
    dest = np.zeros((1, 1000), np.float32)
    for position in rng.integers(0, 500, 40):
        position, frames = int(position), int(rng.integers(1, 1000))
        after = read_source(dest, 0, source, position, frames, loop_in, loop_out, 8)
        assert after == advance(position, frames, loop_in, loop_out, 500)
        readable = readable_frames(position, frames, loop_in, loop_out, 500)
        assert not dest[0, readable:frames].any()
        low, high = read_span(position, frames, loop_in, loop_out, 8, 500)
        read = dest[0, :readable]
        positions = read[read == np.round(read)] - 1  # blended seam frames aside
        assert positions.size == 0 or (low <= positions.min() and positions.max() < high)
    assert seam_frames(100, 400, 8) == 8 and seam_frames(0, 300, 8) == 0 and seam_frames(350, 351, 8) == 0


def test_halving_stops_at_the_shortest_loop():
    engine = deck(tone_track())
    engine.set_loop(0.5, 1.0)
    for _ in range(12):
        engine.halve_loop()
    assert engine.loop.length_frames == int(0.02 * SR)  # MIN_LOOP_S: shorter is a buzz, not a loop
    engine.double_loop()
    assert engine.loop.length_frames == 2 * int(0.02 * SR)
    engine.stop()


def test_the_callback_never_takes_a_loop_pair_being_written():
    """The control side writes the pair between two serial increments; a block that comes while
    the serial is odd (a write under way) keeps playing the loop it had."""
    from stemdeck.engine.audio.state import LOOP_IN, LOOP_OUT, LOOP_SERIAL

    track = tone_track()
    engine = deck(track)
    engine.set_loop(0.5, 0.6)
    engine.seek(0.5)
    engine.play()
    play(engine, 1)  # the callback has taken the loop
    transport = engine.shared.transport
    transport[LOOP_SERIAL] += 1  # a writer stopped half-way: a new in point, the old out point
    transport[LOOP_IN] = int(0.2 * SR)
    out = play(engine, int(0.3 * SR))
    loop_in, loop_out, fade = int(0.5 * SR), int(0.6 * SR), int(round(0.005 * SR))
    expected = looped_reference(track, loop_in, loop_out, fade, int(0.3 * SR), start=loop_in + 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)  # three passes of 0.5-0.6 s, not 0.2-0.6 s
    transport[LOOP_OUT] = int(0.3 * SR)
    transport[LOOP_SERIAL] += 1  # whole: the playhead, past the new loop, jumps into it
    out = play(engine, 64)
    np.testing.assert_allclose(out, track[:, int(0.2 * SR) : int(0.2 * SR) + 64].T, atol=1e-6)
    engine.stop()
