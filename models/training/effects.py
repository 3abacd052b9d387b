"""Per-stem studio effects for generated songs: EQ, compression, distortion, reverb.

Each stem of a generated song gets its own chain, drawn from the song's seed, as a mixing
engineer treats each track on its own: a model trained only on dry General MIDI stems has never
heard a distorted guitar or a reverberant voice. Every effect keeps the stem's length (reverb
tails past the end are cut) and works on ``(channels, frames)`` float arrays; loudness is set
afterwards by the generator, so an effect may change the level freely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLERATE = 44100


@dataclass(frozen=True)
class PeakEQ:
    """One RBJ peaking band."""

    frequency_hz: float
    gain_db: float
    q: float


@dataclass(frozen=True)
class Compressor:
    threshold_db: float
    ratio: float
    smoothing_ms: float  # one time constant for the level detector (attack ≈ release)


@dataclass(frozen=True)
class Distortion:
    drive_db: float
    tone_hz: float  # low-pass after the clipper, as a guitar cabinet rolls off the fizz
    mix: float


@dataclass(frozen=True)
class Reverb:
    decay_s: float  # RT60
    pre_delay_ms: float
    wet: float


@dataclass(frozen=True)
class Chain:
    eq: tuple[PeakEQ, ...] = ()
    compressor: Compressor | None = None
    distortion: Distortion | None = None
    reverb: Reverb | None = None

    def apply(self, stem: np.ndarray, seed: int, samplerate: int = SAMPLERATE) -> np.ndarray:
        """``(channels, frames)`` in, the same shape out: distortion, EQ, compression, reverb."""
        out = np.asarray(stem, np.float64)
        if self.distortion is not None:
            out = distort(out, self.distortion, samplerate)
        for band in self.eq:
            out = peak_eq(out, band, samplerate)
        if self.compressor is not None:
            out = compress(out, self.compressor, samplerate)
        if self.reverb is not None:
            out = reverberate(out, self.reverb, np.random.default_rng(seed), samplerate)
        return out.astype(np.float32)


def peak_eq(stem: np.ndarray, band: PeakEQ, samplerate: int = SAMPLERATE) -> np.ndarray:
    from scipy.signal import lfilter

    a_gain = 10 ** (band.gain_db / 40)
    w0 = 2 * np.pi * min(band.frequency_hz, 0.45 * samplerate) / samplerate
    alpha = np.sin(w0) / (2 * band.q)
    b = [1 + alpha * a_gain, -2 * np.cos(w0), 1 - alpha * a_gain]
    a = [1 + alpha / a_gain, -2 * np.cos(w0), 1 - alpha / a_gain]
    return lfilter(b, a, stem, axis=-1)


def compress(stem: np.ndarray, settings: Compressor, samplerate: int = SAMPLERATE) -> np.ndarray:
    """Feed-forward RMS compressor, linked channels, makeup gain back to the input's RMS."""
    from scipy.signal import lfilter

    coefficient = np.exp(-1.0 / (settings.smoothing_ms * 1e-3 * samplerate))
    power = lfilter([1 - coefficient], [1, -coefficient], np.mean(stem**2, axis=0))
    level_db = 10 * np.log10(np.maximum(power, 1e-12))
    reference_db = 10 * np.log10(max(float(np.mean(stem**2)), 1e-12))  # threshold relative to the stem
    over_db = np.maximum(0.0, level_db - (reference_db + settings.threshold_db))
    gain = 10 ** (-over_db * (1 - 1 / settings.ratio) / 20)
    out = stem * gain
    return out * np.sqrt(np.mean(stem**2) / max(float(np.mean(out**2)), 1e-12))


def distort(stem: np.ndarray, settings: Distortion, samplerate: int = SAMPLERATE) -> np.ndarray:
    from scipy.signal import butter, lfilter

    peak = max(float(np.abs(stem).max()), 1e-9)
    drive = 10 ** (settings.drive_db / 20)
    clipped = np.tanh(drive * stem / peak) * peak
    b, a = butter(2, min(settings.tone_hz, 0.45 * samplerate) / (samplerate / 2))
    return (1 - settings.mix) * stem + settings.mix * lfilter(b, a, clipped, axis=-1)


def reverberate(stem: np.ndarray, settings: Reverb, rng: np.random.Generator, samplerate: int = SAMPLERATE):
    """Convolution with decaying noise, decorrelated per channel (a diffuse room), tail cut at the end."""
    from scipy.signal import fftconvolve

    frames = stem.shape[-1]
    length = int(settings.decay_s * samplerate)
    t = np.arange(length) / samplerate
    envelope = 10 ** (-3 * t / settings.decay_s)  # −60 dB at decay_s
    pre = int(settings.pre_delay_ms * 1e-3 * samplerate)
    wet = np.zeros_like(stem)
    for channel in range(stem.shape[0]):
        response = np.concatenate([np.zeros(pre), rng.standard_normal(length) * envelope])
        response /= np.sqrt(np.sum(response**2))
        wet[channel] = fftconvolve(stem[channel], response)[:frames]
    return (1 - settings.wet) * stem + settings.wet * wet


GUITAR_PROGRAMS = range(24, 32)


def draw_chain(rng: np.random.Generator, source: str, program: int | None = None) -> Chain:
    """A plausible chain for ``source``: guitars are often distorted, voices often reverberant."""
    eq = tuple(
        PeakEQ(
            float(np.exp(rng.uniform(np.log(80), np.log(8000)))), float(rng.uniform(-6, 6)), float(rng.uniform(0.5, 2))
        )
        for _ in range(int(rng.integers(0, 3)))
    )
    compressor = (
        Compressor(float(rng.uniform(-12, -3)), float(rng.uniform(2, 8)), float(rng.uniform(5, 60)))
        if rng.random() < 0.5
        else None
    )
    distortion_chance = 0.7 if program in GUITAR_PROGRAMS else 0.1 if source == "bass" else 0.0
    distortion = (
        Distortion(float(rng.uniform(6, 24)), float(rng.uniform(2500, 6000)), float(rng.uniform(0.6, 1.0)))
        if rng.random() < distortion_chance
        else None
    )
    reverb_chance = {"vocals": 0.8, "other": 0.6, "drums": 0.4, "bass": 0.1}[source]
    reverb = (
        Reverb(float(rng.uniform(0.3, 2.2)), float(rng.uniform(0, 40)), float(rng.uniform(0.1, 0.4)))
        if rng.random() < reverb_chance
        else None
    )
    return Chain(eq, compressor, distortion, reverb)
