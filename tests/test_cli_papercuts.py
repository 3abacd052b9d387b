"""Command-line papercuts a new user meets first (issue 10 item 6): models list, `| head`, offline hints."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import write_tone

from stemdeck.cli import EXIT_BROKEN_PIPE, main

ROOT = Path(__file__).resolve().parent.parent


def test_models_list_shows_every_name_separate_accepts(capsys):
    assert main(["models", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert {"htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "tiny", "passthrough"} <= set(rows)
    assert "drums,bass,other,vocals" in rows["tiny"] and "bundled (" in rows["tiny"]
    assert "built in" in rows["passthrough"] and "fixed fractions of the input" in rows["passthrough"]


@pytest.mark.parametrize("name", ["tiny", "passthrough"])
def test_the_listed_local_models_separate(tmp_path, capsys, name):
    song = tmp_path / "short.wav"
    write_tone(song, seconds=0.5)
    assert main(["separate", str(song), "-o", str(tmp_path / "out"), "--model", name]) == 0
    assert f"model {name}: drums, bass, other, vocals" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out" / "short").iterdir()) == [
        "bass.wav",
        "drums.wav",
        "other.wav",
        "vocals.wav",
    ]


@pytest.mark.parametrize("command", [["midi", "show"], ["models", "list"]])
def test_a_reader_that_has_gone_ends_the_command_quietly(tmp_path, command):
    """`stemdeck midi show | head -1`: head exits after its line; stemdeck must not print a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: every write fails with EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "stemdeck", *command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            timeout=120,
            env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)},
        )
    finally:
        os.close(write_end)
    assert result.returncode == EXIT_BROKEN_PIPE
    assert result.stderr == ""


