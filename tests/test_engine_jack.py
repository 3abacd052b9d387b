"""The engine on a real JACK server (dummy driver): a player client feeds its inputs, a
recorder client records its outputs, both in JACK's own process cycle."""

import os
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    JACK_PERIOD,
    JACK_RATE,
    JackProbe,
    run_stemdeck,
    start_jack_server,
    stemdeck_command,
    stop_jack_server,
)

from stemdeck.engine.config import EngineConfig, WindowConfig
from stemdeck.engine.engine import Engine
from stemdeck.models.nets.passthrough import PassThrough

FAST_PLAN = WindowConfig(window_s=0.5, hop_s=0.1, lookahead_s=0.05, span_s=0.2)


@dataclass
class Recording:
    data: np.ndarray  # (channels, frames) recorded from the engine's outputs
    recorder_start: int  # JACK frame time of data[:, 0]
    player_start: int  # JACK frame time of the signal's first frame


def run_live(server, engine, signal, record_s, out_channels=2, tmp_path=None):
    """Play ``signal`` into the engine and record its outputs with a probe in another process.

    ``xruns`` in the returned status count from when the probe's clients were connected (their
    activation reorders the JACK graph, which PortAudio reports to every running client)."""
    import tempfile

    engine.start_live(stem_outputs=out_channels > 2)
    try:
        with JackProbe(server, signal, record_s, out_channels, Path(tempfile.mkdtemp())) as probe:
            probe.expect("ROUTED")
            time.sleep(0.1)
            xruns_before = engine.status().xruns
            probe.expect("RECORDED")
            status = engine.status()
            result = probe.result()
    finally:
        engine.stop()
    recording = Recording(result["data"], int(result["recorder_start"]), int(result["player_start"]))
    return recording, replace(status, xruns=status.xruns - xruns_before)


