"""numpy's Butterworth filters for the band share: scipy.signal's numbers (scipy is the oracle here)."""

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal

from stemdeck.models.bandwidth import BandShare, share_high_band
from stemdeck.models.butterworth import CausalFilter, butterworth, moving_average, zero_phase
from stemdeck.models.separate import resample

# order, cut-off(s) in Hz, rate: the band share's filters for htdemucs (44.1 kHz) under a 48 kHz
# song, the tiny model (22.05 kHz) under 44.1 kHz, a 16 kHz model under 96 kHz
DESIGNS = [
    (8, 17640.0, 48000),
    (4, (8820.0, 17640.0), 48000),
    (8, 8820.0, 44100),
    (4, (4410.0, 8820.0), 44100),
    (8, 6400.0, 96000),
    (4, (3200.0, 6400.0), 96000),
]


def scipy_design(order, cutoff_hz, samplerate, output):
    kind = "bandpass" if isinstance(cutoff_hz, tuple) else "lowpass"
    return scipy.signal.butter(order, cutoff_hz, kind, fs=samplerate, output=output)


def signal(frames: int, channels: int = 2, offset: float = 0.7) -> np.ndarray:
    """Noise on a DC offset: the offset tests the steady state the passes start from."""
    return np.random.default_rng(frames).standard_normal((channels, frames)) + offset


@pytest.mark.parametrize("order,cutoff_hz,samplerate", DESIGNS)
def test_the_design_is_scipys(order, cutoff_hz, samplerate):
    zeros, poles, gain = scipy_design(order, cutoff_hz, samplerate, "zpk")
    design = butterworth(order, cutoff_hz, samplerate)
    assert design.gain == pytest.approx(gain, rel=1e-12)
    assert np.abs(np.sort_complex(design.poles) - np.sort_complex(poles)).max() < 1e-12
    assert np.abs(np.sort_complex(design.zeros) - np.sort_complex(zeros)).max() < 1e-12


@pytest.mark.parametrize("order,cutoff_hz,samplerate", DESIGNS)
def test_the_causal_filter_over_blocks_is_sosfilt(order, cutoff_hz, samplerate):
    """Blocks of 1 frame to 40000 (shorter and longer than the impulse response): within 1e-9."""
    x = signal(61003)
    expected = scipy.signal.sosfilt(scipy_design(order, cutoff_hz, samplerate, "sos"), x, axis=-1)
    run, parts, start = CausalFilter(butterworth(order, cutoff_hz, samplerate)), [], 0
    for size in [1, 5, 700, 3, 10000, 40000, 10294]:
        parts.append(run(x[:, start : start + size]))
        start += size
    got = np.concatenate(parts, axis=-1)
    assert got.shape == x.shape
    assert np.abs(got - expected).max() < 1e-9
    assert np.abs(expected).max() > 0.5  # the filter passes something: a real comparison


@pytest.mark.parametrize("order,cutoff_hz,samplerate", DESIGNS)
@pytest.mark.parametrize("frames", [28, 29, 500, 200_000])
def test_zero_phase_is_sosfiltfilt(order, cutoff_hz, samplerate, frames):
    """From just over the padding (27 frames) to longer than a convolution block: within 1e-9,
    the ends included."""
    x = signal(frames, channels=3)
    expected = scipy.signal.sosfiltfilt(scipy_design(order, cutoff_hz, samplerate, "sos"), x, axis=-1)
    got = zero_phase(x.astype(np.float32), butterworth(order, cutoff_hz, samplerate))
    assert got.shape == x.shape and got.dtype == np.float64
    assert np.abs(got - expected).max() < 1e-6  # float32 in, as the band share feeds it
    assert np.abs(zero_phase(x, butterworth(order, cutoff_hz, samplerate)) - expected).max() < 1e-9


def test_zero_phase_refuses_a_signal_no_longer_than_its_padding():
    with pytest.raises(ValueError, match="zero_phase needs more than 27 frames, got 27"):
        zero_phase(np.zeros((2, 27)), butterworth(8, 17640.0, 48000))


@pytest.mark.parametrize("size", [1, 4, 7, 480])
@pytest.mark.parametrize("frames", [3, 10, 9000, 100_000])
def test_the_moving_average_is_uniform_filter1d(size, frames):
    """Windows longer than the signal (mirrored more than once), and longer than a running sum's block."""
    x = np.random.default_rng(size).random((4, frames))
    expected = scipy.ndimage.uniform_filter1d(x, size, axis=-1)
    assert np.abs(moving_average(x, size) - expected).max() < 1e-12


def test_a_quiet_passage_after_a_loud_one_keeps_its_own_average():
    """Energies of 1e4 then 1e-10: the quiet part's mean is its own, not a difference of large sums."""
    x = np.concatenate([np.full(50_000, 1e4), np.full(50_000, 1e-10)])[None]
    assert moving_average(x, 480)[0, -40_000:] == pytest.approx(1e-10, rel=1e-6)


def scipy_share(mixture, stems, samplerate, model_samplerate, config=BandShare()):
    """The band share as it was written with scipy.signal and scipy.ndimage."""
    cutoff_hz = config.cutoff_ratio * model_samplerate / 2
    lowpass = scipy.signal.butter(config.lowpass_order, cutoff_hz, "lowpass", fs=samplerate, output="sos")
    guide = scipy.signal.butter(config.guide_order, (cutoff_hz / 2, cutoff_hz), "bandpass", fs=samplerate, output="sos")
    residual = mixture - stems.sum(axis=0)
    missing = residual - scipy.signal.sosfiltfilt(lowpass, residual, axis=-1)
    energy = np.square(scipy.signal.sosfilt(guide, stems.mean(axis=1), axis=-1))
    size = max(1, int(config.smoothing_s * samplerate))
    energy = scipy.ndimage.uniform_filter1d(energy, size, axis=-1) + config.floor
    weights = energy / energy.sum(axis=0, keepdims=True)
    return (stems + weights[:, None, :] * missing[None]).astype(stems.dtype, copy=False)


@pytest.mark.parametrize("samplerate,model_samplerate", [(48000, 44100), (44100, 22050), (96000, 16000)])
def test_the_band_share_is_what_scipy_gave(samplerate, model_samplerate):
    rng = np.random.default_rng(5)
    frames = int(1.5 * samplerate)
    stems = np.stack(
        [
            resample(resample(s, samplerate, model_samplerate), model_samplerate, samplerate, frames)
            for s in (rng.standard_normal((4, 2, frames)) * 0.1).astype(np.float32)
        ]
    )
    mixture = stems.sum(axis=0) + (rng.standard_normal((2, frames)) * 0.05).astype(np.float32)
    expected = scipy_share(mixture, stems, samplerate, model_samplerate)
    got = share_high_band(mixture, stems, samplerate, model_samplerate)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-6
    assert np.abs(expected - stems).max() > 1e-2  # the band share did change the stems
