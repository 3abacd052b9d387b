"""The stretch stage in a process of its own: Rubber Band never runs in the engine's process, the
stage follows the stems as the separation worker writes them (through shared memory), and a
stage process that dies leaves the deck playing unstretched, with one line, restarted while it
may be, given up on when it dies too often."""

import dataclasses
import os
import signal

import numpy as np
import pytest
from conftest import wait_until
from test_engine_stretch import SR, deck, frequency_hz, play, tone_track

from stemdeck.engine.config import EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.models.nets.passthrough import DEFAULT_FRACTIONS, PassThrough


def _kill_stage(engine: Engine) -> int:
    pid = engine.practice.stage.pid
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: engine.practice.notice is not None or engine.practice.error is not None, timeout_s=30.0)
    return pid


def _unstretched_blocks(engine: Engine, frames: int) -> np.ndarray:
    """``frames`` of output driven at once, without waiting on the stage: ``(2, frames)``."""
    out = np.zeros((frames, 2), np.float32)
    for start in range(0, frames, 256):
        engine.process_deck_block(out[start : start + 256])
    return out.T


def test_the_stage_is_a_process_of_its_own_started_by_the_first_change_and_kept_for_the_next_track():
    engine = deck(tone_track(1.0))
    try:
        assert engine.practice.stage.pid is None  # at tempo 1 and key 0 nothing runs
        engine.set_key(-2)
        pid = engine.practice.stage.pid
        assert pid is not None and pid != os.getpid() and engine.practice.stage.alive
        engine.play()
        play(engine, SR // 4)
        engine.load_array(tone_track(1.0, 330.0), 0.0)
        engine.play()
        out = play(engine, SR // 2)
        assert engine.practice.stage.pid == pid  # one process per deck, across tracks
        assert frequency_hz(out[:, SR // 8 :]) == pytest.approx(330.0 * 2 ** (-2 / 12), rel=0.01)
    finally:
        engine.stop()
    assert not engine.practice.stage.alive


def test_the_stage_follows_the_stems_as_the_separation_worker_writes_them():
    # no stems at load: the worker (a thread here) separates into the shared stems array, which
    # the stage process reads; once they are there the stretched stem outputs carry them
    track = tone_track(6.0)
    engine = Engine(PassThrough(), EngineConfig(worker="thread", cache_stems=False, beat_tracking=False))
    engine.prepare_plan(engine.deck_plan)
    try:
        engine.load_array(track, 0.0)
        engine.set_tempo(0.8)
        engine.play()
        assert engine.wait_separated(int(2.0 * SR))
        out = play(engine, SR, channels=2 * (1 + len(DEFAULT_FRACTIONS)))
        assert engine.status().first_stems_s is not None
        master = out[0, SR // 2 :]
        for s, fraction in enumerate(DEFAULT_FRACTIONS):
            stem = out[2 * (s + 1), SR // 2 :]
            assert float(stem @ master / (master @ master)) == pytest.approx(fraction, rel=0.02), s
    finally:
        engine.stop()


def test_a_killed_stage_process_leaves_the_deck_unstretched_with_one_line_until_its_restart():
    engine = deck(tone_track(4.0))
    try:
        engine.set_key(-2)
        engine.play()
        before = play(engine, SR // 2)
        dead = _kill_stage(engine)
        notice = engine.status().worker_notice
        assert notice == (
            "the time-stretch process failed (it exited with code -9); playing unstretched while it restarts (1 of 3)"
        )
        heard = _unstretched_blocks(engine, SR // 4)  # not silence: the source at its own pitch
        assert frequency_hz(heard[:, SR // 16 :]) == pytest.approx(440.0, rel=0.01)
        assert np.abs(heard[:, SR // 16 :]).max() > 0.45
        engine.practice.stage.ensure_started()  # the new process, warmed up (seconds on a busy machine)
        after = play(engine, SR // 2)
        assert engine.practice.stage.pid not in (None, dead)
        for out in (before, after):
            assert frequency_hz(out[:, SR // 4 :]) == pytest.approx(440.0 * 2 ** (-2 / 12), rel=0.01)
        assert engine.practice.error is None
    finally:
        engine.stop()


def test_a_stage_process_that_dies_too_often_is_given_up_and_the_deck_plays_on_unstretched():
    engine = deck(tone_track(2.0))
    try:
        engine.set_tempo(0.8)
        stage = engine.practice.stage
        stage.config = dataclasses.replace(stage.config, max_restarts=0)
        engine.play()
        play(engine, SR // 4)
        _kill_stage(engine)
        error = engine.practice.error
        assert error == (
            "the time-stretch process failed too often (1 time within 60 s; last: it exited with code -9); "
            "the deck plays on unstretched; restart stemdeck to stretch again"
        )
        assert engine.status().worker_notice == error and "\n" not in error
        engine.set_key(-3)  # no new process, no wait: the deck stays unstretched
        assert stage.pid is None and not stage.wait_ahead(2048, timeout_s=0.1)
        heard = _unstretched_blocks(engine, SR // 2)
        assert frequency_hz(heard[:, SR // 8 :]) == pytest.approx(440.0, rel=0.01)
        assert engine.status().position_s > 0.25 + 0.4  # at its own tempo
    finally:
        engine.stop()
