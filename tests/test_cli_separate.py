"""`stemdeck separate`, `models` and `demo` end to end, with a small checkpoint on disk."""
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import write_tone
from models.cli import main


@pytest.fixture
def song(tmp_path):
    path = tmp_path / "song.wav"
    write_tone(path, seconds=2.5)
    return path


def run_cli(*args, env=None):
    """Run the real console entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_separate_writes_every_stem(tmp_path, song, tiny_checkpoint):
    out = tmp_path / "out"
    assert main(["separate", str(song), "-o", str(out), "--model", str(tiny_checkpoint)]) == 0
    files = sorted(p.name for p in (out / "song").iterdir())
    assert files == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    info = sf.info(str(out / "song" / "vocals.wav"))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 2, 110250, "PCM_24")


def test_stems_and_two_stems_choose_what_is_written(tmp_path, song, tiny_checkpoint):
    out = tmp_path / "out"
    assert main(["separate", str(song), "-o", str(out), "--model", str(tiny_checkpoint),
                 "--stems", "vocals,bass", "--format", "flac", "--bits", "16"]) == 0
    assert sorted(p.name for p in (out / "song").iterdir()) == ["bass.flac", "vocals.flac"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(["separate", str(song), "-o", str(full), "--model", str(tiny_checkpoint), "--bits", "32f"]) == 0
    assert main(["separate", str(song), "-o", str(split), "--model", str(tiny_checkpoint), "--bits", "32f",
                 "--two-stems", "vocals"]) == 0
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


@pytest.mark.parametrize("make_input,message", [
    (lambda d: d / "empty.wav", "is empty"),
    (lambda d: d, "is a directory"),
    (lambda d: d / "seven.wav", "has 7 channels"),
    (lambda d: d / "cut.wav", "is truncated"),
])
def test_bad_inputs_exit_nonzero_with_one_line_and_no_traceback(tmp_path, tiny_checkpoint, make_input, message):
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(str(tmp_path / "seven.wav"), np.zeros((1000, 7), np.float32), 44100)
    write_tone(tmp_path / "cut.wav")
    data = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 3])
    result = run_cli("separate", make_input(tmp_path), "-o", tmp_path / "out", "--model", tiny_checkpoint)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))


@pytest.mark.parametrize("model,message", [
    ("htdemucz", "unknown model 'htdemucz'"),
    ("{dir}/missing.th", "missing.th does not exist"),
    ("{dir}/corrupt.th", "truncated or corrupt"),
    ("htdemucs", "cannot download .*955717e8-8726e21a.th"),
])
def test_model_errors_are_one_line(tmp_path, song, model, message):
    (tmp_path / "corrupt.th").write_bytes(b"PK\x03\x04 this is not a zip")
    result = run_cli("separate", song, "-o", tmp_path / "out", "--model", model.format(dir=tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    import re
    assert re.search(message, result.stderr), result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1


def test_unwritable_output_is_one_line(tmp_path, song, tiny_checkpoint):
    (tmp_path / "out").write_text("a file, not a folder")
    result = run_cli("separate", song, "-o", tmp_path / "out", "--model", tiny_checkpoint)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot create" in result.stderr and "choose another output directory" in result.stderr


def test_unavailable_cuda_is_explained(tmp_path, song, tiny_checkpoint):
    import torch
    if torch.cuda.is_available():
        pytest.fail("this test expects a CPU-only torch build")
    result = run_cli("separate", song, "-o", tmp_path / "out", "--model", tiny_checkpoint, "--device", "cuda")
    assert result.returncode == 1 and "CUDA is not available" in result.stderr


def test_models_list_and_fetch_from_a_local_mirror(tmp_path):
    result = run_cli("models", "list")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "SOURCES", "FILES", "CACHED"]
    assert any(line.startswith("htdemucs_6s") and "guitar,piano" in line and " no " in line for line in lines)
    fetch = run_cli("models", "fetch", "htdemucs", env={"STEMDECK_MODEL_URL": (tmp_path / "void").as_uri()})
    assert fetch.returncode == 1 and "cannot download" in fetch.stderr and "Traceback" not in fetch.stderr


def test_demo_song_is_written(tmp_path):
    assert main(["demo", str(tmp_path / "demo.wav"), "--seconds", "2"]) == 0
    audio, samplerate = sf.read(str(tmp_path / "demo.wav"))
    assert audio.shape == (88200, 2) and samplerate == 44100
    assert 0.1 < np.abs(audio).max() <= 1.0
