"""Procedural multitracks: composed songs with each stem rendered on its own, in the MUSDB layout.

Drums, bass and other are General MIDI parts rendered by FluidSynth with a GM SoundFont. The
vocal is a synthetic singer (``voices.py``): formant synthesis, or espeak-ng singing a syllable per
note. Two kinds of song:

- classic (no ``Variety``): the generator's original songs, FluidR3 GM and the original formant
  voice, dry; the bundled model's own test songs are these, and they stay bit-identical.
- wide (a ``Variety``): each part from one of several SoundFonts, a voice drawn from several,
  per-note velocity and articulation (length, timing) variety, a wider choice of "other"
  instruments, and a studio chain per stem (``effects.py``). One SoundFont and two voices are
  held out: the training split refuses them (``check_trainable``), the evaluation set
  (``HELD_OUT``, `stemdeck dataset heldout`) uses only them.

Deterministic for a seed: the composition is drawn from one seeded generator, the wide choices
from a second one, and FluidSynth and espeak-ng render deterministically.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stemdeck.models.training.effects import Chain, draw_chain
from stemdeck.models.training.voices import CLASSIC, HELD_OUT_VOICES, TRAIN_VOICES, Voice, sing

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
# wide songs: every melodic GM family but basses, percussion and sound effects
WIDE_OTHER_PROGRAMS = (*range(0, 32), *range(40, 96))
PLAN_FILE = "synth.json"  # in each track folder: the SoundFonts, voice and effects that made it
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


@dataclass(frozen=True)
class SoundFont:
    name: str
    path: Path
    package: str  # the Debian package that installs it
    held_out: bool = False

    def require(self) -> Path:
        if not self.path.exists():
            raise SynthError(f"SoundFont {self.name} is missing ({self.path}); install it: apt install {self.package}")
        return self.path


# Freely licensed GM SoundFonts that Debian packages, small enough to load fast (FluidR3 Mono and
# MuseScore General are .sf3, whose samples FluidSynth decompresses at every start: ~8 s each).
# MuseScore General is held out: training never uses it, the evaluation set only it. TimGM6mb is
# the smallest (6 MB), the one the tests render with.
SOUNDFONTS = (
    SoundFont("fluidr3", Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), "fluid-soundfont-gm"),
    SoundFont("timgm6mb", Path("/usr/share/sounds/sf2/TimGM6mb.sf2"), "timgm6mb-soundfont"),
    SoundFont("csound-gm", Path("/usr/share/sounds/sf2/sf_GMbank.sf2"), "csound-soundfont"),  # public domain
    SoundFont(
        "musescore",
        Path("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"),
        "musescore-general-soundfont-small",
        held_out=True,
    ),
)
TRAIN_SOUNDFONTS = tuple(f for f in SOUNDFONTS if not f.held_out)
HELD_OUT_SOUNDFONTS = tuple(f for f in SOUNDFONTS if f.held_out)


@dataclass(frozen=True)
class Variety:
    """What a wide song may be made of; each song draws its own from these."""

    soundfonts: tuple[SoundFont, ...] = TRAIN_SOUNDFONTS
    voices: tuple[Voice, ...] = TRAIN_VOICES
    effects: bool = True
    articulation: bool = True


WIDE = Variety()
HELD_OUT = Variety(HELD_OUT_SOUNDFONTS, HELD_OUT_VOICES)


@dataclass(frozen=True)
class Plan:
    """The wide choices of one song: a SoundFont per part, the voice, the other programs, a chain per stem."""

    soundfonts: dict[str, SoundFont]  # drums, bass, other, other2
    voice: Voice
    programs: dict[str, int]
    chains: dict[str, Chain] = field(default_factory=dict)
    articulation: bool = False

    def describe(self) -> dict:
        return {
            "soundfonts": {part: font.name for part, font in self.soundfonts.items()},
            "voice": self.voice.name,
            "programs": self.programs,
            "effects": {s: _chain_names(c) for s, c in self.chains.items()},
            "articulation": self.articulation,
        }


def _chain_names(chain: Chain) -> list[str]:
    return [n for n in ("eq", "compressor", "distortion", "reverb") if getattr(chain, n)]


def check_trainable(variety: Variety) -> None:
    """Refuse a held-out SoundFont or voice for training: the evaluation set must stay unseen."""
    held = [f.name for f in variety.soundfonts if f.held_out] + [v.name for v in variety.voices if v.held_out]
    if held:
        raise SynthError(
            f"{', '.join(held)} {'is' if len(held) == 1 else 'are'} held out for evaluation; "
            "a training split never uses them (render them with `stemdeck dataset heldout`)"
        )


def check_training_tracks(folders: list[Path]) -> None:
    """Refuse training tracks whose plan names a held-out SoundFont or voice (tracks without a plan pass)."""
    held = {f.name for f in HELD_OUT_SOUNDFONTS} | {v.name for v in HELD_OUT_VOICES}
    for folder in folders:
        plan_file = Path(folder) / PLAN_FILE
        if not plan_file.exists():
            continue
        plan = json.loads(plan_file.read_text())
        used = set(plan.get("soundfonts", {}).values()) | {plan.get("voice")}
        if used & held:
            raise SynthError(
                f"{folder} was made with {', '.join(sorted(used & held))}, held out for evaluation; "
                "move it out of the training split"
            )


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


def _pan(mono: np.ndarray, cc10: int) -> np.ndarray:
    angle = (cc10 / 127) * np.pi / 2
    return np.stack([mono * np.cos(angle), mono * np.sin(angle)]).astype(np.float32)


# -- songs and datasets -----------------------------------------------------------------------------


def draw_plan(seed: int, song: Song, variety: Variety) -> Plan:
    """The wide choices of song ``seed``, from a generator of their own (the composition's stays as it was)."""
    rng = np.random.default_rng([seed, 17])
    fonts = variety.soundfonts
    soundfonts = {part: fonts[rng.integers(len(fonts))] for part in ("drums", "bass", "other", "other2")}
    voice = variety.voices[rng.integers(len(variety.voices))]
    programs = {
        "bass": song.programs["bass"],
        "other": int(rng.choice(WIDE_OTHER_PROGRAMS)),
        "other2": int(rng.choice(WIDE_OTHER_PROGRAMS)),
    }
    chains = {}
    if variety.effects:
        chains = {s: draw_chain(rng, s, programs["other"] if s == "other" else None) for s in SOURCES}
    return Plan(soundfonts, voice, programs, chains, variety.articulation)


def articulate(events: list, rng: np.random.Generator, lengths: bool = True) -> list:
    """Per-note velocity (a part's level, per-note spread, accents on the beat), note length
    (staccato to legato) and timing (a human's few milliseconds) for one part's note pairs."""
    offset, spread = rng.uniform(-35, 15), rng.uniform(3, 25)
    length_factor = rng.uniform(0.3, 1.15) if lengths else 1.0
    jitter_beats = rng.uniform(0.0, 0.03)
    out = []
    for on, off in zip(events[0::2], events[1::2], strict=True):
        status, note, velocity = on[1]
        accent = 12 if abs(on[0] - round(on[0])) < 1e-6 else 0
        velocity = int(np.clip(velocity + offset + accent + rng.normal(0, spread), 1, 127))
        start = max(0.0, on[0] + rng.normal(0, jitter_beats))
        length = max(0.05, (off[0] - on[0]) * length_factor)
        out += [(start, [status, note, velocity]), (start + length, off[1])]
    return out


def synth_song(
    seed: int, seconds: float, soundfont: Path | None = None, variety: Variety | None = None
) -> dict[str, np.ndarray]:
    """The four stems of song ``seed``, each ``(2, frames)`` float32, summing under full scale."""
    stems, _ = render_song(seed, seconds, soundfont, variety)
    return stems


def render_song(
    seed: int, seconds: float, soundfont: Path | None = None, variety: Variety | None = None
) -> tuple[dict[str, np.ndarray], Plan | None]:
    """Stems and, for a wide song, its plan. Without ``variety`` the classic song, bit for bit."""
    rng = np.random.default_rng(seed)
    song = compose(rng, seconds)
    frames = int(seconds * SAMPLERATE)
    if variety is None:
        font = soundfont or find_soundfont()
        plan = None
        fonts = dict.fromkeys(("drums", "bass", "other", "other2"), font)
        programs, voice = song.programs, CLASSIC
    else:
        plan = draw_plan(seed, song, variety)
        fonts = {part: f.require() for part, f in plan.soundfonts.items()}
        programs, voice = plan.programs, plan.voice
    vary = _articulator(seed, plan)
    other = other_part(song, rng, 0, arpeggio=False) + other_part(song, rng, 1, arpeggio=True)
    first = vary([e for e in other if e[1][0] & 0x0F == 0], True)
    second = vary([e for e in other if e[1][0] & 0x0F == 1], True)
    other_midi = _midi_file(song, first, 0, programs["other"], song.pans["other"])
    second_midi = _midi_file(song, second, 1, programs["other2"], 127 - song.pans["other"])
    drums = vary(drum_part(song, rng), False)
    bass = vary(bass_part(song, rng), True)
    stems = {
        "drums": render_midi(_midi_file(song, drums, DRUM_CHANNEL, None, song.pans["drums"]), frames, fonts["drums"]),
        "bass": render_midi(_midi_file(song, bass, 0, programs["bass"], song.pans["bass"]), frames, fonts["bass"]),
        "other": render_midi(other_midi, frames, fonts["other"])
        + render_midi(second_midi, frames, fonts["other2"]) * 0.7,
        "vocals": _pan(sing(voice, song, rng, frames), song.pans["vocals"]),
    }
    if plan is not None:
        stems = {name: plan.chains[name].apply(stem, seed) if plan.chains else stem for name, stem in stems.items()}
    return level_stems(stems, song.gains_db), plan


def _articulator(seed: int, plan: Plan | None):
    if plan is None or not plan.articulation:
        return lambda events, lengths: events
    rng = np.random.default_rng([seed, 23])
    return lambda events, lengths: articulate(events, rng, lengths)


def level_stems(stems: dict[str, np.ndarray], gains_db: dict[str, float]) -> dict[str, np.ndarray]:
    """Each stem at −20 dBFS RMS less its gain, the whole turned down if the mix would clip."""
    for name in SOURCES:  # level by loudness, not peak: drums' transients would leave them ~7 dB quieter
        rms = np.sqrt(np.mean(np.square(stems[name], dtype=np.float64)))
        stems[name] = stems[name] / max(rms, 1e-9) * 10 ** ((STEM_RMS_DBFS + gains_db[name]) / 20)
    mix_peak = np.abs(sum(stems.values())).max()
    if mix_peak > 0.98:
        stems = {name: stem * (0.98 / mix_peak) for name, stem in stems.items()}
    return {name: stem.astype(np.float32) for name, stem in stems.items()}


def write_track(folder: Path, stems: dict[str, np.ndarray], plan: Plan | None = None) -> None:
    """Stems as 16-bit WAV; the mixture as 24-bit, the exact sum of the 16-bit stems; the plan as JSON."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, stem in stems.items():
        sf.write(str(folder / f"{name}.wav"), stem.T, SAMPLERATE, subtype="PCM_16")
        written.append(sf.read(str(folder / f"{name}.wav"), dtype="float64", always_2d=True)[0])  # as readers see it
    sf.write(str(folder / "mixture.wav"), sum(written), SAMPLERATE, subtype="PCM_24")
    if plan is not None:
        (folder / PLAN_FILE).write_text(json.dumps(plan.describe(), indent=1) + "\n")


def song_seed(seed: int, index: int) -> int:
    return seed * 100_000 + index


def track_folder(out: Path, split: str, seed: int, index: int) -> Path:
    return Path(out) / split / f"song-{song_seed(seed, index):08d}"


def synth_dataset(
    out: Path,
    tracks: int,
    seconds: float,
    seed: int,
    split: str = "train",
    progress: bool = False,
    variety: Variety | None = None,
) -> list[Path]:
    """``tracks`` songs in ``out/split``: classic ones, or wide ones drawn from ``variety``."""
    from tqdm import tqdm

    if variety is None:
        soundfont = find_soundfont()
    else:
        soundfont = None
        if split == "train":
            check_trainable(variety)
        for font in variety.soundfonts:
            font.require()
    folders = []
    for index in tqdm(range(tracks), desc=f"synth {split}", disable=not progress, unit="track"):
        folder = track_folder(out, split, seed, index)
        stems, plan = render_song(song_seed(seed, index), seconds, soundfont, variety)
        write_track(folder, stems, plan)
        folders.append(folder)
    return folders


def vocal_part(song: Song, rng: np.random.Generator, frames: int) -> np.ndarray:
    """The classic voice's sung lead (kept for callers of the original generator)."""
    return sing(CLASSIC, song, rng, frames)
