"""Issue 18, items 2-3: the worker as a type, and ownership enforced.

One ``WorkerBackend`` per place separation runs, failures carried as data, the callback the
only writer of its slots (resets go through the transport serial), a status that only reads,
the first-stems time measured by the callback, kernels handed one structure and compiled once,
and process-wide settings left to the entry point.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import torch

from stemdeck.engine.audio.callbacks import deck_block, live_block
from stemdeck.engine.audio.state import PLAYHEAD, POSITION
from stemdeck.engine.backends import ProcessBackend, ThreadBackend, WorkerBackend, make_backend
from stemdeck.engine.config import EngineConfig, WindowConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.runtime import GIL_SWITCH_INTERVAL_S, configure_process
from stemdeck.engine.session import Failure, WorkerError
from stemdeck.models.nets.passthrough import PassThrough

SR = 44100
BLOCK = 256
FAST_PLAN = WindowConfig(window_s=0.5, hop_s=0.1, lookahead_s=0.05, span_s=0.2)


def tone(seconds: float) -> np.ndarray:
    wave = 0.5 * np.sin(2 * np.pi * 441 * np.arange(int(seconds * SR)) / SR).astype(np.float32)
    return np.stack([wave, wave])


def thread_engine(model=None, **config) -> Engine:
    engine = Engine(
        model or PassThrough(),
        EngineConfig(precision="fp32", inference_budget_s=0.0, worker="thread", cache_stems=False, **config),
    )
    engine.prepare(FAST_PLAN, block_frames=BLOCK, calibrate_plan=False)
    return engine


class HalfRealTime(PassThrough):
    """Each 0.1-s hop takes 0.05 s: the first stems come some blocks after play (module level:
    the separation process imports it)."""

    def forward(self, mix):
        if mix.abs().max() > 0:
            time.sleep(0.05)
        return super().forward(mix)


class TooSlowToCalibrate(PassThrough):
    """A forward of 0.6 s: no hop of a 0.5-s window fits, so calibration refuses the window
    (the model's segment is that window, so no longer one is tried)."""

    def __init__(self):
        super().__init__(segment=0.5)

    def forward(self, mix):
        time.sleep(0.6)
        return super().forward(mix)


# -- item 2: the worker as a type ---------------------------------------------------------------------


def test_the_worker_setting_picks_a_backend_once_and_a_bad_one_is_one_line():
    thread = make_backend(PassThrough(), EngineConfig(worker="thread"))
    assert isinstance(thread, ThreadBackend)
    protocol = [name for name in vars(WorkerBackend) if not name.startswith("_")]
    assert set(protocol) >= {"calibrate", "allocate", "start", "stop_session", "failure", "notice", "abort", "close"}
    assert all(callable(getattr(thread, name)) for name in protocol if name != "shared")
    thread.close()
    with pytest.raises(ValueError, match=r"^worker must be 'process' or 'thread', got 'gpu'$"):
        Engine(PassThrough(), EngineConfig(worker="gpu"))


def test_failures_are_data_and_the_error_line_comes_from_their_fields():
    failure = Failure.of(RuntimeError("out of memory"))
    assert (failure.kind, failure.message, str(failure)) == (
        "RuntimeError",
        "out of memory",
        "RuntimeError: out of memory",
    )
    refused = WorkerError.refused(Failure("ValueError", "no hop fits; use a faster preset"))
    assert (str(refused), refused.kind) == ("no hop fits; use a faster preset", "ValueError")
    other = WorkerError.refused(Failure("KeyError", "'x'"))
    assert (str(other), other.kind) == ("KeyError: 'x'", "KeyError")


def test_a_thread_session_failure_reaches_status_as_one_line():
    class Broken(PassThrough):
        def forward(self, mix):
            if mix.abs().max() > 0:  # the warm-up, on silence, passes
                raise RuntimeError("cannot run here")
            return super().forward(mix)

    engine = thread_engine(Broken())
    engine.load_array(tone(1.0))
    deadline = time.monotonic() + 30
    while engine.status().worker_error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    status = engine.status()
    engine.stop()
    assert status.worker_error == "RuntimeError: cannot run here"


def test_the_separation_process_refuses_a_calibration_structurally_and_abort_ends_it():
    engine = Engine(TooSlowToCalibrate(), EngineConfig(precision="fp32", worker="process", cache_stems=False))
    try:
        assert isinstance(engine.backend, ProcessBackend)
        with pytest.raises(WorkerError) as refused:
            engine.prepare(FAST_PLAN, block_frames=BLOCK)
        assert refused.value.kind == "ValueError"  # as the process raised it, not parsed from a line
        assert str(refused.value).startswith("this machine needs ")
        assert "no hop fits" in str(refused.value) and "\n" not in str(refused.value)
        process = engine.backend.process
        assert process.alive  # a refused command leaves the process serving
        engine.abort()
        assert not process.alive and process.exitcode == -9
    finally:
        engine.stop()


# -- item 3: ownership ------------------------------------------------------------------------------------


def test_loading_writes_no_callback_slot_the_callback_applies_the_cue():
    engine = thread_engine()
    engine.load_array(tone(2.0))
    out = np.zeros((BLOCK, 2), np.float32)
    engine.play()
    for _ in range(40):
        engine.process_deck_block(out)
    assert engine.mode == "deck"
    assert int(engine.shared.audio[PLAYHEAD]) == 40 * BLOCK
    before = engine.shared.audio.copy()
    engine.load_array(tone(2.0), cue_s=1.0)  # a new track, cued at 1 s
    assert np.array_equal(engine.shared.audio, before)  # the control side wrote no callback slot
    status = engine.status()
    assert status.position_s == 1.0 and status.fallback and not status.playing  # the cue, before any block
    engine.process_deck_block(out)  # paused: the cue lands, the playhead stays
    assert int(engine.shared.audio[PLAYHEAD]) == SR
    assert engine.status().position_s == 1.0
    engine.stop()


def test_a_new_live_session_restarts_the_rings_through_the_callback():
    engine = thread_engine()
    engine.start_live_headless()
    out, block = np.zeros((BLOCK, 2), np.float32), np.zeros((BLOCK, 2), np.float32)
    for _ in range(20):
        engine.process_live_block(block, out)
    assert engine.mode == "live" and int(engine.shared.audio[POSITION]) == 20 * BLOCK
    before = engine.shared.audio.copy()
    engine.start_live_headless()
    assert np.array_equal(engine.shared.audio, before)
    assert engine.status().position_s == 20 * BLOCK / SR  # until the callback runs, it is where it was
    signal, starts = tone(1.0), range(0, SR - BLOCK, BLOCK)
    for start in starts:  # the new session separates from its own frame 0
        assert engine.wait_separated(start + BLOCK - engine.latency_frames, timeout_s=30)
        engine.process_live_block(np.ascontiguousarray(signal[:, start : start + BLOCK].T), out)
    engine.stop()
    assert int(engine.shared.audio[POSITION]) == len(starts) * BLOCK
    latency = engine.latency_frames
    assert np.allclose(out[:, 0], signal[0, start - latency : start - latency + BLOCK], atol=1e-5)


def test_first_stems_time_is_counted_by_the_callback_in_frames_and_status_only_reads():
    engine = thread_engine(HalfRealTime())
    track = tone(4.0)
    engine.load_array(track)
    engine.set_mute("vocals")  # stems then differ from the dry track
    assert engine.status().first_stems_s is None  # no play yet
    engine.play()
    out, kinds, started = np.zeros((BLOCK, 2), np.float32), [], time.monotonic()
    while "stems" not in kinds and len(kinds) < 2 * SR // BLOCK:
        playhead = int(engine.shared.audio[PLAYHEAD])
        engine.process_deck_block(out)  # in real time, as a sound card pulls them
        kinds.append("dry" if np.array_equal(out[:, 0], track[0, playhead : playhead + BLOCK]) else "stems")
        if "stems" not in kinds:
            assert engine.status().first_stems_s is None
        time.sleep(max(0.0, started + len(kinds) * BLOCK / SR - time.monotonic()))
    first = kinds.index("stems")
    assert first > 0  # the model is slower than the blocks at first
    attributes, audio = dict(vars(engine)), engine.shared.audio.copy()
    measured = {engine.status().first_stems_s for _ in range(3)}
    assert vars(engine).keys() == attributes.keys()  # reading changes nothing
    assert all(vars(engine)[name] is value for name, value in attributes.items())
    assert np.array_equal(engine.shared.audio, audio)
    assert measured == {(first + 1) * BLOCK / SR}  # up to the end of the first block of stems
    engine.play()  # a new play counts afresh: nothing measured until the callback runs
    assert engine.status().first_stems_s is None
    assert engine.wait_separated(int(engine.shared.audio[PLAYHEAD]) + BLOCK, 30)
    engine.process_deck_block(out)
    assert engine.status().first_stems_s == BLOCK / SR
    engine.stop()


def test_kernels_compile_once_for_every_layout_a_session_uses():
    engine = thread_engine()
    engine.load_array(tone(1.0))  # the session's warm-up compiles (or loads) the kernels
    compiled = (len(deck_block.signatures), len(live_block.signatures))
    engine.play()
    for channels in (2, 2 * (1 + len(engine.sources))):  # the mix; the mix and every stem
        engine.process_deck_block(np.zeros((BLOCK, channels), np.float32))
        engine.process_deck_block(np.zeros((1, channels), np.float32))
    engine.start_live_headless()
    for in_channels, out_channels in ((2, 2), (1, 10)):
        engine.process_live_block(
            np.zeros((BLOCK, in_channels), np.float32), np.zeros((BLOCK, out_channels), np.float32)
        )
    engine.stop()
    assert (len(deck_block.signatures), len(live_block.signatures)) == compiled


def test_the_engine_leaves_process_wide_settings_to_the_entry_point():
    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    engine = thread_engine()
    engine.load_array(tone(1.0))
    assert engine.wait_separated(SR, 30)
    engine.stop()
    assert (torch.get_num_threads(), sys.getswitchinterval()) == (threads, interval)
    try:
        configure_process(torch_threads=1)
        assert (torch.get_num_threads(), sys.getswitchinterval()) == (1, GIL_SWITCH_INTERVAL_S)
    finally:
        torch.set_num_threads(threads)
        sys.setswitchinterval(interval)


def test_status_keeps_the_former_latency_name_for_its_readers():
    engine = thread_engine()
    engine.start_live_headless()
    status = engine.status()
    engine.stop()
    assert status.latency_frames == status.latency_samples == engine.latency_frames == engine.latency_samples > 0
