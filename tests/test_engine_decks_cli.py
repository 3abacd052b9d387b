"""``stemdeck play A B`` as a user runs it (issue 15): two decks on the session's JACK server,
A playing and B cued, the master and cue ports there, the master recorded; a missing file in one line."""

import json
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import run_stemdeck, stemdeck_command, write_tone

DECK_PORTS = {f"stemdeck:{group}_{side}" for group in ("master", "cue") for side in "LR"}


def jack_ports(server: str) -> set[str]:
    listing = subprocess.run(["jack_lsp", "-s", server], capture_output=True, text=True, check=False).stdout
    return {name for name in listing.split("\n") if name.startswith("stemdeck:")}


def test_play_two_files_plays_deck_a_with_deck_b_cued(jack_server, tmp_path):
    first, second = tmp_path / "first.wav", tmp_path / "second.wav"
    write_tone(first, seconds=6.0)
    write_tone(second, seconds=4.0)
    stats_path, take = tmp_path / "stats.json", tmp_path / "take.wav"
    cli = subprocess.Popen(
        stemdeck_command(
            "play", first, second, "--model", "passthrough", "--duration", "2", "--stats", stats_path, "--record", take
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[str] = set()
    while cli.poll() is None:
        seen |= jack_ports(jack_server)
        time.sleep(0.2)
    _, stderr = cli.communicate(timeout=120)
    assert cli.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "deck A: first.wav playing; deck B: second.wav cued" in stderr
    assert DECK_PORTS <= seen
    stats = json.loads(stats_path.read_text())
    assert stats["A"]["playing"] and 1.0 < stats["A"]["position_s"] < 4.0
    assert not stats["B"]["playing"] and stats["B"]["position_s"] == 0.0
    assert stats["B"]["seconds_ahead"] > 1.0  # cued, and separated from its load on
    assert stats["A"]["late_windows"] == 0 and stats["cue_output"] is True
    assert stats["crossfader"] == 0.0 and stats["master_peak"] > 0.1
    assert 256 / 44.1 < stats["latency_ms"] < 4 * 256 / 44.1  # a period and the dummy driver's latency
    recorded, samplerate = sf.read(take, dtype="float32")  # the master: deck A's tone
    assert samplerate == 44100 and 1.5 < recorded.shape[0] / samplerate < 2.5
    assert np.abs(recorded).max(axis=0) == pytest.approx([0.3, 0.3], abs=0.01)


def test_a_missing_second_file_is_one_line(tmp_path):
    first = tmp_path / "first.wav"
    write_tone(first, seconds=1.0)
    result = run_stemdeck("play", first, tmp_path / "nope.wav", "--model", "passthrough")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.wav" in lines[0] and "Traceback" not in result.stderr