def wait_for_ports(server: str, *names: str, timeout_s: float = 90.0) -> bool:
    """Whether JACK lists every port in ``names`` in time (asked by jack_lsp, in another process)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = subprocess.run(["jack_lsp", "-s", server], capture_output=True, text=True).stdout.split("\n")
        if all(name in listed for name in names):
            return True
        time.sleep(0.2)
    return False


# The live tests below run their separation process at normal priority ("nice"): at the default
# "idle" a busy CI machine (earlier tests' processes still exiting) starved it now and then, and
# its first late window (which idle scheduling answers by going back to nice: test_engine_scheduling)
# failed these tests of latency and routing (both, in 1 full run of 7 at stop 30).
LIVE_TEST_CONFIG = EngineConfig(precision="fp32", worker_scheduling="nice")


def test_end_to_end_delay_equals_reported_latency(jack_server):
    engine = Engine(PassThrough(), LIVE_TEST_CONFIG)
    engine.prepare(FAST_PLAN, block_frames=JACK_PERIOD)
    signal = np.zeros((2, 3 * JACK_RATE), np.float32)
    impulse_at = JACK_RATE // 2
    signal[:, impulse_at] = 1.0
    recording, status = run_live(jack_server, engine, signal, 2.5)
    found = int(np.argmax(np.abs(recording.data[0])))
    delay = (recording.recorder_start + found) - (recording.player_start + impulse_at)
    # xruns are not asserted: on a shared 2-core machine the JACK server reports some whichever
    # client was late (jackd's log names the player, PortAudio's idle client, stemdeck alike).
    # What a late cycle would break is asserted on the audio: one impulse, unchanged, at the
    # reported latency, and nothing else anywhere in the recording.
    assert status.late_windows == 0
    assert recording.data[0, found] == pytest.approx(1.0, abs=1e-6)
    elsewhere = np.delete(recording.data, found, axis=1)
    assert np.abs(elsewhere).max() < 1e-6
    assert abs(delay - engine.latency_samples) <= JACK_PERIOD, (delay, engine.latency_samples)


def test_mute_and_solo_act_on_the_intended_stem(jack_server):
    engine = Engine(PassThrough(), LIVE_TEST_CONFIG)
    engine.prepare(FAST_PLAN, block_frames=JACK_PERIOD)
    engine.set_mute("vocals")
    engine.set_solo("bass")
    engine.set_solo("vocals")
    tone = (0.5 * np.sin(2 * np.pi * 441 * np.arange(3 * JACK_RATE) / JACK_RATE)).astype(np.float32)
    recording, status = run_live(jack_server, engine, np.stack([tone, tone]), 2.5, out_channels=10)
    settled = slice(engine.latency_samples + JACK_RATE // 4, recording.data.shape[1] - JACK_PERIOD)
    peaks = np.abs(recording.data[:, settled]).max(axis=1)
    assert status.late_windows == 0
    assert peaks[0] == pytest.approx(0.2 * 0.5, abs=1e-4)  # bass soloed; vocals soloed but muted
    stem_peaks = peaks[2::2]
    assert stem_peaks == pytest.approx([0.0, 0.2 * 0.5, 0.0, 0.0], abs=1e-4)


def test_stopped_jack_server_ends_the_session_with_one_line(tmp_path):
    name = f"stemdeck-kill-{os.getpid()}"
    server = start_jack_server(name, playback_channels=2)
    env = {**os.environ, "JACK_DEFAULT_SERVER": name, "JACK_NO_AUDIO_RESERVATION": "1"}
    cli = subprocess.Popen(
        stemdeck_command(
            "live",
            "--model",
            "passthrough",
            "--preset",
            "low-latency",
            "--duration",
            "60",
            "--stats",
            str(tmp_path / "s.json"),
        ),
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert wait_for_ports(name, "stemdeck:master_L"), "stemdeck live never showed its JACK ports"
    time.sleep(1)
    stop_jack_server(server)
    started = time.time()
    try:
        _, stderr = cli.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        cli.kill()
        pytest.fail("stemdeck live hung after the JACK server stopped")
    assert cli.returncode == 1
    assert time.time() - started < 30
    assert "Traceback" not in stderr
    assert "stemdeck: error: the audio stream stopped" in stderr
    assert (tmp_path / "s.json").exists()


def test_cli_play_reports_stats_as_json(jack_server, tmp_path):
    import json

    from conftest import write_tone

    song = tmp_path / "song.wav"
    write_tone(song, seconds=3.0)
    result = run_stemdeck(
        "play",
        str(song),
        "--model",
        "passthrough",
        "--mute",
        "vocals",
        "--duration",
        "2",
        "--stats",
        str(tmp_path / "stats.json"),
        timeout_s=120,
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert set(stats) >= {
        "latency_samples",
        "latency_ms",
        "xruns",
        "late_windows",
        "realtime_factor",
        "seconds_ahead",
        "first_stems_s",
    }
    assert isinstance(stats["xruns"], int) and stats["xruns"] >= 0  # the server's count: machine-dependent
    assert stats["late_windows"] == 0
    assert stats["latency_ms"] == pytest.approx(1000 * stats["latency_samples"] / JACK_RATE, rel=1e-9)
    assert stats["realtime_factor"] > 0
    assert stats["first_stems_s"] is not None and stats["first_stems_s"] < 1.5
    assert "latency" in result.stderr


def test_unknown_output_device_is_one_line(jack_server):
    result = run_stemdeck(
        "live", "--model", "passthrough", "--output", "no-such-card", "--duration", "1", timeout_s=120
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no output device matches 'no-such-card'" in result.stderr


def test_live_dry_run_prints_each_presets_latency_on_this_machine_and_plays_nothing(jack_server):
    import re

    result = run_stemdeck("live", "--dry-run", "--model", "passthrough", "--latency", "1.5", timeout_s=180)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = re.findall(
        r"^  (\S+(?: \S+)?)\s+latency\s+(\d+) ms\s+window ([\d.]+) s, hop ([\d.]+) s", result.stdout, re.M
    )
    assert [row[0] for row in rows] == ["quality", "balanced", "low-latency", "--latency 1.5"]
    latency_ms = {name: int(ms) for name, ms, _, _ in rows}
    assert latency_ms["low-latency"] < latency_ms["balanced"] < latency_ms["quality"]
    assert f"block {JACK_PERIOD} at {JACK_RATE} Hz" in result.stdout  # the JACK server's period and rate
    assert "passthrough" in result.stdout
