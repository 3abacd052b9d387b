"""The band above a low-rate model's Nyquist: shared among the stems so they sum to the input."""

import numpy as np
import pytest

from stemdeck.engine.worker.separator import WindowSeparator
from stemdeck.engine.worker.windows import WindowPlan
from stemdeck.models.bandwidth import HighBandStream, share_high_band
from stemdeck.models.nets.passthrough import PassThrough
from stemdeck.models.separate import resample, separate
from stemdeck.models.training.evaluate import utterance_sdr

SR, MODEL_SR = 44100, 22050


def hats_and_bass(seconds: float = 3.0) -> np.ndarray:
    """``(2, 2, T)``: white-noise 'hi-hats' half the time (half their energy above 11 kHz) and a bass sine."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    gate = (np.floor(t * 4) % 2 == 0).astype(np.float64)  # 125 ms on, 125 ms off
    hats = rng.standard_normal((2, t.size)) * 0.1 * gate
    bass = np.stack([np.sin(2 * np.pi * 55 * t)] * 2) * 0.3
    return np.stack([hats, bass]).astype(np.float32)


def band_limited(stems: np.ndarray) -> np.ndarray:
    """What a perfect model at 22.05 kHz returns once resampled back."""
    return np.stack([resample(resample(s, SR, MODEL_SR), MODEL_SR, SR, s.shape[-1]) for s in stems])


def test_the_high_band_goes_to_the_stem_that_has_it_below_the_cutoff():
    stems = hats_and_bass()
    mixture = stems.sum(axis=0)
    limited = band_limited(stems)
    shared = share_high_band(mixture, limited, SR, MODEL_SR)
    assert utterance_sdr(stems[0], limited[0]) < 4.0  # the ceiling without it: ~3 dB
    assert utterance_sdr(stems[0], shared[0]) > 20.0
    assert utterance_sdr(stems[1], shared[1]) > 30.0  # the bass gets none of the hats' band
    assert utterance_sdr(mixture, shared.sum(axis=0)) > 40.0  # the stems sum to the input again
    assert shared.dtype == np.float32 and shared.shape == stems.shape


def test_a_model_that_covers_the_whole_band_is_left_alone():
    stems = hats_and_bass(0.5)
    assert share_high_band(stems.sum(0), stems, SR, SR) is stems
    assert share_high_band(stems.sum(0), stems, 22050, 22050) is stems


def test_offline_separation_with_a_low_rate_model_keeps_the_top_octave():
    mixture = hats_and_bass().sum(axis=0)
    stems = separate(PassThrough(samplerate=MODEL_SR), mixture, SR, precision="fp32")
    assert utterance_sdr(mixture, sum(stems.values())) > 40.0
    without = separate(PassThrough(samplerate=MODEL_SR), mixture, SR, precision="fp32", share_band=False)
    assert utterance_sdr(mixture, sum(without.values())) < 20.0  # the hats' top octave is gone (~13 dB)


@pytest.mark.parametrize("stream_rate", [44100, 48000])
def test_streaming_windows_of_a_low_rate_model_sum_to_the_input(stream_rate):
    model = PassThrough(samplerate=MODEL_SR, segment=4.0)
    plan = WindowPlan.offline(stream_rate, 4.0)
    separator = WindowSeparator(model, plan, precision="fp32", stream_rate=stream_rate)
    window = np.random.default_rng(1).standard_normal((2, plan.window_frames)).astype(np.float32) * 0.1
    stems = separator(window)
    assert stems.shape == (4, 2, plan.window_frames)
    inner = slice(plan.window_frames // 8, -plan.window_frames // 8)  # away from the filters' edges
    assert utterance_sdr(window[:, inner], stems.sum(axis=0)[:, inner]) > 40.0


@pytest.mark.parametrize(
    "samplerate,model_samplerate,channels", [(44100, 22050, 2), (48000, 22050, 1), (96000, 16000, 2)]
)
def test_the_band_split_in_blocks_equals_the_whole_track(samplerate, model_samplerate, channels):
    """Blocks of awkward sizes (1 frame to 20000), a track of 2.3 s plus 7 frames: within 1e-7."""
    rng = np.random.default_rng(3)
    frames = int(2.3 * samplerate) + 7
    stems = np.stack(
        [
            resample(resample(s, samplerate, model_samplerate), model_samplerate, samplerate, frames)
            for s in (rng.standard_normal((4, channels, frames)) * 0.1).astype(np.float32)
        ]
    )
    mixture = stems.sum(axis=0) + (rng.standard_normal((channels, frames)) * 0.05).astype(np.float32)
    whole = share_high_band(mixture, stems, samplerate, model_samplerate)
    stream = HighBandStream(samplerate, model_samplerate, frames, block_frames=8192)
    parts, start = [], 0
    for size in [1, 64, 65, 512, 8193, 20000] * 100:
        parts.append(stream.feed(mixture[:, start : start + size], stems[..., start : start + size]))
        start += size
        if start >= frames:
            break
    streamed = np.concatenate(parts, axis=-1)
    assert streamed.shape == whole.shape and streamed.dtype == np.float32
    assert np.abs(streamed - whole).max() < 1e-7
    assert np.abs(whole - stems).max() > 1e-2  # the band split did change the stems: a real comparison


def test_the_band_stream_passes_through_when_the_model_covers_the_band():
    stems = hats_and_bass(0.5)
    stream = HighBandStream(SR, SR, stems.shape[-1])
    assert stream.feed(stems.sum(0), stems) is stems
