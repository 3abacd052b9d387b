"""The engine without a sound card: streaming equals offline, exact latency, mixer, deck.

The audio callback is driven block by block (awkward sizes included); the worker runs in its
own thread as in a session. Where a test needs a machine fast enough never to be late, it
waits for the worker between blocks, outside the callback.
"""

import time

import numpy as np
import pytest
import torch
from conftest import TINY_HT_KW

from stemdeck.engine.config import EngineConfig, WindowConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.worker.windows import WindowPlan
from stemdeck.models import HTDemucs, separate
from stemdeck.models.nets.passthrough import PassThrough

SR = 44100
BLOCK_SIZES = [1, 64, 65, 512, 8193]
FAST_PLAN = WindowConfig(window_s=0.5, hop_s=0.1, lookahead_s=0.05, span_s=0.2)


def stream_live(engine, signal, sizes=BLOCK_SIZES, out_channels=2, wait=True):
    """Feed ``signal`` (C, N) through the live callback; return the output (frames, channels)."""
    outs, position, i = [], 0, 0
    while position < signal.shape[1]:
        n = min(sizes[i % len(sizes)], signal.shape[1] - position)
        i += 1
        block = np.ascontiguousarray(signal[:, position : position + n].T)
        out = np.zeros((n, out_channels), np.float32)
        if wait:
            assert engine.wait_separated(position + n - engine.latency_frames, timeout_s=120)
        engine.process_live_block(block, out)
        outs.append(out)
        position += n
    return np.concatenate(outs)


def live_engine(model, plan=None, window=FAST_PLAN, block=256, precision="fp32", worker="thread"):
    engine = Engine(model, EngineConfig(precision=precision, inference_budget_s=0.0, worker=worker))
    if plan is not None:
        engine.prepare_plan(plan, block_frames=block)
    else:
        engine.prepare(window, block_frames=block, calibrate_plan=False)
    engine.start_live_headless()
    return engine


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_streaming_equals_offline_once_shifted_by_the_latency(worker):
    torch.manual_seed(1)
    model = HTDemucs(**TINY_HT_KW).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, SR * 9)).astype(np.float32)
    mono = x.mean(0)
    x = ((x - mono.mean()) / mono.std()).astype(np.float32)  # offline normalises by these stats
    offline = separate(model, x, SR, precision="fp32")
    plan = WindowPlan.offline(SR, float(model.segment), 0.25)
    engine = live_engine(model, plan=plan, block=max(BLOCK_SIZES), worker=worker)
    latency = engine.latency_frames
    assert latency == plan.window_frames + max(BLOCK_SIZES)
    feed = np.concatenate([x, np.zeros((2, latency), np.float32)], axis=1)
    out = stream_live(engine, feed, out_channels=2 + 2 * 4)
    engine.stop()
    assert engine.status().late_windows == 0
    # Offline's last chunks are shorter than a window (padded from the track's end); compare
    # up to the first of them, where both ran the same windows.
    compared = next(o for o in range(0, x.shape[1], plan.hop_frames) if o + plan.window_frames > x.shape[1])
    for k, name in enumerate(model.sources):
        streamed = out[latency : latency + compared, 2 + 2 * k : 4 + 2 * k].T
        assert np.abs(streamed - offline[name][:, :compared]).max() <= 1e-5


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_end_to_end_delay_is_exactly_the_reported_latency(worker):
    engine = live_engine(PassThrough(), worker=worker)
    signal = np.zeros((2, SR), np.float32)
    signal[:, 1000] = 1.0
    out = stream_live(engine, signal, sizes=[256])
    engine.stop()
    assert np.argmax(np.abs(out[:, 0])) == 1000 + engine.latency_frames
    assert out[1000 + engine.latency_frames, 0] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "action,stem_gains,mix_gain",
    [
        (lambda e: None, [1, 1, 1, 1], 1.0),
        (lambda e: e.set_mute("vocals"), [1, 1, 1, 0], 0.6),
        (lambda e: e.set_solo("bass"), [0, 1, 0, 0], 0.2),
        (lambda e: (e.set_solo("bass"), e.set_solo("drums")), [1, 1, 0, 0], 0.3),
        (lambda e: (e.set_solo("vocals"), e.set_mute("vocals")), [0, 0, 0, 0], 0.0),
        (lambda e: e.set_gain("vocals", -6.0), [1, 1, 1, 10 ** (-6 / 20)], 0.6 + 0.4 * 10 ** (-6 / 20)),
        (lambda e: e.set_dry_mix(1.0), [0, 0, 0, 0], 1.0),
    ],
)
def test_mixer_controls_act_on_the_intended_stem(action, stem_gains, mix_gain):
    engine = live_engine(PassThrough())
    action(engine)
    tone = np.sin(2 * np.pi * 441 * np.arange(SR) / SR).astype(np.float32)
    out = stream_live(engine, np.stack([tone, tone]), sizes=[256], out_channels=10)
    engine.stop()
    latency = engine.latency_frames
    settled = slice(latency + 2000, SR)  # after the 10 ms ramps
    reference = tone[2000 : SR - latency]
    assert np.allclose(out[settled, 0], mix_gain * reference, atol=1e-5)
    fractions = [0.1, 0.2, 0.3, 0.4]
    for k in range(4):  # each stem's own output pair carries exactly that stem
        assert np.allclose(out[settled, 2 + 2 * k], stem_gains[k] * fractions[k] * reference, atol=1e-5)


