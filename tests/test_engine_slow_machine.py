"""Issue 12: the deck on any CPU (offline chunking, never refused, dry until stems arrive) and
live input that adapts its plan to the machine instead of refusing."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from stemdeck.engine.config import EngineConfig, WindowConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.session import WorkerError
from stemdeck.engine.worker.windows import WindowPlan
from stemdeck.models.nets.passthrough import PassThrough
from stemdeck.models.separate import separate

SR = 44100
BLOCK = 512


class SlowModel(torch.nn.Module):
    """The tiny test model with a sleep in every forward: a machine slower than real time."""

    def __init__(self, model: torch.nn.Module, delay_s: float = 0.0, delay_per_s: float = 0.0):
        super().__init__()
        self.inner, self.delay_s, self.delay_per_s = model, delay_s, delay_per_s
        self.sources, self.samplerate, self.segment = model.sources, model.samplerate, model.segment
        self.audio_channels = model.audio_channels

    def forward(self, mix):
        time.sleep(self.delay_s + self.delay_per_s * mix.shape[-1] / self.samplerate)
        return self.inner(mix)


def _track(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(t.size)
    return np.ascontiguousarray(np.stack([tone, 0.7 * tone]) + 0.05, dtype=np.float32)


def _deck(model, **config) -> Engine:
    return Engine(model, EngineConfig(worker="thread", precision="fp32", cache_stems=False, **config))


@pytest.mark.parametrize(("cue_s", "quick_s"), [(0.0, 0.0), (3.3, 0.5)])
def test_deck_stems_equal_offline_separation(tiny_model, cue_s, quick_s):
    """The deck chunks as `stemdeck separate` does: its stems equal models.separate's from the
    cue point on (track-wide normalisation, overlap 0.25, the last window centred). With quick
    start, the first ``quick_s`` come from a short window of their own; everything after equals."""
    track = _track(7.3)
    expected = np.stack(list(separate(tiny_model, track, SR, precision="fp32").values()))
    with _deck(tiny_model, deck_quick_start_s=quick_s) as engine:
        engine.load_array(track, cue_s=cue_s)
        assert engine.wait_separated(track.shape[-1], timeout_s=60)
        stems = engine._deck_buffers.stems.copy()
        assert engine.backend.worker.finished.wait(30)  # the quick start's stems redone as offline's
        redone = engine._deck_buffers.stems.copy()
    cue, exact_from = int(cue_s * SR), int((cue_s + quick_s) * SR)
    assert np.abs(stems[..., exact_from:] - expected[..., exact_from:]).max() <= 1e-4
    assert np.abs(expected).max() > 0.01  # not two silences that agree
    quick = stems[..., cue:exact_from]
    assert np.isfinite(quick).all() and (quick.size == 0 or np.abs(quick).max() > 0.01)
    assert np.abs(redone[..., cue:] - expected[..., cue:]).max() <= 1e-4


def test_deck_stems_of_a_track_with_a_dc_offset_add_up_to_it():
    """Each stem carried the track's whole mean (0.05 here): all four summed to 0.2 of DC."""
    track = _track(3.0)
    with _deck(PassThrough(), deck_quick_start_s=0.5) as engine:
        engine.load_array(track)
        assert engine.wait_separated(track.shape[-1], timeout_s=60)
        assert engine.backend.worker.finished.wait(30)
        stems = engine._deck_buffers.stems[..., : track.shape[-1]].copy()
    assert np.abs(stems.sum(axis=0) - track).max() <= 1e-5
    assert np.abs(stems.mean(axis=-1) - track.mean(-1) / 4).max() < 1e-3  # a quarter of it each


def test_slow_machine_deck_plays_every_frame_dry_or_stems_and_catches_up_while_paused(tiny_model):
    """Separation slower than real time (2 s of sleep per 1.5 s hop): the deck is not refused,
    plays each block either dry or as offline's stems (never silence), reports itself behind,
    and a pause lets separation get ahead so that stems play on resuming."""
    track = _track(9.0, seed=1)
    expected = sum(separate(tiny_model, track, SR, precision="fp32").values())
    engine = _deck(SlowModel(tiny_model, delay_s=2.0), deck_quick_start_s=0.0)
    out = np.zeros((BLOCK, 2), np.float32)
    kinds, behind = [], []
    try:
        engine.load_array(track)
        engine.play()
        start = time.perf_counter()
        for block in range(int(4.0 * SR / BLOCK)):  # 4 s at the pace of a sound card
            engine.process_deck_block(out)
            kinds.append(_kind(out, track, expected, block * BLOCK))
            behind.append(engine.status().seconds_ahead)
            time.sleep(max(0.0, start + (block + 1) * BLOCK / SR - time.perf_counter()))
        engine.pause()
        deadline = time.perf_counter() + 30
        while engine.status().seconds_ahead < 1.0 and time.perf_counter() < deadline:
            time.sleep(0.05)
        ahead = engine.status().seconds_ahead
        engine.play()
        position = int(engine.status().position_s * SR)
        engine.process_deck_block(out)
        resumed = _kind(out, track, expected, position)
    finally:
        engine.stop()
    assert "other" not in kinds  # every block was the dry track or the stems
    assert kinds[0] == "dry" and min(behind) < 0  # it said it was behind
    assert ahead >= 1.0 and resumed == "stems"


