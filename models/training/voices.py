"""Synthetic singing voices for generated songs: formant synthesis and espeak-ng.

A model that has heard one synthetic voice learns that voice, not "vocals". The formant voices
differ in vocal-tract size (all formants scaled), register, vibrato, spectral tilt and
breathiness; the espeak-ng voices sing by speaking one syllable per note, each at its own pitch
(``-p``) and speed (``-s``, so that the syllable fills the note), in several languages and voice
variants. Every voice sings the same kind of melody (``sung_notes``): phrases of syllables on the
song's scale with breaths between them.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

SAMPLERATE = 44100
# (F1, F2, F3) Hz of a, e, i, o, u
VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))
SYLLABLES = ("la", "na", "da", "ma", "lo", "no", "do", "ne", "li", "oh", "ah", "yeah", "ba", "so", "mi", "tu")
ESPEAK_SECONDS_AT_1_WPM = 58.0  # one syllable lasts about 58 / wpm seconds (measured, espeak-ng 1.51)


class VoiceError(ValueError):  # a missing tool, said in one line
    pass


@dataclass(frozen=True)
class FormantVoice:
    name: str
    formant_scale: float = 1.0  # vocal-tract size: < 1 a larger (lower) tract
    register_semitones: int = 0
    vibrato_depth: tuple[float, float] = (0.005, 0.015)  # relative pitch deviation
    vibrato_hz: tuple[float, float] = (4.8, 6.5)
    tilt: tuple[float, float] = (1.0, 1.6)  # harmonic k at 1/k**tilt
    breathiness: float = 0.0  # aspiration noise, relative to the voiced sound
    held_out: bool = False


@dataclass(frozen=True)
class EspeakVoice:
    name: str
    voice: str  # espeak-ng -v
    register_semitones: int = 0
    pitch_per_semitone: float = 4.0  # -p steps per semitone above the register's centre
    held_out: bool = False


Voice = FormantVoice | EspeakVoice

CLASSIC = FormantVoice("formant")  # the generator's original voice
VOICES: tuple[Voice, ...] = (
    CLASSIC,
    FormantVoice(
        "formant-bass", formant_scale=0.85, register_semitones=-12, tilt=(1.3, 1.8), vibrato_depth=(0.003, 0.01)
    ),
    FormantVoice("formant-soprano", formant_scale=1.15, register_semitones=7, vibrato_depth=(0.01, 0.025)),
    FormantVoice("formant-breathy", formant_scale=1.05, register_semitones=3, breathiness=0.3, tilt=(1.4, 2.0)),
    FormantVoice("formant-bright", formant_scale=0.95, register_semitones=-5, tilt=(0.7, 1.1), vibrato_hz=(5.5, 7.5)),
    EspeakVoice("espeak-en-m3", "en+m3", register_semitones=-12),
    EspeakVoice("espeak-en-f2", "en+f2"),
    EspeakVoice("espeak-de-m1", "de+m1", register_semitones=-12),
    EspeakVoice("espeak-es-f4", "es+f4"),
    EspeakVoice("espeak-fr-m2", "fr+m2", register_semitones=-9),
    EspeakVoice("espeak-nl-f1", "nl+f1", register_semitones=2),
    # held out: never in a training split, only in the evaluation set (`stemdeck dataset heldout`)
    FormantVoice(
        "formant-alto", formant_scale=1.1, register_semitones=2, breathiness=0.15, vibrato_hz=(4.2, 5.2), held_out=True
    ),
    EspeakVoice("espeak-it-f3", "it+f3", register_semitones=0, held_out=True),
)
TRAIN_VOICES = tuple(v for v in VOICES if not v.held_out)
HELD_OUT_VOICES = tuple(v for v in VOICES if v.held_out)


def voice_named(name: str) -> Voice:
    for voice in VOICES:
        if voice.name == name:
            return voice
    raise VoiceError(f"no voice {name!r}; voices: {', '.join(v.name for v in VOICES)}")


@dataclass
class Melody:
    """Per-frame pitch (Hz, 0 when silent), amplitude, vowel index and noise bursts, and the notes."""

    pitch: np.ndarray
    amplitude: np.ndarray
    vowel_at: np.ndarray
    noise_bursts: np.ndarray
    notes: list[tuple[int, int, int, float]]  # begin frame, end frame, MIDI note, amplitude
    register: int


def sung_notes(song, rng: np.random.Generator, frames: int, register_semitones: int = 0) -> Melody:
    """Phrases of syllables on the scale, breathing every few bars (the draws of the original generator)."""
    beat_frames = song.beat_s * SAMPLERATE
    pitch, amplitude, noise_bursts = np.zeros(frames), np.zeros(frames), np.zeros(frames)
    vowel_at = np.zeros(frames, int)
    notes = []
    register = song.root + 24 + int(rng.integers(-3, 6)) + register_semitones
    degree = int(rng.integers(0, 5))
    for bar, (_, _density, vocals) in enumerate(song.bars):
        if not vocals or bar % 4 == 3 and rng.random() < 0.5:  # phrases breathe every few bars
            continue
        rhythm = _pick(rng, [(0, 1, 2, 3), (0, 0.5, 1, 2, 2.5, 3), (0.5, 1.5, 2, 3), (0, 1.5, 2, 2.5, 3.5)])
        bar_start = 4 * bar * beat_frames
        breath = int(bar_start - 0.3 * SAMPLERATE)
        if bar % 4 == 0 and breath > 0:
            length = int(0.25 * SAMPLERATE)
            noise_bursts[breath : breath + length] += 0.05 * np.hanning(length)[: max(0, frames - breath)]
        for i, start_beat in enumerate(rhythm):
            end_beat = rhythm[i + 1] if i + 1 < len(rhythm) else 4.0
            begin = int(bar_start + start_beat * beat_frames)
            end = min(frames, int(bar_start + end_beat * beat_frames * rng.uniform(0.8, 0.98)))
            if begin >= frames or end <= begin:
                continue
            degree = int(np.clip(degree + rng.choice([-2, -1, -1, 0, 1, 1, 2, 3]), -3, 9))
            note = register + song.scale[degree % 7] + 12 * (degree // 7)
            pitch[begin:end] = 440.0 * 2 ** ((note - 69) / 12)
            length = end - begin
            attack, release = min(length // 3, int(0.03 * SAMPLERATE)), min(length // 3, int(0.06 * SAMPLERATE))
            envelope = np.ones(length)
            envelope[:attack] = np.linspace(0, 1, attack)
            envelope[length - release :] = np.linspace(1, 0, release)
            level = rng.uniform(0.6, 1.0)
            amplitude[begin:end] = envelope * level
            vowel_at[begin:end] = rng.integers(len(VOWELS))
            notes.append((begin, end, note, float(level)))
            consonant = int(0.02 * SAMPLERATE)
            if rng.random() < 0.6:
                noise_bursts[begin : begin + consonant] += (
                    0.2 * np.hanning(consonant)[: len(noise_bursts[begin : begin + consonant])]
                )
    return Melody(pitch, amplitude, vowel_at, noise_bursts, notes, register)


def sing(voice: Voice, song, rng: np.random.Generator, frames: int) -> np.ndarray:
    """``(frames,)`` float32 mono, peak 0.5: ``voice`` singing a melody drawn from ``rng``."""
    melody = sung_notes(song, rng, frames, voice.register_semitones)
    if isinstance(voice, EspeakVoice):
        return espeak_vocal(voice, melody, rng, frames)
    return formant_vocal(voice, melody, rng, frames)


# -- formant synthesis -----------------------------------------------------------------------------


def formant_vocal(voice: FormantVoice, melody: Melody, rng: np.random.Generator, frames: int) -> np.ndarray:
    from scipy.signal import lfilter

    voiced = melody.pitch > 0
    smooth = _glide(np.where(voiced, melody.pitch, np.nan))
    t = np.arange(frames) / SAMPLERATE
    depth, rate = rng.uniform(*voice.vibrato_depth), rng.uniform(*voice.vibrato_hz)
    vibrato = 1 + depth * np.sin(2 * np.pi * rate * t) * _onset_ramp(voiced)
    phase = 2 * np.pi * np.cumsum(np.nan_to_num(smooth, nan=200.0) * vibrato) / SAMPLERATE
    harmonics = np.zeros(frames)
    tilt = rng.uniform(*voice.tilt)
    for k in range(1, 40):
        audible = (k * np.nan_to_num(smooth, nan=0.0)) < 0.45 * SAMPLERATE
        harmonics += audible * np.sin(k * phase) / k**tilt
    source = harmonics * melody.amplitude
    out = np.zeros(frames)
    for v, formants in enumerate(VOWELS):
        part = np.where(melody.vowel_at == v, source, 0.0)
        if not part.any():
            continue
        for formant_hz, bandwidth_hz in zip(formants, (80, 100, 140), strict=True):
            shifted = formant_hz * voice.formant_scale * rng.uniform(0.92, 1.1)
            r = np.exp(-np.pi * bandwidth_hz / SAMPLERATE)
            out += lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * shifted / SAMPLERATE), r * r], part)
    breaths = _band_noise(rng.standard_normal(frames) * melody.noise_bursts, 3000.0 * voice.formant_scale)
    mono = out + 4 * breaths
    if voice.breathiness > 0:  # aspiration through the vowels, as loud as the voice's own RMS allows
        aspiration = _band_noise(rng.standard_normal(frames) * melody.amplitude, 2500.0 * voice.formant_scale)
        scale = np.sqrt(np.mean(out**2) / max(np.mean(aspiration**2), 1e-12))
        mono = mono + voice.breathiness * scale * aspiration
    peak = np.abs(mono).max()
    return (mono / peak * 0.5 if peak > 0 else mono).astype(np.float32)


def _band_noise(noise: np.ndarray, centre_hz: float) -> np.ndarray:
    from scipy.signal import lfilter

    r = np.exp(-np.pi * 2000 / SAMPLERATE)
    return lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * centre_hz / SAMPLERATE), r**2], noise)


def _glide(pitch: np.ndarray, glide_frames: int = int(0.04 * SAMPLERATE)) -> np.ndarray:
    """Portamento: a one-pole smoother over the voiced pitch (the unvoiced gaps stay NaN)."""
    from scipy.signal import lfilter

    voiced = ~np.isnan(pitch)
    filled = np.interp(np.arange(len(pitch)), np.flatnonzero(voiced), pitch[voiced]) if voiced.any() else pitch
    a = np.exp(-1.0 / glide_frames)
    smooth = lfilter([1 - a], [1, -a], np.log(np.maximum(filled, 1.0)), zi=[np.log(max(filled[0], 1.0)) * a])[0]
    return np.where(voiced, np.exp(smooth), np.nan)


def _onset_ramp(voiced: np.ndarray, delay_s: float = 0.25) -> np.ndarray:
    """Vibrato that sets in after a note starts, as singers do."""
    starts = np.flatnonzero(voiced & ~np.concatenate([[False], voiced[:-1]]))
    index = np.arange(len(voiced))
    marks = np.zeros(len(voiced), int)
    marks[starts] = starts
    last_start = np.maximum.accumulate(marks)
    runs = np.where(voiced, index - last_start + 1, 0)
    return np.clip(runs / (delay_s * SAMPLERATE), 0, 1)


def _pick(rng: np.random.Generator, options: list):
    return options[rng.integers(len(options))]


# -- espeak-ng -------------------------------------------------------------------------------------


def espeak_vocal(voice: EspeakVoice, melody: Melody, rng: np.random.Generator, frames: int) -> np.ndarray:
    """One spoken syllable per note, at the note's place, pitch step and length."""
    out = np.zeros(frames)
    centre = melody.register + 5
    cache: dict[tuple[str, int, int], np.ndarray] = {}
    for begin, end, note, level in melody.notes:
        syllable = SYLLABLES[rng.integers(len(SYLLABLES))]
        pitch = int(np.clip(50 + voice.pitch_per_semitone * (note - centre), 0, 99))
        speed_wpm = int(np.clip(ESPEAK_SECONDS_AT_1_WPM * SAMPLERATE / (end - begin), 80, 450))
        key = (syllable, pitch, speed_wpm)
        if key not in cache:
            cache[key] = espeak_syllable(voice.voice, syllable, pitch, speed_wpm)
        audio = cache[key][: end - begin]
        fade = min(len(audio), int(0.02 * SAMPLERATE))
        audio = audio.copy()
        audio[len(audio) - fade :] *= np.linspace(1, 0, fade)
        out[begin : begin + len(audio)] += level * audio
    peak = np.abs(out).max()
    return (out / peak * 0.5 if peak > 0 else out).astype(np.float32)


