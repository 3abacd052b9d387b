"""Procedural multitracks: composed songs with each stem rendered on its own, in the MUSDB layout.

Drums, bass and other are General MIDI parts rendered by FluidSynth with a GM SoundFont
(Debian's fluid-soundfont-gm). The vocal is formant synthesis, written here: a monophonic lead
whose syllables have consonant onsets, vowel formants, pitch glides, delayed vibrato and breaths
between phrases. GM "voice" programs are sustained pads with no syllables, and espeak-ng speaks
rather than sings; formants give a voice-like stem that still varies in every way a model could
learn from (pitch, vowel, timing, timbre). Deterministic for a seed: the composition is drawn from
one seeded generator and FluidSynth renders MIDI deterministically.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLERATE = 44100
SOURCES = ("drums", "bass", "other", "vocals")
SOUNDFONT_PATHS = (Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), Path("/usr/share/sounds/sf2/default-GM.sf2"))
TICKS_PER_BEAT = 480
DRUM_CHANNEL = 9
STEM_RMS_DBFS = -20.0  # each stem's loudness before its random gain (RMS over the song, both channels)
STEM_GAIN_SPREAD_DB = 6.0  # each stem is then turned down by up to this much
MAJOR, MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10)
PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 3), (0, 0, 3, 4), (1, 4, 0, 0), (0, 6, 5, 4))
BASS_PROGRAMS = tuple(range(32, 40))
OTHER_PROGRAMS = (*range(0, 8), *range(24, 32), 48, 49, 50, 51, *range(88, 96), 16, 17, 19)
# (F1, F2, F3) Hz of a, e, i, o, u
VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240))
SECTIONS = (
    ("intro", 2, 0.4, False),
    ("verse", 8, 0.7, True),
    ("chorus", 8, 1.0, True),
    ("bridge", 2, 0.5, False),
    ("verse", 8, 0.7, True),
    ("chorus", 8, 1.0, True),
)


class SynthError(ValueError):  # a missing tool, said in one line
    pass


def find_soundfont() -> Path:
    for path in SOUNDFONT_PATHS:
        if path.exists():
            return path
    raise SynthError("no General MIDI SoundFont; install one (Debian: apt install fluid-soundfont-gm)")


def _fluidsynth() -> str:
    path = shutil.which("fluidsynth")
    if path is None:
        raise SynthError("fluidsynth is not installed (Debian: apt install fluidsynth)")
    return path


@dataclass(frozen=True)
class Song:
    bpm: float
    root: int  # MIDI note of the key's tonic, bass octave
    scale: tuple[int, ...]
    progression: tuple[int, ...]
    bars: list[tuple[str, float, bool]]  # per bar: section, density, vocals on
    programs: dict[str, int]
    pans: dict[str, int]  # MIDI CC10 values
    gains_db: dict[str, float]

    @property
    def beat_s(self) -> float:
        return 60.0 / self.bpm


def compose(rng: np.random.Generator, seconds: float) -> Song:
    bpm = float(rng.uniform(78, 150))
    bar_s = 4 * 60.0 / bpm
    bars_needed = int(np.ceil(seconds / bar_s)) + 1
    bars: list[tuple[str, float, bool]] = []
    start = rng.integers(len(SECTIONS))
    while len(bars) < bars_needed:
        for name, length, density, vocals in SECTIONS[start:] + SECTIONS[:start]:
            bars += [(name, density * rng.uniform(0.8, 1.2), vocals)] * length
        start = 0
    return Song(
        bpm=bpm,
        root=int(rng.integers(36, 48)),
        scale=MAJOR if rng.random() < 0.5 else MINOR,
        progression=PROGRESSIONS[rng.integers(len(PROGRESSIONS))],
        bars=bars[:bars_needed],
        programs={
            "bass": int(rng.choice(BASS_PROGRAMS)),
            "other": int(rng.choice(OTHER_PROGRAMS)),
            "other2": int(rng.choice(OTHER_PROGRAMS)),
        },
        pans={s: int(np.clip(64 + rng.normal(0, 20), 10, 118)) for s in SOURCES},
        gains_db={s: float(rng.uniform(-STEM_GAIN_SPREAD_DB, 0)) for s in SOURCES},
    )


def _pick(rng: np.random.Generator, options: list):
    return options[rng.integers(len(options))]


def _chord(song: Song, degree: int) -> list[int]:
    """Triad (sometimes a seventh) on ``degree`` of the song's scale, as semitones above the root."""
    scale = song.scale
    return [scale[(degree + step) % 7] + 12 * ((degree + step) // 7) for step in (0, 2, 4)]


# -- MIDI parts ------------------------------------------------------------------------------------


def _midi_file(song: Song, events: list[tuple[float, list[int]]], channel: int, program: int | None, pan: int):
    import mido

    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=int(mido.bpm2tempo(song.bpm)), time=0))
    if program is not None:
        track.append(mido.Message("program_change", channel=channel, program=program, time=0))
    track.append(mido.Message("control_change", channel=channel, control=10, value=pan, time=0))
    last = 0
    for beat, data in sorted(events, key=lambda e: (e[0], e[1][0] & 0xF0 == 0x90)):
        tick = int(round(beat * TICKS_PER_BEAT))
        track.append(mido.Message.from_bytes(data).copy(time=tick - last))
        last = tick
    midi = mido.MidiFile(ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(track)
    return midi


def _note(events, channel: int, start_beat: float, length_beats: float, note: int, velocity: int) -> None:
    events.append((start_beat, [0x90 | channel, int(np.clip(note, 0, 127)), int(np.clip(velocity, 1, 127))]))
    events.append((start_beat + length_beats, [0x80 | channel, int(np.clip(note, 0, 127)), 0]))


def drum_part(song: Song, rng: np.random.Generator) -> list:
    events = []
    kick_pattern = _pick(rng, [(0, 2), (0, 1.5, 2), (0, 2.5), (0, 0.75, 2, 2.5)])
    hat = rng.choice([42, 44, 46, 51])  # closed, pedal, open hat, ride
    for bar, (_, density, _) in enumerate(song.bars):
        beat0 = 4 * bar
        for k in kick_pattern:
            _note(events, DRUM_CHANNEL, beat0 + k, 0.25, 36, 100 + rng.integers(-10, 10))
        for s in (1, 3):
            _note(events, DRUM_CHANNEL, beat0 + s, 0.25, 38 if rng.random() > 0.1 else 40, 95 + rng.integers(-15, 10))
        step = 0.25 if density > 0.9 else 0.5
        for h in np.arange(0, 4, step):
            if rng.random() < min(1.0, density + 0.2):
                _note(events, DRUM_CHANNEL, beat0 + h, 0.1, int(hat), 60 + rng.integers(0, 30))
        if bar % 8 == 7 and rng.random() < 0.7:  # a fill into the next section
            for h in np.arange(2, 4, 0.25):
                _note(events, DRUM_CHANNEL, beat0 + h, 0.2, int(rng.choice([41, 43, 45, 47, 48, 50, 38])), 90)
        if bar % 8 == 0:
            _note(events, DRUM_CHANNEL, beat0, 1.0, 49, 100)
    return events


def bass_part(song: Song, rng: np.random.Generator) -> list:
    events, channel = [], 0
    style = rng.integers(3)
    for bar, (_, density, _) in enumerate(song.bars):
        root = song.root + _chord(song, song.progression[bar % len(song.progression)])[0]
        beat0 = 4 * bar
        if style == 0:  # roots on the beat
            hits = [(b, 0.9, root) for b in range(4)]
        elif style == 1:  # root and fifth, eighths
            hits = [(b * 0.5, 0.45, root + (7 if b % 4 == 2 else 0)) for b in range(8)]
        else:  # syncopated with the octave
            hits = [(0, 1.4, root), (1.5, 0.5, root + 12), (2, 1.0, root), (3.5, 0.5, root + 7)]
        for start, length, note in hits:
            if rng.random() < 0.5 + 0.5 * density:
                _note(events, channel, beat0 + start, length, note, 85 + rng.integers(-10, 15))
    return events


def other_part(song: Song, rng: np.random.Generator, channel: int, arpeggio: bool) -> list:
    events = []
    octave = 12 * int(rng.integers(1, 3))
    for bar, (_, density, _) in enumerate(song.bars):
        chord = [song.root + octave + n for n in _chord(song, song.progression[bar % len(song.progression)])]
        beat0 = 4 * bar
        if arpeggio:
            for i, start in enumerate(np.arange(0, 4, 0.5)):
                if rng.random() < density:
                    _note(events, channel, beat0 + start, 0.45, chord[i % 3] + 12 * (i // 3 % 2), 70)
        else:
            for start, length in ((0, 2), (2, 2)) if density > 0.6 else ((0, 4),):
                for note in chord:
                    _note(events, channel, beat0 + start, length * 0.95, note, 55 + rng.integers(0, 20))
    return events


def render_midi(midi, frames: int, soundfont: Path, gain: float = 0.5) -> np.ndarray:
    """``(2, frames)`` float32 from FluidSynth (reverb and chorus off: each stem stays dry and exact)."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as folder:
        mid, wav = Path(folder) / "part.mid", Path(folder) / "part.wav"
        midi.save(mid)
        result = subprocess.run(
            [
                _fluidsynth(),
                "-ni",
                "-q",
                "-R",
                "0",
                "-C",
                "0",
                "-g",
                str(gain),
                "-r",
                str(SAMPLERATE),
                "-F",
                str(wav),
                "-T",
                "wav",
                str(soundfont),
                str(mid),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not wav.exists():
            raise SynthError(f"fluidsynth failed: {(result.stderr or result.stdout).strip()[:200]}")
        audio, _ = sf.read(wav, dtype="float32", always_2d=True)
    audio = audio.T[:2]
    if audio.shape[-1] < frames:
        audio = np.pad(audio, ((0, 0), (0, frames - audio.shape[-1])))
    return audio[:, :frames]


# -- the vocal ---------------------------------------------------------------------------------------


def vocal_part(song: Song, rng: np.random.Generator, frames: int) -> np.ndarray:
    """A sung lead: phrases of syllables on the scale, with glides, vibrato and breaths."""
    from scipy.signal import lfilter

    beat_frames = song.beat_s * SAMPLERATE
    pitch = np.zeros(frames)
    amplitude = np.zeros(frames)
    vowel_at = np.zeros(frames, int)
    noise_bursts = np.zeros(frames)
    register = song.root + 24 + int(rng.integers(-3, 6))
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
            amplitude[begin:end] = envelope * rng.uniform(0.6, 1.0)
            vowel_at[begin:end] = rng.integers(len(VOWELS))
            consonant = int(0.02 * SAMPLERATE)
            if rng.random() < 0.6:
                noise_bursts[begin : begin + consonant] += (
                    0.2 * np.hanning(consonant)[: len(noise_bursts[begin : begin + consonant])]
                )
    voiced = pitch > 0
    smooth = _glide(np.where(voiced, pitch, np.nan))
    t = np.arange(frames) / SAMPLERATE
    vibrato = 1 + rng.uniform(0.005, 0.015) * np.sin(2 * np.pi * rng.uniform(4.8, 6.5) * t) * _onset_ramp(voiced)
    phase = 2 * np.pi * np.cumsum(np.nan_to_num(smooth, nan=200.0) * vibrato) / SAMPLERATE
    harmonics = np.zeros(frames)
    tilt = rng.uniform(1.0, 1.6)
    for k in range(1, 40):
        audible = (k * np.nan_to_num(smooth, nan=0.0)) < 0.45 * SAMPLERATE
        harmonics += audible * np.sin(k * phase) / k**tilt
    source = harmonics * amplitude
    out = np.zeros(frames)
    for v, formants in enumerate(VOWELS):
        part = np.where(vowel_at == v, source, 0.0)
        if not part.any():
            continue
        for formant_hz, bandwidth_hz in zip(formants, (80, 100, 140), strict=True):
            shifted = formant_hz * rng.uniform(0.92, 1.1)
            r = np.exp(-np.pi * bandwidth_hz / SAMPLERATE)
            out += lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * shifted / SAMPLERATE), r * r], part)
    breath_r = np.exp(-np.pi * 2000 / SAMPLERATE)
    breaths = lfilter(
        [1 - breath_r],
        [1, -2 * breath_r * np.cos(2 * np.pi * 3000 / SAMPLERATE), breath_r**2],
        rng.standard_normal(frames) * noise_bursts,
    )
    mono = out + 4 * breaths
    peak = np.abs(mono).max()
    return (mono / peak * 0.5 if peak > 0 else mono).astype(np.float32)


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
    runs = np.zeros(len(voiced))
    count = 0
    for i, on in enumerate(voiced):
        count = count + 1 if on else 0
        runs[i] = count
    return np.clip(runs / (delay_s * SAMPLERATE), 0, 1)


def _pan(mono: np.ndarray, cc10: int) -> np.ndarray:
    angle = (cc10 / 127) * np.pi / 2
    return np.stack([mono * np.cos(angle), mono * np.sin(angle)]).astype(np.float32)


# -- songs and datasets -----------------------------------------------------------------------------


def synth_song(seed: int, seconds: float, soundfont: Path | None = None) -> dict[str, np.ndarray]:
    """The four stems of song ``seed``, each ``(2, frames)`` float32, summing under full scale."""
    soundfont = soundfont or find_soundfont()
    rng = np.random.default_rng(seed)
    song = compose(rng, seconds)
    frames = int(seconds * SAMPLERATE)
    other = other_part(song, rng, 0, arpeggio=False) + other_part(song, rng, 1, arpeggio=True)
    other_midi = _midi_file(
        song, [e for e in other if e[1][0] & 0x0F == 0], 0, song.programs["other"], song.pans["other"]
    )
    second = _midi_file(
        song, [e for e in other if e[1][0] & 0x0F == 1], 1, song.programs["other2"], 127 - song.pans["other"]
    )
    stems = {
        "drums": render_midi(
            _midi_file(song, drum_part(song, rng), DRUM_CHANNEL, None, song.pans["drums"]), frames, soundfont
        ),
        "bass": render_midi(
            _midi_file(song, bass_part(song, rng), 0, song.programs["bass"], song.pans["bass"]), frames, soundfont
        ),
        "other": render_midi(other_midi, frames, soundfont) + render_midi(second, frames, soundfont) * 0.7,
        "vocals": _pan(vocal_part(song, rng, frames), song.pans["vocals"]),
    }
    for name in SOURCES:  # level by loudness, not peak: drums' transients would leave them ~7 dB quieter
        rms = np.sqrt(np.mean(np.square(stems[name], dtype=np.float64)))
        stems[name] = stems[name] / max(rms, 1e-9) * 10 ** ((STEM_RMS_DBFS + song.gains_db[name]) / 20)
    mix_peak = np.abs(sum(stems.values())).max()
    if mix_peak > 0.98:
        stems = {name: stem * (0.98 / mix_peak) for name, stem in stems.items()}
    return {name: stem.astype(np.float32) for name, stem in stems.items()}


def write_track(folder: Path, stems: dict[str, np.ndarray]) -> None:
    """Stems as 16-bit WAV; the mixture as 24-bit, the exact sum of the 16-bit stems."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, stem in stems.items():
        sf.write(str(folder / f"{name}.wav"), stem.T, SAMPLERATE, subtype="PCM_16")
        written.append(sf.read(str(folder / f"{name}.wav"), dtype="float64", always_2d=True)[0])  # as readers see it
    sf.write(str(folder / "mixture.wav"), sum(written), SAMPLERATE, subtype="PCM_24")


def song_seed(seed: int, index: int) -> int:
    return seed * 100_000 + index


def track_folder(out: Path, split: str, seed: int, index: int) -> Path:
    return Path(out) / split / f"song-{song_seed(seed, index):08d}"


def synth_dataset(
    out: Path, tracks: int, seconds: float, seed: int, split: str = "train", progress: bool = False
) -> list[Path]:
    from tqdm import tqdm

    soundfont = find_soundfont()
    folders = []
    for index in tqdm(range(tracks), desc=f"synth {split}", disable=not progress, unit="track"):
        folder = track_folder(out, split, seed, index)
        write_track(folder, synth_song(song_seed(seed, index), seconds, soundfont))
        folders.append(folder)
    return folders