def test_late_windows_fall_back_to_the_aligned_dry_signal():
    class Slow(PassThrough):
        def forward(self, mix):
            time.sleep(0.05)
            return super().forward(mix)

    engine = live_engine(Slow())  # budget 0: every window is late when not waited for
    tone = np.sin(2 * np.pi * 441 * np.arange(SR // 2) / SR).astype(np.float32)
    engine.set_mute("vocals")
    out = stream_live(engine, np.stack([tone, tone]), sizes=[256], wait=False)
    status = engine.status()
    engine.stop()
    assert status.late_windows >= 1
    latency = engine.latency_frames
    played = out[latency:, 0]
    dry = tone[: SR // 2 - latency]
    # every sample is either the muted mix (0.6 x) or the dry signal: never silence, never garbage
    ratio_ok = np.isclose(played, dry, atol=1e-5) | np.isclose(played, 0.6 * dry, atol=1e-5)
    assert ratio_ok.all()
    assert np.isclose(played, dry, atol=1e-5).sum() > 0


def test_deck_plays_dry_at_once_then_stems_and_follows_seeks():
    engine = Engine(
        PassThrough(), EngineConfig(precision="fp32", inference_budget_s=0.0, worker="thread", deck_window=FAST_PLAN)
    )
    engine.prepare(FAST_PLAN, block_frames=256, calibrate_plan=False)
    tone = np.sin(2 * np.pi * 441 * np.arange(3 * SR) / SR).astype(np.float32)
    engine.load_array(np.stack([tone, tone]), cue_s=0.0)
    engine.set_mute("vocals")
    engine.play()
    out = np.zeros((256, 2), np.float32)
    assert engine.wait_separated(SR)
    for _ in range(3):  # the mute ramps down over the first 10 ms
        engine.process_deck_block(out)
    assert np.allclose(out[:, 0], 0.6 * tone[512:768], atol=1e-5)
    engine.seek(2.0)
    engine.process_deck_block(out)  # the seek lands; stems there are not separated yet
    assert np.allclose(out[:, 0], tone[2 * SR : 2 * SR + 256], atol=1e-5)
    deadline = time.time() + 30
    while engine.status().seconds_ahead < 0.5 and time.time() < deadline:
        time.sleep(0.01)
    engine.process_deck_block(out)
    assert np.allclose(out[:, 0], 0.6 * tone[2 * SR + 256 : 2 * SR + 512], atol=1e-5)
    engine.pause()
    engine.process_deck_block(out)
    assert not out.any()
    status = engine.status()
    engine.stop()
    assert status.position_s == pytest.approx((2 * SR + 512) / SR)
    assert status.seconds_ahead > 0.5


def test_deck_counts_late_only_when_stems_fall_behind_not_while_the_first_arrive():
    import threading

    from stemdeck.engine.audio.state import PLAYHEAD, STEMS_WRITTEN

    class Metered(PassThrough):
        windows = threading.Semaphore(0)  # one release lets one window of music through

        def forward(self, mix):
            if mix.abs().max() > 0:  # the warm-up on silence at load runs freely
                Metered.windows.acquire()
            return super().forward(mix)

    engine = Engine(
        Metered(),
        EngineConfig(
            precision="fp32", inference_budget_s=0.0, worker="thread", cache_stems=False, deck_window=FAST_PLAN
        ),
    )
    engine.prepare(FAST_PLAN, block_frames=256, calibrate_plan=False)
    tone = np.sin(2 * np.pi * 441 * np.arange(3 * SR) / SR).astype(np.float32)
    engine.load_array(np.stack([tone, tone]))
    engine.play()
    out = np.zeros((256, 2), np.float32)
    try:
        engine.process_deck_block(out)  # nothing separated yet: dry, expected, not late
        waiting = engine.status()
        Metered.windows.release()
        assert engine.wait_separated(256 * 2, timeout_s=30)
        engine.process_deck_block(out)
        playing = engine.status()
        while engine.shared.audio[PLAYHEAD] + 256 <= engine.shared.worker[STEMS_WRITTEN]:
            engine.process_deck_block(out)
        engine.process_deck_block(out)  # the playhead outruns the worker: this one is late
        engine.process_deck_block(out)  # still behind: the same lateness, not a second one
        behind = engine.status()
        engine.seek(2.0)
        engine.process_deck_block(out)  # waiting again after a seek: not late
        after_seek = engine.status()
    finally:
        for _ in range(1000):
            Metered.windows.release()
        engine.stop()
    assert waiting.fallback and waiting.late_windows == 0
    assert not playing.fallback and playing.late_windows == 0
    assert behind.fallback and behind.late_windows == 1
    assert after_seek.fallback and after_seek.late_windows == 1


def test_unknown_stem_is_a_clear_error():
    engine = Engine(PassThrough(), EngineConfig(worker="thread"))
    with pytest.raises(ValueError, match="unknown stem 'voxals'; this model has drums, bass, other, vocals"):
        engine.set_mute("voxals")


def test_worker_failure_is_reported_and_audio_goes_on():
    class BreaksLater(PassThrough):
        calls = 0

        def forward(self, mix):
            BreaksLater.calls += 1
            if BreaksLater.calls > 3:
                raise RuntimeError("out of memory")
            return super().forward(mix)

    engine = live_engine(BreaksLater())
    tone = np.ones((2, SR // 2), np.float32)
    deadline = time.time() + 10
    while time.time() < deadline and engine.status().worker_error is None:
        stream_live(engine, tone, sizes=[256], wait=False)
    # after the failure (and past the silence before the stream's first latency frames, which a
    # failure within the first half second used to leave in the checked output)
    out = stream_live(engine, tone, sizes=[256], wait=False)
    status = engine.status()
    engine.stop()
    assert "RuntimeError: out of memory" in status.worker_error
    assert np.abs(out[:, 0] - 1.0).max() < 1e-6  # the dry signal (or unity stems) keeps playing


def test_deck_loads_files_at_any_rate_and_channel_count(tmp_path):
    from conftest import write_tone

    path = tmp_path / "mono48k.flac"
    write_tone(path, seconds=1.0, samplerate=48000, channels=1)
    engine = Engine(PassThrough(), EngineConfig(inference_budget_s=0.0, worker="thread"))
    engine.prepare(FAST_PLAN, calibrate_plan=False)
    engine.load(path)
    status = engine.status()
    engine.stop()
    assert engine._deck_buffers.track.shape == (2, SR)  # resampled to the model's rate, both channels
    assert engine.track_seconds == pytest.approx(1.0)
    assert np.allclose(engine._deck_buffers.track[0], engine._deck_buffers.track[1])
    assert status.playing is False


def test_deck_refuses_unreadable_files_and_keeps_the_loaded_track(tmp_path):
    from stemdeck.models.audio import AudioError

    engine = Engine(PassThrough(), EngineConfig(inference_budget_s=0.0, worker="thread"))
    engine.prepare(FAST_PLAN, calibrate_plan=False)
    engine.load_array(np.zeros((2, SR), np.float32))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioError, match="not a readable audio file"):
        engine.load(bad)
    assert engine._deck_buffers.track.shape == (2, SR)
    engine.stop()


@pytest.mark.parametrize("rate", [48000, 22050])
def test_streams_at_other_device_rates_with_exact_latency(rate):
    """The engine runs at the device's rate; each window is resampled to the model's and back."""
    engine = Engine(PassThrough(), EngineConfig(samplerate=rate, inference_budget_s=0.0, worker="thread"))
    engine.prepare(FAST_PLAN, block_frames=256, calibrate_plan=False)
    engine.start_live_headless()
    engine.set_mute("vocals")
    tone = np.sin(2 * np.pi * 441 * np.arange(rate) / rate).astype(np.float32)
    out = stream_live(engine, np.stack([tone, tone]), sizes=[256])
    engine.stop()
    latency = engine.latency_frames
    assert latency == int(0.25 * rate) + 256  # lookahead + span at this rate, one block
    settled = slice(latency + rate // 10, rate)
    assert np.allclose(out[settled, 0], 0.6 * tone[rate // 10 : rate - latency], atol=2e-3)


def test_separated_deck_is_cached_on_disk_and_reloads_instantly():
    tone = np.sin(2 * np.pi * 441 * np.arange(2 * SR) / SR).astype(np.float32)
    track = np.stack([tone, tone])
    first = Engine(PassThrough(), EngineConfig(inference_budget_s=0.0, worker="thread"))
    first.prepare(FAST_PLAN, calibrate_plan=False)
    first.load_array(track)
    assert first.wait_separated(track.shape[1], timeout_s=60)
    deadline = time.time() + 10
    while not first.backend.worker.finished.is_set() and time.time() < deadline:
        time.sleep(0.01)
    expected = first._deck_buffers.stems.copy()
    first.stop()
    second = Engine(PassThrough(), EngineConfig(inference_budget_s=0.0, worker="thread"))
    second.prepare(FAST_PLAN, calibrate_plan=False)
    second.load_array(track)
    assert second.wait_separated(track.shape[1], timeout_s=5)
    status = second.status()
    stems = second._deck_buffers.stems.copy()
    second.stop()
    assert status.windows_done == 0  # nothing was separated again
    assert np.abs(stems - expected).max() < 1e-3  # stored as float16