def espeak_syllable(voice: str, text: str, pitch: int, speed_wpm: int) -> np.ndarray:
    """espeak-ng's rendering of ``text``, at 44.1 kHz, silence trimmed."""
    import soundfile as sf
    from scipy.signal import resample_poly

    executable = shutil.which("espeak-ng")
    if executable is None:
        raise VoiceError("espeak-ng is not installed (Debian: apt install espeak-ng)")
    command = [executable, "-v", voice, "-p", str(pitch), "-s", str(speed_wpm), "-z", "--stdout", text]
    # espeak-ng opens PulseAudio even for --stdout; a reachable (or new) server draws from the C
    # rand() that its breath noise uses, and the same text came out differently: no server, no draw
    environment = {**os.environ, "PULSE_SERVER": "/nonexistent"}
    result = subprocess.run(command, capture_output=True, env=environment)
    if result.returncode != 0 or not result.stdout:
        raise VoiceError(f"espeak-ng failed for voice {voice}: {result.stderr.decode(errors='replace').strip()[:200]}")
    audio, rate = sf.read(io.BytesIO(result.stdout), dtype="float64")
    audio = resample_poly(audio, SAMPLERATE, rate) if rate != SAMPLERATE else audio
    loud = np.flatnonzero(np.abs(audio) > 0.01 * max(np.abs(audio).max(), 1e-9))
    return audio[loud[0] : loud[-1] + 1] if len(loud) else audio