def _kind(out: np.ndarray, track: np.ndarray, stems_sum: np.ndarray, position: int) -> str:
    frames = min(out.shape[0], track.shape[-1] - position)
    played = out[:frames].T
    if np.abs(played - track[:, position : position + frames]).max() <= 1e-5:
        return "dry"
    if np.abs(played - stems_sum[:, position : position + frames]).max() <= 1e-4:
        return "stems"
    return "other"


FAST_PLAN = WindowConfig(window_s=0.5, hop_s=0.1, lookahead_s=0.05, span_s=0.2)


def test_slow_machine_live_input_starts_with_a_longer_plan_instead_of_refusing(tiny_model):
    """0.5 s per forward: no hop of the 0.5-s window asked for fits, so the calibration times
    longer windows and starts with the first it keeps up with, saying so, at a longer latency."""
    engine = _deck(SlowModel(tiny_model, delay_s=0.5))
    try:
        engine.prepare(FAST_PLAN, block_frames=BLOCK)
        calibration = engine.calibration
        engine.start_live_headless()
        tone = _track(2.0)
        out = np.zeros((BLOCK, 2), np.float32)
        for block in range(4):
            engine.process_live_block(np.ascontiguousarray(tone[:, block * BLOCK : (block + 1) * BLOCK].T), out)
        status = engine.status()
    finally:
        engine.stop()
    asked = WindowPlan.from_config(FAST_PLAN, SR, 2.0).latency_frames(BLOCK, 0)
    assert calibration.adapted and calibration.window.window_s > FAST_PLAN.window_s
    assert calibration.window.hop_s * 0.7 >= calibration.forward_s - 1e-9 and calibration.forward_s >= 0.5
    assert status.latency_frames > asked + int(calibration.forward_s * SR)
    assert status.worker_error is None


def test_a_machine_too_slow_for_the_longest_window_is_refused_naming_the_ways_out(tiny_model):
    model = SlowModel(tiny_model, delay_s=1.0)
    model.segment = 0.75  # the longest window: 0.75 s, whose longest hop (0.7 s) cannot take 1 s
    engine = _deck(model)
    try:
        with pytest.raises(ValueError) as refused:
            engine.prepare(FAST_PLAN, block_frames=BLOCK)
        # where live input is not needed (the GUI's engine), the engine stays a deck
        engine.prepare(FAST_PLAN, block_frames=BLOCK, refuse_live=False)
        with pytest.raises(WorkerError) as not_live:
            engine.start_live_headless()
        track = _track(1.0)
        engine.load_array(track)
        assert engine.wait_separated(track.shape[-1], timeout_s=30)
    finally:
        engine.stop()
    message = str(refused.value)
    assert message.startswith("this machine needs ") and "0.8 s window" in message
    assert "smaller model" in message and "GPU" in message and "\n" not in message
    assert str(not_live.value) == engine.live_refusal
    assert engine.live_refusal.startswith("this machine needs ") and "smaller model" in engine.live_refusal


def _first_stems_s(engine: Engine, track: np.ndarray) -> float | None:
    """Load, play at once and run blocks at a sound card's pace until stems play."""
    out = np.zeros((BLOCK, 2), np.float32)
    engine.load_array(track)
    engine.play()
    start = time.perf_counter()
    for block in range(int(3.0 * SR / BLOCK)):
        engine.process_deck_block(out)
        if engine.status().first_stems_s is not None:
            break
        time.sleep(max(0.0, start + (block + 1) * BLOCK / SR - time.perf_counter()))
    return engine.status().first_stems_s


def test_quick_start_plays_stems_before_a_full_window_could(tiny_model):
    """A model that takes 0.4 s per second of audio: a full 2-s window takes 0.8 s, the 1-s quick
    window 0.4 s, so stems play about twice as soon after play with quick start."""
    track = _track(6.0)
    timings = {}
    for quick_s in (1.0, 0.0):
        with _deck(SlowModel(tiny_model, delay_per_s=0.4), deck_quick_start_s=quick_s) as engine:
            timings[quick_s] = _first_stems_s(engine, track)
    assert timings[1.0] is not None and timings[0.0] is not None
    # The sleeps alone differ by 0.4 s, and a loaded machine only widens the gap (a 2-s window's
    # compute grows more than a 1-s one's); the absolute time is a benchmark's (benchmarks/deck.py).
    assert timings[1.0] < timings[0.0] - 0.2