def test_head_takes_its_line_and_nothing_else_is_said(tmp_path):
    result = subprocess.run(
        f"'{sys.executable}' -m stemdeck midi show | head -1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert result.returncode == 0 and result.stdout.startswith("mapping: ") and result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_the_offline_fallback_says_where_to_put_the_weights(tmp_path, capsys, monkeypatch):
    """No network (the fixture points downloads at a missing folder): which file, and where it goes."""
    from stemdeck.models.registry import cache_dir

    song = tmp_path / "short.wav"
    write_tone(song, seconds=0.5)
    assert main(["separate", str(song), "-o", str(tmp_path / "out")]) == 0
    fallback = [line for line in capsys.readouterr().err.splitlines() if "using the bundled tiny model" in line]
    assert len(fallback) == 1
    assert "955717e8-8726e21a.th" in fallback[0] and "$STEMDECK_MODEL_DIR" in fallback[0]
    assert str(cache_dir()) in fallback[0] and "models fetch" not in fallback[0]


def test_models_list_says_where_weights_go_without_network(capsys):
    from stemdeck.models.registry import cache_dir

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {cache_dir()}" in out and "$STEMDECK_MODEL_DIR" in out
    assert "README: Getting the official weights" in out


def test_truncated_flac_is_not_told_to_convert_it(tmp_path, capsys):
    path = tmp_path / "cut.flac"
    sf.write(str(path), np.random.default_rng(0).standard_normal((44100, 2)) * 0.1, 44100)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert main(["separate", str(path), "-o", str(tmp_path / "out"), "--model", "passthrough"]) == 1
    err = capsys.readouterr().err
    assert f"stemdeck: {path} is damaged or truncated: decoding failed" in err
    assert "convert it" not in err


@pytest.mark.parametrize("option", ["--mute", "--solo"])
def test_live_dry_run_checks_the_stems_it_is_given(capsys, option):
    """`live --dry-run --mute bogus` planned and exited 0; the session itself refuses the name."""
    assert main(["live", "--dry-run", "--model", "passthrough", option, "bogus"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("unknown stem 'bogus'; this model has drums, bass, other, vocals"), err
    assert not any("Traceback" in line for line in err)


def test_devices_with_none_says_so(capsys, monkeypatch):
    """With no sound server and no card, `stemdeck devices` printed a table header, exit 0."""
    from stemdeck.engine import device

    monkeypatch.setattr(device, "list_devices", lambda: [])
    assert main(["devices"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        "no audio devices: start the sound server (JACK, PipeWire, PulseAudio) or plug one in, then list again"
    )


def test_play_refuses_an_unknown_stem_before_the_model_loads(tmp_path):
    """`play song.wav --mute guitar` loaded the model, built the engine, then said so, followed by
    resource_tracker's two-line warning of leaked shared memory."""
    from conftest import run_stemdeck

    song = tmp_path / "song.wav"
    write_tone(song, seconds=2.0)
    result = run_stemdeck("play", song, "--model", "tiny", "--mute", "guitar", timeout_s=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "stemdeck: error: unknown stem 'guitar'; this model has drums, bass, other, vocals"
    ]


def test_a_checkpoints_unknown_stem_is_refused_before_any_engine(tmp_path, tiny_checkpoint, jack_server):
    """A checkpoint file's stems are known once it loads: refused then, with nothing left behind."""
    from conftest import run_stemdeck

    song = tmp_path / "song.wav"
    write_tone(song, seconds=2.0)
    result = run_stemdeck("play", song, "--model", tiny_checkpoint, "--solo", "5", timeout_s=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "stemdeck: error: unknown stem '5'; this model has drums, bass, other, vocals", lines
    assert not any("leaked" in line or "Traceback" in line for line in lines)


@pytest.mark.parametrize("start", ["20", "3"])
def test_play_refuses_a_start_outside_its_loop(tmp_path, capsys, start):
    """`play --loop 4:6 --start 20` started at 4 s (the loop took the playhead back at once),
    against the help's "play starts at A unless --start is given", and separated from 20 s."""
    song = tmp_path / "song.wav"
    write_tone(song, seconds=25.0)
    assert main(["play", str(song), "--model", "passthrough", "--loop", "4:6", "--start", start]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"stemdeck: error: --start {start} is outside --loop 4:6; give a --start inside the loop, "
        "or leave --start out to start at its beginning"
    ]


@pytest.mark.parametrize(
    "loop, said",
    [
        ("-1:3", "--loop -1:3: '-1' is before the track's start; times count from 0"),
        ("-0:30:1:10", "--loop -0:30:1:10: '-0:30' is before the track's start; times count from 0"),
    ],
)
def test_a_loop_from_a_negative_time_is_refused_by_its_own_check(tmp_path, capsys, loop, said):
    """argparse took ``-1:3`` for an option and said only "expected one argument"."""
    song = tmp_path / "song.wav"
    write_tone(song, seconds=5.0)
    assert main(["play", str(song), "--model", "passthrough", "--loop", loop]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"stemdeck: error: {said}"]


def test_a_negative_looking_option_is_still_an_option(tmp_path, capsys):
    """Only values with digits and a colon after the minus are taken for values: a mistyped
    option after --loop is still said to be one."""
    with pytest.raises(SystemExit) as exited:
        main(["play", "song.wav", "--loop", "-x"])
    assert exited.value.code == 2
    assert "argument --loop: expected one argument" in capsys.readouterr().err


def test_record_given_twice_is_refused(tmp_path, capsys):
    """``--record a.flac --record b.wav`` recorded only b.wav, without a word."""
    song = tmp_path / "song.wav"
    write_tone(song, seconds=1.0)
    with pytest.raises(SystemExit) as exited:
        main(["play", str(song), "--model", "passthrough", "--record", "a.flac", "--record", "b.wav"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "stemdeck play: error: argument --record: given twice (a.flac, then b.wav); give it once "
        "(`stemdeck play --help` lists the options)"
    ]
    assert not (tmp_path / "a.flac").exists() and not (tmp_path / "b.wav").exists()


@pytest.mark.parametrize("option", [["--latency", "0.01"], ["--preset", "quality"]])
def test_play_refuses_live_inputs_window_options_it_would_ignore(tmp_path, capsys, option):
    """`play --latency 0.01` was taken without a word and played with the same 70 ms: a file deck
    separates ahead of its playhead, and the live plan's options never reached it."""
    song = tmp_path / "song.wav"
    write_tone(song, seconds=1.0)
    assert main(["play", str(song), "--model", "passthrough", *option]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"stemdeck: error: {' '.join(option)} shapes live input's windows (`stemdeck live`); a file deck "
        "separates ahead of its playhead and plays with the output's latency alone: leave it out"
    ]


def test_record_with_an_empty_name_is_refused(tmp_path, capsys):
    """``--record ''`` was named "." in its refusal."""
    song = tmp_path / "song.wav"
    write_tone(song, seconds=1.0)
    with pytest.raises(SystemExit) as exited:
        main(["play", str(song), "--model", "passthrough", "--record", ""])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "stemdeck play: error: argument --record: give a file name (`stemdeck play --help` lists the options)"
    ]


@pytest.mark.parametrize("command", ["play", "live"])
def test_a_stem_both_muted_and_soloed_is_refused(tmp_path, capsys, command):
    """`play --solo bass --mute bass` was accepted without a word (trial 4)."""
    song = tmp_path / "song.wav"
    write_tone(song, seconds=1.0)
    where = [str(song)] if command == "play" else []
    assert main([command, *where, "--model", "passthrough", "--solo", "bass", "--mute", "bass"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "stemdeck: error: --mute bass and --solo bass: a stem is muted or soloed, not both; give one"
    ]
