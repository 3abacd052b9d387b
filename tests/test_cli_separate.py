"""`stemdeck separate`, `models` and `demo` end to end, with a small checkpoint on disk."""

import os

import numpy as np
import pytest
import soundfile as sf
from conftest import run_stemdeck, write_tone

from stemdeck.cli import main


@pytest.fixture
def song(tmp_path):
    path = tmp_path / "song.wav"
    write_tone(path, seconds=2.5)
    return path


def test_separate_writes_every_stem(tmp_path, song, tiny_checkpoint):
    out = tmp_path / "out"
    assert main(["separate", str(song), "-o", str(out), "--model", str(tiny_checkpoint)]) == 0
    files = sorted(p.name for p in (out / "song").iterdir())
    assert files == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    info = sf.info(str(out / "song" / "vocals.wav"))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 2, 110250, "PCM_24")


@pytest.mark.parametrize("stems", ["", ","])
def test_stems_naming_no_stem_is_refused(tmp_path, song, capsys, stems):
    """``--stems ""`` wrote all four stems; ``--stems ,`` said "unknown stem(s) []"."""
    out = tmp_path / "out"
    assert main(["separate", str(song), "-o", str(out), "--model", "passthrough", "--stems", stems]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--stems {stems!r} names no stem; choose from drums, bass, other, vocals")
    assert not list(out.rglob("*.wav"))


@pytest.mark.parametrize(
    ("stems", "said"),
    [("voice", "unknown stem 'voice'"), ("drums,voice,keys", "unknown stems 'voice', 'keys'")],
)
def test_unknown_stems_are_named_in_words(tmp_path, song, capsys, stems, said):
    """They were printed as a Python list: "unknown stem(s) ['voice']"."""
    out = tmp_path / "out"
    assert main(["separate", str(song), "-o", str(out), "--model", "passthrough", "--stems", stems]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--stems {stems}: {said}; the model has drums, bass, other, vocals")
    assert not list(out.rglob("*.wav"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--format", "mp3", "--bits", "16"], "--format mp3 has no bit depth; drop --bits"),
        (["--format", "stem", "--codec", "aac", "--bits", "24"], "--codec aac has no bit depth; drop --bits"),
        (["--codec", "aac"], "--codec sets the audio of --format stem files; drop it for --format wav"),
        (["--format", "flac", "--codec", "alac"], "drop it for --format flac"),
        (
            ["--format", "stem", "--clip", "clamp"],
            "--format stem clamps samples beyond full scale (rescaled, a stem would no longer match the master); "
            "drop --clip",
        ),
    ],
)
def test_an_option_the_format_would_ignore_is_refused(tmp_path, song, capsys, options, message):
    """``--bits`` with mp3 or AAC, ``--codec`` without ``--format stem``: they were dropped in silence."""
    out = tmp_path / "out"
    assert main(["separate", str(song), "-o", str(out), "--model", "passthrough", *options]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_stems_and_two_stems_choose_what_is_written(tmp_path, song, tiny_checkpoint):
    out = tmp_path / "out"
    assert (
        main(
            [
                "separate",
                str(song),
                "-o",
                str(out),
                "--model",
                str(tiny_checkpoint),
                "--stems",
                "vocals,bass",
                "--format",
                "flac",
                "--bits",
                "16",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (out / "song").iterdir()) == ["bass.flac", "vocals.flac"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(["separate", str(song), "-o", str(full), "--model", str(tiny_checkpoint), "--bits", "32f"]) == 0
    assert (
        main(
            [
                "separate",
                str(song),
                "-o",
                str(split),
                "--model",
                str(tiny_checkpoint),
                "--bits",
                "32f",
                "--two-stems",
                "vocals",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (split / "song").iterdir()) == ["no_vocals.wav", "vocals.wav"]
    stems = {name: sf.read(str(full / "song" / f"{name}.wav"))[0] for name in ("drums", "bass", "other", "vocals")}
    vocals, _ = sf.read(str(split / "song" / "vocals.wav"))
    rest, _ = sf.read(str(split / "song" / "no_vocals.wav"))
    assert np.abs(vocals - stems["vocals"]).max() < 1e-6
    assert np.abs(rest - (stems["drums"] + stems["bass"] + stems["other"])).max() < 1e-5


def test_existing_stems_are_kept_without_force(tmp_path, song, tiny_checkpoint, capsys):
    out = tmp_path / "out"
    args = ["separate", str(song), "-o", str(out), "--model", str(tiny_checkpoint)]
    assert main(args) == 0
    before = (out / "song" / "vocals.wav").stat().st_mtime_ns
    assert main(args) == 1
    assert "already exists; use --force to overwrite" in capsys.readouterr().err
    assert (out / "song" / "vocals.wav").stat().st_mtime_ns == before
    assert main(args + ["--force"]) == 0


def test_a_bad_file_is_reported_and_the_others_still_run(tmp_path, song, tiny_checkpoint, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"definitely not audio" * 10)
    out = tmp_path / "out"
    code = main(["separate", str(bad), str(song), "-o", str(out), "--model", str(tiny_checkpoint)])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.wav: not a readable audio file" in err
    assert "separated 1 of 2 file(s)" in err
    assert (out / "song" / "drums.wav").exists() and not (out / "broken").exists()


def test_resampled_mono_input_comes_back_at_its_rate(tmp_path, tiny_checkpoint):
    path = tmp_path / "mono48k.flac"
    write_tone(path, seconds=1.0, samplerate=48000, channels=1)
    out = tmp_path / "out"
    assert main(["separate", str(path), "-o", str(out), "--model", str(tiny_checkpoint)]) == 0
    info = sf.info(str(out / "mono48k" / "bass.wav"))
    assert (info.samplerate, info.channels, info.frames) == (48000, 1, 48000)


@pytest.mark.parametrize(
    "make_input,message",
    [
        (lambda d: d / "empty.wav", "is empty"),
        (lambda d: d, "is a directory"),
        (lambda d: d / "seven.wav", "has 7 channels"),
        (lambda d: d / "cut.wav", "is truncated"),
        (lambda d: d / "cut.flac", "cut.flac is damaged or truncated"),
    ],
)
def test_bad_inputs_exit_nonzero_with_one_line_and_no_traceback(tmp_path, tiny_checkpoint, make_input, message):
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(str(tmp_path / "seven.wav"), np.zeros((1000, 7), np.float32), 44100)
    write_tone(tmp_path / "cut.wav")
    data = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 3])
    write_tone(tmp_path / "cut.flac")
    data = (tmp_path / "cut.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    result = run_stemdeck("separate", make_input(tmp_path), "-o", tmp_path / "out", "--model", tiny_checkpoint)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))


@pytest.mark.parametrize(
    "model,message",
    [
        ("htdemucz", "unknown model 'htdemucz'"),
        ("{dir}/missing.th", "missing.th does not exist"),
        ("{dir}/corrupt.th", "truncated or corrupt"),
        ("htdemucs", "cannot download .*955717e8-8726e21a.th"),
    ],
)
def test_model_errors_are_one_line(tmp_path, song, model, message):
    (tmp_path / "corrupt.th").write_bytes(b"PK\x03\x04 this is not a zip")
    result = run_stemdeck("separate", song, "-o", tmp_path / "out", "--model", model.format(dir=tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    import re

    assert re.search(message, result.stderr), result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1


def test_unwritable_output_is_one_line(tmp_path, song, tiny_checkpoint):
    (tmp_path / "out").write_text("a file, not a folder")
    result = run_stemdeck("separate", song, "-o", tmp_path / "out", "--model", tiny_checkpoint)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot create" in result.stderr and "choose another output directory" in result.stderr


def test_unavailable_cuda_is_explained(tmp_path, song, tiny_checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.fail("this test expects a CPU-only torch build")
    result = run_stemdeck("separate", song, "-o", tmp_path / "out", "--model", tiny_checkpoint, "--device", "cuda")
    assert result.returncode == 1 and "CUDA is not available" in result.stderr


def test_models_list_and_fetch_from_a_local_mirror(tmp_path):
    result = run_stemdeck("models", "list")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "SOURCES", "FILES", "CACHED"]
    assert any(line.startswith("htdemucs_6s") and "guitar,piano" in line and " no " in line for line in lines)
    fetch = run_stemdeck("models", "fetch", "htdemucs", env={"STEMDECK_MODEL_URL": (tmp_path / "void").as_uri()})
    assert fetch.returncode == 1 and "cannot download" in fetch.stderr and "Traceback" not in fetch.stderr


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tiny", "tiny comes with stemdeck: nothing to fetch; use it with --model tiny"),
        ("passthrough", "passthrough is built in, with no weights: nothing to fetch"),
        ("htdemucz", "unknown model 'htdemucz'; known models: htdemucs, htdemucs_ft"),
    ],
)
def test_fetching_what_needs_no_download_says_so(capsys, name, message):
    """``models fetch tiny`` gave argparse's "invalid choice" with the downloadable names only."""
    assert main(["models", "fetch", name]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"stemdeck: error: {message}"), err


def test_demo_song_is_written(tmp_path):
    assert main(["demo", str(tmp_path / "demo.wav"), "--seconds", "2"]) == 0
    audio, samplerate = sf.read(str(tmp_path / "demo.wav"))
    assert audio.shape == (88200, 2) and samplerate == 44100
    assert 0.1 < np.abs(audio).max() <= 1.0
    flac = tmp_path / "demo.flac"
    assert main(["demo", str(flac), "--seconds", "1"]) == 0
    assert sf.info(str(flac)).format == "FLAC" and sf.info(str(flac)).frames == 44100


def test_demo_keeps_a_file_that_is_there(tmp_path, capsys):
    """``demo mysong.flac`` replaced the user's song with a demo, without a word."""
    song = tmp_path / "mysong.wav"
    song.write_bytes(b"the user's song")
    assert main(["demo", str(song), "--seconds", "1"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"stemdeck: error: {song} exists; choose another name or add --force to overwrite it"
    )
    assert song.read_bytes() == b"the user's song"
    assert main(["demo", str(song), "--seconds", "1", "--force"]) == 0
    assert sf.info(str(song)).frames == 44100


@pytest.mark.parametrize(
    "args,message",
    [
        (["{tmp}"], "{tmp} is a folder; name a file in it, e.g. {tmp}/demo.wav"),
        (["{tmp}/d.xyz"], "{tmp}/d.xyz: no audio format for .xyz; use .wav or .flac"),
        (["{tmp}/none/d.wav"], "no folder {tmp}/none; create it or write the demo elsewhere"),
    ],
)
def test_demo_refuses_what_it_cannot_write_in_one_line(tmp_path, capsys, args, message):
    args = [arg.format(tmp=tmp_path) for arg in args]
    assert main(["demo", *args, "--seconds", "1"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "stemdeck: error: " + message.format(tmp=tmp_path)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("seconds", ["0", "-3", "nan", "1e9"])
def test_demo_refuses_a_length_it_cannot_make(tmp_path, seconds):
    result = run_stemdeck("demo", str(tmp_path / "d.wav"), "--seconds", seconds)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--seconds" in result.stderr.splitlines()[-1] and not (tmp_path / "d.wav").exists()


# -- hostile input, batches and leftovers (issue 11 items 4-7) --------------------------------------


def _float_wav(path, frames=22050, bad=None, index=100):
    audio = np.random.default_rng(2).standard_normal((frames, 2)).astype(np.float32) * 0.1
    if bad is not None:
        audio[index, 0] = bad
    sf.write(str(path), audio, 44100, subtype="FLOAT")
    return path


def _stems(folder):
    return {p.name: sf.read(str(p))[0] for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("kind,fmt", [("nan", "flac"), ("inf", "wav"), ("one-frame", "wav"), ("silent", "flac")])
def test_non_finite_tiny_and_silent_files_give_finished_finite_stems(tmp_path, tiny_checkpoint, capsys, kind, fmt):
    path = tmp_path / f"{kind}.wav"
    if kind in ("nan", "inf"):
        _float_wav(path, bad=np.nan if kind == "nan" else np.inf)
    else:
        sf.write(str(path), np.zeros((22050, 2)) if kind == "silent" else np.full((1, 2), 0.3), 44100)
    out = tmp_path / "out"
    assert main(["separate", str(path), "-o", str(out), "--model", str(tiny_checkpoint), "--format", fmt]) == 0
    err = capsys.readouterr().err
    stems = _stems(out / kind)
    assert sorted(stems) == [f"{s}.{fmt}" for s in ("bass", "drums", "other", "vocals")]
    assert all(np.all(np.isfinite(audio)) and np.abs(audio).max() < 1 for audio in stems.values())
    said = [line for line in err.splitlines() if "read as silence" in line]
    assert len(said) == (1 if kind in ("nan", "inf") else 0)
    if kind in ("nan", "inf"):
        assert said[0] == f"stemdeck: {path}: 1 non-finite sample(s) (NaN or infinity) read as silence"
        assert all(audio.std() > 1e-3 for audio in stems.values())  # music, not a constant
    assert "separated 1 of 1 file(s)" in err


def test_inputs_with_one_name_get_their_own_folders(tmp_path, capsys):
    sine = np.sin(2 * np.pi * 441 * np.arange(4410) / 44100)
    for folder, level in (("x", 0.1), ("y", 0.4)):
        (tmp_path / folder).mkdir()
        sf.write(str(tmp_path / folder / "song.wav"), level * sine, 44100, subtype="FLOAT")
    sf.write(str(tmp_path / "x" / "song.flac"), 0.2 * sine, 44100)
    inputs = [tmp_path / "x" / "song.wav", tmp_path / "y" / "song.wav", tmp_path / "x" / "song.flac"]
    out = tmp_path / "out"
    link = tmp_path / "link.wav"
    link.symlink_to(inputs[1])
    named = [*map(str, inputs), str(inputs[0]), str(link)]
    code = main(["separate", *named, "-o", str(out), "--model", "passthrough", "--force"])
    err = capsys.readouterr().err
    assert code == 0 and "separated 3 of 3 file(s)" in err
    assert f"{inputs[0]} is named twice; it is separated once" in err
    assert f"{link} is the same file as {inputs[1]}; it is separated once" in err
    folders = sorted(p.name for p in out.iterdir())
    assert len(folders) == 3 and all(name.startswith("song-") for name in folders)
    peaks = sorted(round(float(np.abs(sf.read(str(out / f / "vocals.wav"))[0]).max()), 3) for f in folders)
    assert peaks == [0.04, 0.08, 0.16]  # 0.4 of each input: nothing overwritten


def test_track_folders_are_distinct_and_stay_inside_the_output(tmp_path):
    from stemdeck.models.cli import track_folders

    names = ["a/song.wav", "b/song.wav", "a/Song.flac", "song-a.wav", "..wav", "...wav", "c/d/track.mp3"]
    folders = track_folders([tmp_path / n for n in names], tmp_path / "out")
    assert len({str(f).casefold() for f in folders.values()}) == len(names)
    assert all(f.parent == tmp_path / "out" and f.name not in (".", "..") for f in folders.values())
    assert folders[tmp_path / "c/d/track.mp3"].name == "track"


def test_one_failing_file_never_ends_the_batch(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    import importlib

    streaming = importlib.import_module("stemdeck.models.streaming")
    one_hz = tmp_path / "one_hz.wav"
    sf.write(str(one_hz), np.zeros((5, 2)), 1)
    odd_name = tmp_path / os.fsdecode(b"odd \xff name.wav")
    sf.write(os.fsencode(odd_name), np.full((4410, 2), 0.1, np.float32), 44100)
    crash, good = tmp_path / "crash.wav", tmp_path / "good.wav"
    write_tone(crash, seconds=0.3)
    write_tone(good, seconds=0.2)
    original = streaming.separate_stream

    def crash_on_one(model, source, *args, **kwargs):
        if source.frames == 13230:  # crash.wav: an error of a kind no one expected
            raise ZeroDivisionError("float division by zero")
        return original(model, source, *args, **kwargs)

    monkeypatch.setattr(streaming, "separate_stream", crash_on_one)
    out = tmp_path / "out"
    code = main(
        [
            "separate",
            str(one_hz),
            str(crash),
            str(odd_name),
            str(good),
            "-o",
            str(out),
            "--model",
            str(tiny_checkpoint),
            "--format",
            "flac",
        ]
    )
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err[-1] == "separated 2 of 4 file(s)"
    failures = [line for line in err if line.startswith("stemdeck: ") and "->" not in line]
    assert len(failures) == 2
    assert "one_hz.wav declares a sample rate of 1 Hz" in failures[0]
    assert "crash.wav: separation failed (ZeroDivisionError: float division by zero)" in failures[1]
    assert sorted(p.name for p in out.iterdir()) == sorted(["good", odd_name.stem])
    assert len(list((out / odd_name.stem).iterdir())) == 4


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--segment", "0", "between 0.5 and 600 seconds"),
        ("--segment", "-1", "between 0.5 and 600 seconds"),
        ("--segment", "nan", "not a finite number"),
        ("--segment", "inf", "not a finite number"),
        ("--segment", "1e9", "between 0.5 and 600 seconds"),
        ("--segment", "0.001", "between 0.5 and 600 seconds"),
        ("--overlap", "1", "between 0 and 0.95"),
        ("--overlap", "-0.1", "between 0 and 0.95"),
        ("--overlap", "nan", "not a finite number"),
        ("--shifts", "-1", "between 0 and 20"),
        ("--shifts", "1000", "between 0 and 20"),
        ("--shifts", "1.5", "not a whole number"),
    ],
)
def test_impossible_numbers_are_refused_up_front(tmp_path, song, capsys, option, value, message):
    with pytest.raises(SystemExit) as info:
        main(["separate", str(song), "-o", str(tmp_path / "out"), "--model", "passthrough", f"{option}={value}"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert len(err.splitlines()) == 1, err  # no usage block above it
    assert err.startswith("stemdeck separate: error: ") and option in err and message in err
    assert err.rstrip().endswith("(`stemdeck separate --help` lists the options)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("overlap", "shifts", "note"),
    [
        ("0.25", "0", None),
        ("0.75", "0", None),  # 3x the default's work: usual enough to pass without a word
        ("0.95", "2", "separate each second of audio 40 times, about 30x the time of the default"),
        ("0.5", "3", "separate each second of audio 6 times, about 4x the time of the default"),
    ],
)
def test_settings_that_multiply_the_time_are_said(tmp_path, song, capsys, overlap, shifts, note):
    argv = ["separate", str(song), "-o", str(tmp_path / "out"), "--model", "passthrough"]
    assert main([*argv, "--overlap", overlap, "--shifts", shifts]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    said = f"stemdeck: note: --overlap {overlap} --shifts {shifts} {note} (--overlap 0.25 --shifts 0)"
    assert notes == ([said] if note else [])


def test_a_segment_longer_than_training_is_one_line(tmp_path, song, tiny_checkpoint, capsys):
    code = main(["separate", str(song), "-o", str(tmp_path / "out"), "--model", str(tiny_checkpoint), "--segment", "3"])
    err = capsys.readouterr().err
    assert code == 1 and "error: segment 3 s is longer than the 2 s this HT Demucs was trained on" in err
    assert not (tmp_path / "out").exists()


def test_a_run_removes_what_a_killed_run_left(tmp_path, song, capsys):
    leftover = tmp_path / "out" / "other-track" / ".vocals.k2j3h4.wav.partial"  # no owner named: stale
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"RIFF")
    assert main(["separate", str(song), "-o", str(tmp_path / "out"), "--model", "passthrough"]) == 0
    assert not leftover.exists()
    assert "removed 1 unfinished stem file(s) left by an interrupted run" in capsys.readouterr().err
    assert not list((tmp_path / "out").rglob("*.partial"))


def test_passthrough_stems_are_its_fractions_of_the_input(tmp_path, song):
    out = tmp_path / "out"
    assert main(["separate", str(song), "-o", str(out), "--model", "passthrough", "--bits", "32f"]) == 0
    mix, _ = sf.read(str(song), dtype="float64")
    mean = mix.mean()  # the normalisation's mean, shared equally among the stems
    for name, fraction in zip(("drums", "bass", "other", "vocals"), (0.1, 0.2, 0.3, 0.4), strict=True):
        stem, _ = sf.read(str(out / "song" / f"{name}.wav"), dtype="float64")
        assert np.abs(stem - (fraction * (mix - mean) + mean / 4)).max() < 1e-6


@pytest.mark.parametrize("extra", [[], ["--two-stems", "vocals"]])
def test_stems_of_a_file_with_a_dc_offset_add_up_to_it(tmp_path, extra):
    """Every stem carried the file's whole DC offset (as the reference's): four stems of a sine
    at 0.2 over 0.4 of DC summed to 1.6 of DC and peaked at 1.8."""
    song = tmp_path / "dc.wav"
    t = np.arange(3 * 44100) / 44100
    wave = 0.4 + 0.2 * np.sin(2 * np.pi * 220 * t)
    sf.write(str(song), np.stack([wave, wave], axis=1), 44100, subtype="FLOAT")
    out = tmp_path / "out"
    assert main(["separate", str(song), "-o", str(out), "--model", "passthrough", "--bits", "32f", *extra]) == 0
    stems = [sf.read(str(path), dtype="float64")[0] for path in sorted((out / "dc").glob("*.wav"))]
    assert len(stems) == (2 if extra else 4)
    total = sum(stems)
    assert np.abs(total - np.stack([wave, wave], axis=1)).max() < 1e-6
    # a quarter of the offset each; no_vocals holds the three others' quarters
    assert sorted(round(stem.mean(), 6) for stem in stems) == ([0.1, 0.3] if extra else [0.1] * 4)


def test_a_stem_scaled_down_to_fit_is_said_with_its_peak(tmp_path, capsys):
    """--clip rescale (the default) used to lower a loud stem without a word."""
    song = tmp_path / "loud.wav"
    t = np.arange(44100) / 44100
    sf.write(str(song), np.stack([3.0 * np.sin(2 * np.pi * 220 * t)] * 2, axis=1), 44100, subtype="FLOAT")
    out = tmp_path / "out"
    assert main(["separate", str(song), "-o", str(out), "--model", "passthrough", "--bits", "32f"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "scaled down" in line]
    assert notes == [
        f"stemdeck: {song}: vocals peaked at 1.20, scaled down 1.7 dB to fit "
        "(--clip clamp clips the peaks instead; none keeps them)"
    ]
    vocals, _ = sf.read(str(out / "loud" / "vocals.wav"))
    bass, _ = sf.read(str(out / "loud" / "bass.wav"))  # 0.2 of the song, peak 0.6: as it came
    assert np.abs(vocals).max() == pytest.approx(1 / 1.01, abs=1e-6)
    assert np.abs(bass).max() == pytest.approx(0.6, abs=1e-3)


def test_clip_none_keeps_a_float_stems_peaks(tmp_path, capsys):
    """32-bit float stems hold samples beyond full scale, yet --clip rescale and clamp were the
    only choices: a loud stem could not be written as it was separated."""
    song = tmp_path / "loud.wav"
    t = np.arange(44100) / 44100
    sf.write(str(song), np.stack([3.0 * np.sin(2 * np.pi * 220 * t)] * 2, axis=1), 44100, subtype="FLOAT")
    out = tmp_path / "out"
    command = ["separate", str(song), "-o", str(out), "--model", "passthrough", "--bits", "32f", "--clip", "none"]
    assert main(command) == 0
    assert "scaled down" not in capsys.readouterr().err
    vocals, _ = sf.read(str(out / "loud" / "vocals.wav"))
    assert np.abs(vocals).max() == pytest.approx(1.2, abs=1e-4)  # the passthrough's 0.4 of a 3.0 peak


@pytest.mark.parametrize("options", [[], ["--bits", "24"], ["--format", "flac"], ["--format", "mp3"]])
def test_clip_none_without_float_stems_is_refused(tmp_path, song, capsys, options):
    out = tmp_path / "out"
    assert main(["separate", str(song), "-o", str(out), "--model", "passthrough", "--clip", "none", *options]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "stemdeck: error: --clip none keeps samples beyond full scale, which only 32-bit float WAV holds; "
        "add --bits 32f, or choose --clip rescale or clamp"
    ]
    assert not out.exists()


# -- progress (issue 10 item 7) ----------------------------------------------------------------------


def test_no_bars_off_a_terminal_only_one_line_per_file(tmp_path, song, capsys):
    assert main(["separate", str(song), "-o", str(tmp_path / "out"), "--model", "passthrough"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "%|" not in err
    assert err.splitlines()[-2:] == [f"{song} -> {tmp_path / 'out' / 'song'}", "separated 1 of 1 file(s)"]


def test_bars_on_a_terminal_show_the_file_and_the_batch(capsys):
    from pathlib import Path

    from stemdeck.models.cli import SeparationBars

    with SeparationBars(2, enabled=True) as bars:
        bars.start_file(Path("first.wav"), 10.0)
        bars.update(0.5)
        bars.say("first.wav -> out/first")
        bars.file_done()
        bars.start_file(Path("second.wav"), 4.0)
        bars.update(1.0)
        bars.file_done()
    err = capsys.readouterr().err
    assert "first.wav" in err and "5.0/10.0 s of audio" in err
    assert "all files" in err and "0.5/2" in err and "2.0/2" in err
    assert "first.wav -> out/first\n" in err


def test_a_model_whose_stem_names_are_paths_writes_nothing(tmp_path, song, capsys, monkeypatch):
    """Defence in depth: the checkpoint loader refuses such names; the writer does too."""
    import stemdeck.models.cli
    from stemdeck.models.loading import LoadedModel
    from stemdeck.models.nets.passthrough import PassThrough

    hostile = PassThrough(sources=("../../escaped", "bass", "other", "vocals"))
    monkeypatch.setattr(stemdeck.models.cli, "load_for_command", lambda name: LoadedModel(hostile, "hostile"))
    out = tmp_path / "deep" / "out"
    assert main(["separate", str(song), "-o", str(out), "--model", "passthrough"]) == 1
    err = capsys.readouterr().err
    assert "stem name '../../escaped' is not a short identifier" in err
    assert [p for p in tmp_path.rglob("*") if p.is_file() and p != song] == []


def test_an_interrupted_run_leaves_no_partial_stem_and_keeps_the_users_files(tmp_path, song, capsys, monkeypatch):
    import importlib

    streaming = importlib.import_module("stemdeck.models.streaming")
    original = streaming.separate_stream

    def interrupted(*args, **kwargs):
        blocks = original(*args, **kwargs)
        yield next(blocks)  # some stems are final and written...
        raise KeyboardInterrupt  # ...then the user presses Ctrl-C

    folder = tmp_path / "out" / "song"
    folder.mkdir(parents=True)
    (folder / "drums.wav").write_bytes(b"kept")
    monkeypatch.setattr(streaming, "separate_stream", interrupted)
    code = main(["separate", str(song), "-o", str(tmp_path / "out"), "--model", "passthrough", "--force"])
    assert code != 0 and capsys.readouterr().err.splitlines()[-1] == "stemdeck: interrupted"
    assert os.listdir(folder) == ["drums.wav"] and (folder / "drums.wav").read_bytes() == b"kept"


@pytest.mark.parametrize("recursive", [False, True])
def test_force_never_writes_a_stem_over_the_input_itself(tmp_path, recursive, capsys):
    """``separate out/vocals/vocals.wav -o out --force``: the vocals stem's path is the input's;
    --force overwrites stems, never the song (it was replaced by its own vocals)."""
    song = tmp_path / "out" / "vocals" / "vocals.wav"
    song.parent.mkdir(parents=True)
    write_tone(song, seconds=1.0)
    before = song.read_bytes()
    source = song.parent if recursive else song  # -r: out/vocals/vocals.wav's folder is out/vocals
    args = ["separate", str(source), "-o", str(tmp_path / "out"), "--force", "--model", "passthrough"]
    assert main([*args, *(["-r"] if recursive else [])]) == 1
    err = capsys.readouterr().err
    assert f"its output {song} would overwrite the input itself; choose another -o" in err
    assert "Traceback" not in err
    assert song.read_bytes() == before


def test_a_cache_folder_that_cannot_be_made_falls_back_to_tiny_in_one_line(tmp_path, song):
    """$XDG_CACHE_HOME a file (or a read-only home): the download's folder cannot be made. That
    was a traceback; it is one line, and without --model tiny stands in, as with no network."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache would go")
    env = {"XDG_CACHE_HOME": str(blocked), "STEMDECK_AUTO_PRECISION": "fp32"}
    result = run_stemdeck("separate", song, "-o", tmp_path / "out", env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        f"using the bundled tiny model (cannot make the model cache {blocked / 'stemdeck' / 'models'}" in result.stderr
    )
    assert (tmp_path / "out" / "song" / "vocals.wav").is_file()
    fetch = run_stemdeck("models", "fetch", "htdemucs", env=env)
    assert fetch.returncode == 1 and "Traceback" not in fetch.stderr
    assert fetch.stderr.strip().endswith("or put the model's files in $STEMDECK_MODEL_DIR")
    assert len(fetch.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("rate", "options", "message"),
    [
        (
            96000,
            ["--format", "mp3"],
            "MP3 holds 8, 11.025, 12, 16, 22.05, 24, 32, 44.1, 48 kHz audio, not 96000 Hz; use --format flac or wav",
        ),
        (
            192000,
            ["--format", "stem", "--codec", "aac"],
            "AAC holds audio up to 96 kHz at its standard rates, not 192000 Hz; use --codec alac (lossless, any rate)",
        ),
    ],
)
def test_a_rate_the_output_format_cannot_hold_is_refused_before_the_separation(
    tmp_path, capsys, rate, options, message
):
    """A 96 kHz file with --format mp3 was separated in full, then failed at the first write with
    the encoder's own words (and a 192 kHz one with --codec aac, ``avcodec_open2 ... returned 22``)."""
    from stemdeck.models import track_job

    song = tmp_path / "hires.wav"
    write_tone(song, seconds=0.5, samplerate=rate)
    monkeypatch = pytest.MonkeyPatch()
    separated = []
    real = track_job.stream_settings
    monkeypatch.setattr(track_job, "stream_settings", lambda *a: separated.append(1) or real(*a))
    try:
        assert main(["separate", str(song), "-o", str(tmp_path / "out"), "--model", "passthrough", *options]) == 1
    finally:
        monkeypatch.undo()
    err = capsys.readouterr().err
    assert f"{song}: {message}" in err and "Traceback" not in err
    assert not separated
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--model", "argument --model/-n: an empty model name; name one (`stemdeck models list`) or a checkpoint"),
        ("-o", "argument -o/--out: an empty folder name; name the output folder, or leave -o out (separated)"),
    ],
)
def test_an_empty_model_or_output_name_is_refused(song, capsys, option, message):
    """--model "" separated with htdemucs and -o "" wrote into the current folder, in silence."""
    with pytest.raises(SystemExit) as exited:
        main(["separate", str(song), option, ""])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