def test_every_presets_latency_on_this_machine_is_measured_before_a_session():
    """What `stemdeck live --dry-run` prints. 0.5 s per forward (a sleep: a loaded machine can
    only make it longer) never fits low-latency's 0.6-s hop with 30 % headroom (0.42 s), so that
    plan is lengthened, not refused; every plan chosen keeps one forward inside 70 % of its hop."""
    from stemdeck.engine.build import describe_plans, preset_plans

    engine = _deck(SlowModel(PassThrough(), delay_s=0.5))
    try:
        plans = {plan.name: plan for plan in preset_plans(engine, BLOCK)}
    finally:
        engine.stop()
    assert set(plans) == {"quality", "balanced", "low-latency"}
    low = plans["low-latency"]
    assert low.lengthened and low.hop_s > 0.6
    assert plans["balanced"].hop_s >= 1.0 and plans["quality"].hop_s >= 2.0  # never shorter than asked
    for plan in plans.values():
        assert plan.forward_s >= 0.5 and plan.hop_s * 0.7 >= plan.forward_s - 1e-9  # fitted exactly, up to rounding
        assert plan.latency_ms is not None and plan.latency_ms > 1000 * plan.forward_s
    text = describe_plans(list(plans.values()))
    assert len(text.splitlines()) == 3 and "low-latency" in text and "(lengthened for this machine)" in text


def test_a_plan_this_machine_cannot_run_is_listed_as_refused_with_the_reason():
    from stemdeck.engine.build import describe_plans, preset_plans

    engine = _deck(SlowModel(PassThrough(segment=0.75), delay_s=1.0))  # no hop of a 0.75 s window takes 1 s
    try:
        (plan,) = preset_plans(engine, BLOCK, {"fast": FAST_PLAN})
    finally:
        engine.stop()
    assert plan.latency_ms is None and "smaller model" in plan.refusal
    assert describe_plans([plan]).startswith("  fast         refused: this machine needs 1.0")


def _clicks(seconds: float, bpm: float) -> np.ndarray:
    """``(2, frames)`` short 2 kHz bursts on every beat: a track whose tempo the tracker finds."""
    mono = np.zeros(int(seconds * SR), np.float32)
    t = np.arange(int(0.010 * SR)) / SR
    burst = (0.8 * np.sin(2 * np.pi * 2000 * t) * np.exp(-t / 0.003)).astype(np.float32)
    for start_s in np.arange(0.25, seconds - 0.02, 60.0 / bpm):
        i = int(round(start_s * SR))
        mono[i : i + burst.size] += burst[: mono.size - i]
    return np.stack([mono, 0.5 * mono])


def _watch_beat_search(monkeypatch, engine: Engine) -> list[tuple[int, int]]:
    """Where the deck's separation stood (frames ahead of the playhead, frames written) each
    time the beat search started in earnest."""
    from stemdeck.engine.audio.state import STEMS_WRITTEN, playhead_frames
    from stemdeck.engine.stretch import control

    seen, search = [], control.search_beats

    def watched(signal):
        seen.append((engine._frames_ahead(playhead_frames(engine.shared)), int(engine.shared.worker[STEMS_WRITTEN])))
        return search(signal)

    monkeypatch.setattr(control, "search_beats", watched)
    return seen


def test_the_beat_search_waits_for_the_separation_to_get_ahead(monkeypatch):
    """The beat search (8 s of a core for a 10-minute track) at ordinary priority starved the
    idle-priority separation: a long track played dry for 3-5 s after play. It now starts once
    the separation is ``beats_after_ahead_s`` ahead of the playhead, and still finds the grid."""
    track = _clicks(30.0, bpm=100.0)
    slow = SlowModel(PassThrough(), delay_per_s=0.08)  # 30 s separated in about 2.4 s
    with _deck(slow, beat_tracking=True, beats_after_ahead_s=6.0, deck_quick_start_s=0.0) as engine:
        seen = _watch_beat_search(monkeypatch, engine)
        engine.load_array(track)
        beats = engine.practice.wait_beats(120.0)
    assert len(seen) == 1
    ahead_frames, written_frames = seen[0]
    assert ahead_frames >= 6.0 * SR or written_frames >= track.shape[-1], seen
    assert beats is not None and beats.bpm == pytest.approx(100.0, rel=0.01)


def test_the_beat_search_runs_after_its_longest_wait_where_the_separation_never_gets_ahead(monkeypatch):
    """A machine too slow to get ahead must not lose the grid for good: ``beats_wait_max_s`` on."""
    track = _clicks(12.0, bpm=120.0)
    slow = SlowModel(PassThrough(), delay_per_s=0.3)  # under 4 s ahead a second at most
    config = {"beat_tracking": True, "beats_after_ahead_s": 1000.0, "beats_wait_max_s": 1.0}
    with _deck(slow, deck_quick_start_s=0.0, **config) as engine:
        seen = _watch_beat_search(monkeypatch, engine)
        start = time.monotonic()
        engine.load_array(track)
        beats = engine.practice.wait_beats(120.0)
        waited_s = time.monotonic() - start
    assert len(seen) == 1 and seen[0][1] < track.shape[-1], seen  # searched before the separation ended
    assert waited_s >= 1.0
    assert beats is not None and beats.bpm == pytest.approx(120.0, rel=0.01)
