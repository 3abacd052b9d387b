"""The count-in while the deck is stretched (tempo or key off unity), driven block by block without
a sound card and measured on the output: at the loop's out point the music stops, the clicks
come one beat *as heard* apart (the track's beat over the tempo), and the loop restarts from its
in point the moment they end, sounding exactly as its first stretched pass did (the stretcher is
restarted at the in point, so nothing of the out point smears into it), stems and dry together.

One engine (and so one stretch process) serves the module: each test loads the track afresh.
The deck starts paused at the in point, so the stage's first epoch starts exactly there, as every
epoch after a count-in does: the first pass is the reference the later ones must equal."""

import os
import signal
import time

import numpy as np
import pytest
from test_engine_stretch import BLOCK, SR, _lag_and_correlation, click_track, deck, onset_times_s, play

from stemdeck.engine.audio.click import ACCENT, BEAT, click_buffer
from stemdeck.engine.audio.state import playhead_frames
from stemdeck.engine.audio.stretched import EPOCH, FADE_FRAMES, WRITTEN
from stemdeck.engine.config import CountInConfig
from stemdeck.models.nets.passthrough import DEFAULT_FRACTIONS

BPM, BEAT_FRAMES = 180.0, 14700  # the track's beat
LOOP_IN, LOOP_OUT = int(0.5 * SR), int(1.0 * SR)  # one burst a pass, 0.1 s after the in point
SPAN = LOOP_OUT - LOOP_IN
CLICK = click_buffer(CountInConfig(), SR)
TONE_HZ, TONE_LEVEL = 220.0, 0.05  # under the bursts, so the loop never falls silent


