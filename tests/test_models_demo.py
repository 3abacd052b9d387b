"""The demo song shows what stemdeck does: every stem is loud enough that muting it is heard."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from stemdeck.models.demo import SAMPLERATE, demo_stems, write_demo


def _db(signal: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(signal, dtype=np.float64)))


def test_every_stem_within_10_db_of_the_mix():
    stems = demo_stems(12.0)
    mix_db = _db(sum(stems.values()))
    for name, stem in stems.items():
        assert mix_db - _db(stem) < 10.0, name  # four equal stems: each 6 dB below


def test_muting_any_stem_changes_the_mix_audibly():
    """At least 0.7 dB quieter without each stem (the vocals were 27 dB down: muting them did ~0 dB)."""
    stems = demo_stems(12.0)
    mix = sum(stems.values())
    drops = {name: _db(mix) - _db(mix - stem) for name, stem in stems.items()}
    assert min(drops.values()) > 0.7, drops
    assert drops["vocals"] > 1.5, drops


def test_demo_file_is_stereo_44k1_and_does_not_clip(tmp_path):
    path = tmp_path / "demo.wav"
    write_demo(path, seconds=4.0)
    audio, rate = sf.read(str(path), always_2d=True)
    assert rate == SAMPLERATE and audio.shape == (4 * SAMPLERATE, 2)
    assert 0.5 < np.abs(audio).max() < 0.95


@pytest.mark.parametrize("centre_hz, bandwidth_hz", [(730, 80), (2440, 120), (270, 60)])
def test_formant_resonator_is_the_two_pole_filter(centre_hz, bandwidth_hz):
    """The voice's formants, as an FFT convolution with the resonator's impulse response, against
    scipy's recursive filter on a sparse pulse train (the voice's source)."""
    from scipy.signal import lfilter

    from stemdeck.models.demo import _resonate

    pulses = (np.random.default_rng(1).random(200_000) < 0.004).astype(float)
    r = np.exp(-np.pi * bandwidth_hz / SAMPLERATE)
    poles = [1, -2 * r * np.cos(2 * np.pi * centre_hz / SAMPLERATE), r * r]
    expected = lfilter([1 - r], poles, pulses)
    np.testing.assert_allclose(_resonate(pulses, centre_hz, bandwidth_hz), expected, rtol=0, atol=1e-8)


def test_the_demo_song_does_not_import_scipy_signal():
    """`stemdeck separate`'s first run times precisions on the demo song; scipy.signal was 63 MB
    of its peak memory, for nothing else there."""
    import subprocess
    import sys

    code = "import sys; from stemdeck.models.demo import demo_stems; demo_stems(2.0); "
    code += "print('scipy.signal' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
