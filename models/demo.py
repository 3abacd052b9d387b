"""A small synthesised song, so there is always something to separate (no download needed).

Four parts on a 120 BPM grid: drums (kick, snare, hats), a bass line, chords, and a
voice-like lead (a glottal pulse train through vowel formants, with vibrato).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from stemdeck.models.butterworth import convolve

SAMPLERATE = 44100
BEAT_S = 0.5
CHORDS_HZ = ((220.0, 277.18, 329.63), (196.0, 246.94, 293.66), (174.61, 220.0, 261.63), (196.0, 246.94, 329.63))
MELODY_HZ = (440.0, 493.88, 554.37, 493.88, 440.0, 392.0, 440.0, 329.63)
VOWEL_FORMANTS_HZ = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240))
# Loudness of each stem before the mix is scaled to its peak: the voice leads, as in a song.
STEM_RMS_DBFS = {"drums": -20.0, "bass": -21.0, "other": -23.0, "vocals": -18.0}
MIX_PEAK = 0.89  # about -1 dBFS
RESONANCE_TAIL = 1e-9  # of its first sample, where a formant's impulse response is cut


def _envelope(length: int, attack_s: float, decay_s: float) -> np.ndarray:
    t = np.arange(length) / SAMPLERATE
    return np.minimum(t / attack_s, 1.0) * np.exp(-t / decay_s)


def _drums(frames: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(frames)
    hit = int(0.3 * SAMPLERATE)
    t = np.arange(hit) / SAMPLERATE
    kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-t * 30)) * t) * np.exp(-t * 12)
    snare = rng.standard_normal(hit) * np.exp(-t * 25) * 0.5
    hat = np.diff(rng.standard_normal(hit + 1)) * np.exp(-t * 80) * 0.15
    for beat, start in enumerate(range(0, frames, int(BEAT_S * SAMPLERATE / 2))):
        part = [hat] + ([kick] if beat % 4 == 0 else []) + ([snare] if beat % 4 == 2 else [])
        for sound in part:
            end = min(frames, start + hit)
            out[start:end] += sound[: end - start]
    return out


def _tone(frequency_hz: float, length: int, harmonics: int = 4) -> np.ndarray:
    t = np.arange(length) / SAMPLERATE
    return sum(np.sin(2 * np.pi * frequency_hz * k * t) / k for k in range(1, harmonics + 1))


def _bass_and_chords(frames: int) -> tuple[np.ndarray, np.ndarray]:
    bass, chords = np.zeros(frames), np.zeros(frames)
    bar = int(4 * BEAT_S * SAMPLERATE)
    for index, start in enumerate(range(0, frames, bar)):
        length = min(bar, frames - start)
        chord = CHORDS_HZ[index % len(CHORDS_HZ)]
        chords[start : start + length] = sum(_tone(f, length, 3) for f in chord) * 0.12 * _envelope(length, 0.05, 3.0)
        note = int(BEAT_S * SAMPLERATE)
        for n in range(0, length, note):
            seg = min(note, length - n)
            bass[start + n : start + n + seg] = _tone(chord[0] / 2, seg, 2) * 0.4 * _envelope(seg, 0.005, 0.3)
    return bass, chords


def _voice(frames: int) -> np.ndarray:
    """Pulse train at the melody's pitch with vibrato, shaped by vowel formant resonances."""
    t = np.arange(frames) / SAMPLERATE
    note_index = (t / BEAT_S).astype(int)
    pitch = np.array(MELODY_HZ)[note_index % len(MELODY_HZ)] * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = np.cumsum(pitch) / SAMPLERATE
    source = np.diff(np.floor(phase), prepend=0.0)
    out = np.zeros(frames)
    for formant_hz, bandwidth_hz in zip(VOWEL_FORMANTS_HZ[0], (80, 90, 120), strict=True):
        out += _resonate(source, formant_hz, bandwidth_hz)
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * (t / BEAT_S % 1.0))
    return out * syllables * 0.6


def _resonate(signal: np.ndarray, centre_hz: float, bandwidth_hz: float) -> np.ndarray:
    """``signal`` through a two-pole resonator (gain ``1 - r``, poles at ``r e^(±iθ)``), as the
    convolution with its impulse response ``(1 - r) r^n sin((n + 1) θ) / sin θ``, cut where it
    has decayed below :data:`RESONANCE_TAIL`. The same as ``scipy.signal.lfilter`` within that,
    without importing scipy.signal: 63 MB, which `stemdeck separate`'s first run paid for the
    demo song it times precisions on, and nothing else there needs."""
    r = np.exp(-np.pi * bandwidth_hz / SAMPLERATE)
    theta = 2 * np.pi * centre_hz / SAMPLERATE
    taps = int(np.ceil(np.log(RESONANCE_TAIL) / np.log(r)))
    n = np.arange(taps)
    response = (1 - r) * r**n * np.sin((n + 1) * theta) / np.sin(theta)
    return convolve(signal, response)[: signal.size]


def _rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))


def demo_stems(seconds: float = 12.0, seed: int = 0) -> dict[str, np.ndarray]:
    """The four stems, each ``(2, frames)`` float32, panned apart, levelled by loudness.

    Each stem sits at its ``STEM_RMS_DBFS`` (as a mix engineer would level them, so muting any
    one of them is plainly audible), then all together are scaled so the mix peaks at
    ``MIX_PEAK``.
    """
    rng = np.random.default_rng(seed)
    frames = int(seconds * SAMPLERATE)
    bass, chords = _bass_and_chords(frames)
    parts = {
        "drums": (_drums(frames, rng), 0.5),
        "bass": (bass, 0.5),
        "other": (chords, 0.3),
        "vocals": (_voice(frames), 0.55),
    }
    stems = {}
    for name, (signal, pan) in parts.items():
        stereo = np.stack([signal * (1 - pan), signal * pan])
        stems[name] = stereo / max(_rms(stereo), 1e-12) * 10 ** (STEM_RMS_DBFS[name] / 20)
    peak = max(float(np.abs(sum(stems.values())).max()), 1e-12)
    scale = min(1.0, MIX_PEAK / peak)
    return {name: (stem * scale).astype(np.float32) for name, stem in stems.items()}


def write_demo(path: str | Path, seconds: float = 12.0, audio_format: str = "WAV") -> None:
    """The demo song's mix, in ``audio_format`` (a soundfile format name) at its default subtype."""
    mix = sum(demo_stems(seconds).values())
    sf.write(str(path), mix.T, SAMPLERATE, format=audio_format, subtype=sf.default_subtype(audio_format))