def practice_track() -> np.ndarray:
    t = np.arange(int(1.2 * SR)) / SR
    tone = (TONE_LEVEL * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    return click_track(1.2, period_s=0.5, first_s=0.6) + tone


@pytest.fixture(scope="module")
def engine():
    engine = deck(practice_track())
    yield engine
    engine.stop()


def count_in_at(engine, tempo: float, key: float, beats: int = 2) -> None:
    """The track loaded afresh, looped 0.5-1.0 s with ``beats`` of count-in, stretched, and
    started at the in point once the stage is ready there."""
    engine.pause()
    engine.load_array(practice_track(), 0.0, separated=stems_of(practice_track()))
    engine.set_beat_grid(BPM)
    engine.set_count_in(beats)
    engine.set_loop(0.5, 1.0)
    engine.set_key(key)
    engine.set_tempo(tempo)
    engine.seek(0.5)
    engine.process_deck_block(np.zeros((BLOCK, 2), np.float32))  # paused: applies the seek
    assert engine.practice.stage.wait_ahead(engine.practice.config.fill_frames), engine.practice.error
    engine.play()


def stems_of(track: np.ndarray) -> np.ndarray:
    return np.stack([f * track for f in DEFAULT_FRACTIONS]).astype(np.float32)


def click_starts(out: np.ndarray, row: int) -> list[int]:
    """Where the click ``row`` starts on channel 0, found sample for sample."""
    click = CLICK[row]
    candidates = np.flatnonzero(out[0, 1:] == click[1])
    return [int(i) for i in candidates if np.array_equal(out[0, i : i + click.size], click)]


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def heard_frames(tempo: float, frames: int) -> float:
    return frames / tempo


@pytest.mark.parametrize("tempo,key", [(0.8, 0.0), (1.0, -2.0), (0.8, -2.0)])
def test_clicks_a_beat_over_the_tempo_apart_then_the_loop_restarts_as_it_first_played(engine, tempo, key):
    count_in_at(engine, tempo, key)
    beat = round(BEAT_FRAMES / tempo)
    loop_frames = int(np.ceil(heard_frames(tempo, SPAN)))
    out = play(engine, 2 * loop_frames + 2 * beat + 1000)
    accents, beats = click_starts(out, ACCENT), click_starts(out, BEAT)
    print(f"tempo {tempo} key {key}: out point at {accents[0]} (loop heard {heard_frames(tempo, SPAN):.1f}),")
    print(f"  clicks {beats[0] - accents[0]} apart (beat / tempo {BEAT_FRAMES / tempo:.1f}), restart at")
    print(f"  {accents[0] + 2 * beat}, next out point {accents[1]} (expected {accents[0] + 2 * beat + loop_frames})")
    # the loop stops at its out point as heard, within the frame the ring maps each output frame to
    assert abs(accents[0] - heard_frames(tempo, SPAN)) <= 1
    assert beats == [accents[0] + beat]  # one beat as heard, to the frame (within 1 % of beat / tempo)
    assert abs(beat - BEAT_FRAMES / tempo) / (BEAT_FRAMES / tempo) < 0.01
    assert not out[:, accents[0] + CLICK.shape[1] : beats[0]].any()  # nothing but the clicks
    restart = accents[0] + 2 * beat
    assert accents[1] == restart + accents[0]  # the next pass as long as the first, to the frame
    first, again = out[:, : accents[0]], out[:, restart : accents[1]]
    # the restart is the in point, stretched as the first pass was, sample for sample (the first
    # pass's first FADE_FRAMES crossfade from the unstretched source, where the deck joined it)
    np.testing.assert_array_equal(again[:, FADE_FRAMES:], first[:, FADE_FRAMES:])
    assert np.abs(again[:, :FADE_FRAMES]).max() > 0.5 * TONE_LEVEL  # heard at once, no silence held
    # and that pass sounds at the tempo heard: the burst 0.1 s / tempo after the in point, within
    # the stretcher's smear of a transient (2 ms)
    burst_at = onset_times_s(practice_track()[:, LOOP_IN:LOOP_OUT])[0]
    assert onset_times_s(again)[0] == pytest.approx(burst_at / tempo, abs=0.002)
    # the music stops without a step: faded out like the unstretched count-in's seam
    steepest = 2 * np.pi * TONE_HZ * 2 ** (max(key, 0) / 12) * TONE_LEVEL / SR
    assert np.abs(np.diff(out[0, accents[0] - SR // 20 : accents[0] + 1])).max() < 1.2 * steepest
    assert np.abs(out[:, accents[0] - 8 : accents[0]]).max() < 0.1 * TONE_LEVEL
    assert engine.practice.underflows == 0


def test_after_the_count_in_stems_and_dry_restart_together_from_the_in_point(engine):
    count_in_at(engine, 0.8, -2.0)
    beat, loop_frames = round(BEAT_FRAMES / 0.8), int(np.ceil(heard_frames(0.8, SPAN)))
    play(engine, loop_frames + 2 * beat)
    assert playhead_frames(engine.shared) == LOOP_IN  # the playhead waited at the in point
    channels = 2 * (1 + len(DEFAULT_FRACTIONS))
    out = play(engine, 4096, channels=channels)
    stems = [out[2 * (s + 1) : 2 * (s + 2)] / f for s, f in enumerate(DEFAULT_FRACTIONS)]
    for stem in stems[1:]:  # heard: every stem with the same lag and waveform
        assert _lag_and_correlation(stem, stems[0]) == (0, pytest.approx(1.0, abs=1e-3))
    mix = sum(f * stem for f, stem in zip(DEFAULT_FRACTIONS, stems, strict=True))
    np.testing.assert_allclose(out[:2], mix, atol=1e-5)
    engine.practice.stage.stop()  # the ring holds the epoch begun at the in point, from its frame 0
    rings = engine.practice.buffers
    written = int(rings.state[WRITTEN])
    assert rings.source[0] == LOOP_IN and written < rings.dry.shape[-1]
    dry = rings.dry[:, :written]
    for s in range(len(DEFAULT_FRACTIONS)):
        assert _lag_and_correlation(rings.stems[s][:, :written], dry) == (0, pytest.approx(1.0, abs=1e-3)), s


def test_tempo_and_key_changed_during_a_count_in_apply_from_the_restart(engine):
    count_in_at(engine, 0.8, 0.0, beats=4)
    beat = round(BEAT_FRAMES / 0.8)
    loop_frames = int(np.ceil(heard_frames(0.8, SPAN)))
    start = play(engine, loop_frames + beat + 1000)  # into the count-in's second beat
    for change in (lambda: engine.set_tempo(0.6), lambda: engine.set_key(-3)):
        epoch = int(engine.practice.buffers.state[EPOCH])
        change()  # nothing of the epoch at the in point heard yet: the stage starts it again
        assert wait_for(lambda e=epoch: int(engine.practice.buffers.state[EPOCH]) > e + 1)  # (in milliseconds)
    rest = play(engine, 3 * beat + int(np.ceil(heard_frames(0.6, SPAN))) + 1000)
    out = np.concatenate([start, rest], axis=1)
    accents, beats = click_starts(out, ACCENT), click_starts(out, BEAT)
    assert beats == [accents[0] + k * beat for k in (1, 2, 3)]  # this count-in keeps its beat
    restart = accents[0] + 4 * beat
    assert abs(accents[1] - restart - heard_frames(0.6, SPAN)) <= 1  # the next pass at the new tempo
    assert np.abs(out[:, restart : restart + FADE_FRAMES]).max() > 0.5 * TONE_LEVEL
    new_beat = round(BEAT_FRAMES / 0.6)
    tail = play(engine, new_beat + 1000)  # the next count-in at the new tempo's beat
    assert click_starts(np.concatenate([out, tail], axis=1), BEAT)[-1] == accents[1] + new_beat
    assert engine.practice.underflows == 0


def test_back_to_tempo_1_during_a_count_in_it_ends_unstretched_and_the_loop_plays_sample_exact(engine):
    count_in_at(engine, 0.8, -2.0)
    beat = round(BEAT_FRAMES / 0.8)
    loop_frames = int(np.ceil(heard_frames(0.8, SPAN)))
    play(engine, loop_frames + 1000)  # into the count-in
    engine.set_tempo(1.0)
    engine.set_key(0)
    out = play(engine, 2 * beat - 1000 + 4096)
    restart = 2 * beat - 1000
    assert click_starts(out, BEAT) == [beat - 1000]
    np.testing.assert_allclose(out[:, restart:], practice_track()[:, LOOP_IN : LOOP_IN + 4096], atol=1e-6)


def test_reaching_the_out_point_before_joining_the_stage_counts_in_at_the_tempo_heard(engine):
    # a seek while playing plays the source unstretched for the stage's lead (60 ms): a loop
    # shorter than that reaches its out point before the deck joins the stage's output
    count_in_at(engine, 0.8, 0.0)
    engine.set_loop(0.5, 0.52)
    engine.seek(0.5)
    beat = round(BEAT_FRAMES / 0.8)
    out = play(engine, 2 * beat + 4096)
    accents, beats = click_starts(out, ACCENT), click_starts(out, BEAT)
    assert accents[0] <= BLOCK + int(0.02 * SR) and beats == [accents[0] + beat]
    restart = accents[0] + 2 * beat
    assert np.abs(out[:, restart : restart + 256]).max() > 0.5 * TONE_LEVEL  # the stage's epoch at the in point
    assert abs(accents[1] - restart - heard_frames(0.8, int(0.02 * SR))) <= 1  # then the loop, stretched


def test_a_stage_that_sleeps_through_the_count_in_still_restarts_the_loop_at_the_in_point(engine):
    # the callback plays the clicks without the stage; one that does not run meanwhile (stopped
    # here; descheduled on a loaded machine) must not take the count-in's length for a deck
    # that never joined its epoch at the in point and start another further on
    count_in_at(engine, 0.8, -2.0, beats=4)
    beat, loop_frames = round(BEAT_FRAMES / 0.8), int(np.ceil(heard_frames(0.8, SPAN)))
    first = play(engine, loop_frames + beat)  # the stage has its epoch at the in point ready
    pid = engine.practice.stage.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        clicks = np.zeros((3 * beat, 2), np.float32)
        for start in range(0, clicks.shape[0], BLOCK):
            engine.process_deck_block(clicks[start : start + BLOCK])
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(0.1)  # the stage runs again before the deck reaches the in point
    again = play(engine, loop_frames)
    assert playhead_frames(engine.shared) > LOOP_IN
    np.testing.assert_array_equal(again[:, FADE_FRAMES:], first[:, FADE_FRAMES:loop_frames])
    assert engine.practice.underflows == 0


def test_a_tempo_change_during_an_unstretched_count_in_stretches_the_loop_from_its_in_point(engine):
    count_in_at(engine, 1.0, 0.0)
    play(engine, SPAN + 1000)  # unstretched, into the count-in
    engine.set_tempo(0.8)  # the stage starts at the in point, where the playhead waits
    out = play(engine, 2 * BEAT_FRAMES - 1000 + int(np.ceil(heard_frames(0.8, SPAN))) + 1000)
    restart = 2 * BEAT_FRAMES - 1000
    assert click_starts(out, BEAT) == [BEAT_FRAMES - 1000]  # this count-in keeps the beat it began with
    assert abs(click_starts(out, ACCENT)[0] - restart - heard_frames(0.8, SPAN)) <= 1  # the next pass stretched
    assert np.abs(out[:, restart : restart + FADE_FRAMES]).max() > 0.5 * TONE_LEVEL
    assert engine.practice.underflows == 0


def test_a_loop_shorter_than_a_block_counts_in_before_every_pass(engine):
    count_in_at(engine, 0.8, -2.0)
    engine.set_loop(0.5, 0.52)  # 882 frames, 1103 as heard: several seams in one 4096-frame block
    blocks = []
    for _ in range(30):
        assert engine.practice.stage.wait_ahead(engine.practice.config.fill_frames)
        blocks.append(np.zeros((4096, 2), np.float32))
        engine.process_deck_block(blocks[-1])
    accents = click_starts(np.concatenate(blocks).T, ACCENT)
    beat, loop_frames = round(BEAT_FRAMES / 0.8), int(np.ceil(heard_frames(0.8, int(0.02 * SR))))
    assert len(accents) == 4 and set(np.diff(accents).tolist()) == {2 * beat + loop_frames}
