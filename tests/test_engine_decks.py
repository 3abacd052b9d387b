"""Two decks on one output (issue 15): the mix kernel's numbers, and on a real JACK server (the
session's ``jack_server``) with the pass-through model: loading one deck never disturbs the
other, the cue output carries one deck while the master carries the other, sync."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import JACK_PERIOD, JACK_RATE, JackProbe, JackRecorder, pass_through_deck, sine_track, wait_until

from stemdeck.engine.audio.decks_mix import (
    CONSTANT_POWER,
    CROSSFADER,
    CUT,
    LINEAR,
    TO_MASTER_A,
    TO_MASTER_B,
    crossfader_gains,
    mix_controls,
    mix_decks,
    mix_ramps,
    update_mix_targets,
)
from stemdeck.engine.audio.mixer import GAIN_CURRENT
from stemdeck.engine.config import EngineConfig
from stemdeck.engine.decks import DeckBusy, Decks, DecksConfig, deck_index
from stemdeck.engine.engine import Engine
from stemdeck.models.nets.passthrough import PassThrough

TONE_A_HZ, TONE_B_HZ = 220.0, 330.0
AMPLITUDE = 0.3
VOCALS = 3


def noise(seconds: float, seed: int = 7) -> np.ndarray:
    """A track no stretch of which repeats, so a recording of it has one place in it."""
    rng = np.random.default_rng(seed)
    return (0.25 * rng.standard_normal((2, int(seconds * JACK_RATE)))).astype(np.float32)


@pytest.fixture
def decks():
    pair = Decks(pass_through_deck(), pass_through_deck(), DecksConfig(priority=False))
    yield pair
    pair.stop()


@pytest.fixture
def recorder(jack_server):
    probe = JackRecorder(jack_server, 4)
    yield probe
    probe.close()


def amplitude_at(signal: np.ndarray, hz: float) -> float:
    """The amplitude of the ``hz`` sine in ``signal`` (a whole number of periods is not needed:
    a Hann window keeps the neighbours out). Within 5 %: a cycle the busy server misses (an
    xrun, every client's) takes a block out of the recording; a wrong deck is off by 40 % or all."""
    window = np.hanning(signal.shape[-1])
    t = np.arange(signal.shape[-1]) / JACK_RATE
    return float(2 * abs(np.sum(signal * window * np.exp(-2j * np.pi * hz * t))) / np.sum(window))


def start_playing(decks: Decks, which: str, track: np.ndarray) -> None:
    decks.load_array(which, track)
    assert decks.deck(which).wait_separated(track.shape[-1] - 1, timeout_s=60)
    decks.deck(which).play()


# -- the mix kernel ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("curve", "position", "expected"),
    [
        (CONSTANT_POWER, 0.0, (1.0, 0.0)),
        (CONSTANT_POWER, 0.5, (np.sqrt(0.5), np.sqrt(0.5))),
        (CONSTANT_POWER, 1.0, (0.0, 1.0)),
        (LINEAR, 0.25, (0.75, 0.25)),
        (CUT, 0.5, (1.0, 1.0)),
        (CUT, 0.99, (0.2, 1.0)),
        (CONSTANT_POWER, float("nan"), (1.0, 0.0)),  # a bad value: the crossfader's rest, not noise
    ],
)
def test_crossfader_curves(curve, position, expected):
    assert crossfader_gains(position, curve) == pytest.approx(expected, abs=1e-12)


def test_a_crossfader_jump_ramps_over_ten_ms_without_a_step():
    controls, ramps, levels = mix_controls(), mix_ramps(), np.zeros((2, 4), np.float32)
    ramp_frames = 441
    a = np.ones((JACK_PERIOD, 2), np.float32)
    b = np.zeros_like(a)
    out = np.zeros((JACK_PERIOD, 4), np.float32)
    controls[CROSSFADER] = 1.0  # all the way to B at once
    heard = []
    for _ in range(3):
        update_mix_targets(ramps, controls, ramp_frames)
        mix_decks(out, a, b, 2, 2, ramps, levels)
        heard.append(out[:, 0].copy())
    heard = np.concatenate(heard)
    assert heard[0] == pytest.approx(1.0 - 1.0 / ramp_frames)  # the first sample already moves
    assert np.max(np.abs(np.diff(heard))) <= 1.0 / ramp_frames + 1e-6  # a straight ramp, no step
    assert np.all(heard[ramp_frames:] == 0.0)  # then deck A is gone
    assert ramps[GAIN_CURRENT, TO_MASTER_A] == 0.0 and ramps[GAIN_CURRENT, TO_MASTER_B] == 1.0


def test_deck_names_and_one_line_refusals(decks):
    assert deck_index("a") == 0 and deck_index("B") == 1 and deck_index(1) == 1
    with pytest.raises(ValueError, match="the decks are A and B"):
        deck_index("C")
    with pytest.raises(ValueError, match="unknown crossfader curve 'steep'; use linear, constant-power, cut"):
        decks.set_crossfader_curve("steep")
    with pytest.raises(ValueError, match="crossfader is not a number"):
        decks.set_crossfader(float("nan"))


def test_build_makes_two_decks_of_one_model_each_with_its_own_worker():
    model = PassThrough()
    decks = Decks.build(model, samplerate=JACK_RATE, block_frames=JACK_PERIOD, precision="fp32", worker="thread")
    try:
        a, b = decks.decks
        assert a is not b and a.model is model and b.model is model
        assert a.backend is not b.backend and a.shared is not b.shared
        assert decks.status().decks[0].samplerate == JACK_RATE
    finally:
        decks.stop()


def test_loading_the_playing_deck_is_refused_and_the_deck_plays_on(decks):
    track = sine_track(TONE_A_HZ, 2.0)
    decks.load_array("A", track)
    decks.deck("A").play()
    with pytest.raises(DeckBusy, match="^deck A is playing; pause it first, or load into deck B$"):
        decks.load_array("A", sine_track(TONE_B_HZ, 2.0))
    assert decks.deck("A").mixer().playing
    assert decks.deck("A").track_seconds == pytest.approx(2.0)


def test_process_block_mixes_cue_and_master_without_a_device(decks):
    start_playing(decks, "A", sine_track(TONE_A_HZ, 2.0))
    start_playing(decks, "B", sine_track(TONE_B_HZ, 2.0))
    decks.set_cue("B")
    decks.set_cue_mix(0.0)
    out = np.zeros((JACK_PERIOD, 4), np.float32)
    for _ in range(4):  # past the 10 ms ramps
        decks.process_block(out)
    record = np.zeros((4, 40 * JACK_PERIOD), np.float32)
    for k in range(40):
        decks.process_block(out)
        record[:, k * JACK_PERIOD : (k + 1) * JACK_PERIOD] = out.T
    assert amplitude_at(record[0], TONE_A_HZ) == pytest.approx(AMPLITUDE, rel=0.05)
    assert amplitude_at(record[0], TONE_B_HZ) < 1e-3
    assert amplitude_at(record[2], TONE_B_HZ) == pytest.approx(AMPLITUDE, rel=0.05)
    assert amplitude_at(record[2], TONE_A_HZ) < 1e-3
    assert decks.status().peak[2] == pytest.approx(AMPLITUDE, rel=0.05)  # the master meter


# -- on a real JACK server ---------------------------------------------------------------------------------


SETTLE_PERIODS = 8  # 46 ms at 44.1 kHz / 256: B loads 0.3 s after the probe is connected


def _record_while_b_loads(decks: Decks, server: str, folder: Path) -> tuple[np.ndarray, int]:
    """Deck A's master over 1.5 s, recorded by a probe in another process (its Python callback
    never waits on this process's interpreter lock), with deck B loaded in the middle; the
    server's xruns meanwhile."""
    with JackProbe(server, np.zeros((2, 1), np.float32), 1.5, 2, folder) as probe:  # it plays nothing into us
        probe.expect("ROUTED")
        xruns = decks.deck("A").status().xruns
        time.sleep(0.3)
        began = time.monotonic()
        decks.load_array("B", sine_track(TONE_B_HZ, 6.0))
        assert time.monotonic() - began < 1.0  # the load happened inside the recording
        probe.expect("RECORDED")
        xruns = decks.deck("A").status().xruns - xruns
        heard = probe.result()["data"][:, : int(1.5 * JACK_RATE)]
    # The probe records from before its connections, made one port at a time, and JACK re-sorts
    # its clients' order for a new connection from a later cycle: the first periods heard may be
    # a cycle's buffer late (512-1024 frames at the very start differed on a busy machine, with
    # no xrun, 0.3 s before B loaded). Deck A's noise is never exactly 0: from the last channel's
    # first sample, after SETTLE_PERIODS, still long before the load.
    connected = max(int(np.flatnonzero(channel)[0]) for channel in heard) + SETTLE_PERIODS * JACK_PERIOD
    return heard[:, connected:], xruns


def test_loading_b_while_a_plays_leaves_a_sample_identical(jack_server, decks, tmp_path):
    """Deck A plays its dry track (dry mix 1: the output is the file's samples exactly), so any
    dropped, repeated or changed sample while B loads shows as a mismatch with the file. A
    mismatch is allowed only where the JACK server itself reported an xrun (a busy machine
    misses a cycle for every client): that attempt is repeated, at most 3 in all."""
    track_a = noise(12.0)
    decks.load_array("A", track_a)
    decks.deck("A").set_dry_mix(1.0)
    decks.start_output()
    decks.deck("A").play()
    time.sleep(0.1)  # past the dry mix's ramp
    for _ in range(3):
        heard, xruns = _record_while_b_loads(decks, jack_server, tmp_path)
        starts = np.flatnonzero(track_a[0] == heard[0, 0])
        assert len(starts) == 1, "the recording's first sample is not deck A's track"
        start = int(starts[0])
        expected = track_a[:, start : start + heard.shape[1]]
        if np.array_equal(heard, expected):
            break
        wrong = np.flatnonzero(np.any(heard != expected, axis=0))
        assert xruns > 0, (
            f"deck A's output changed while B loaded, with no xrun to explain it: {len(wrong)} frames "
            f"from {wrong[0]} of {heard.shape[1]}"
        )
    else:
        pytest.fail("the JACK server ran late in every attempt; the machine is too busy to tell")
    assert decks.deck("B").mode == "deck" and not decks.deck("B").mixer().playing


def _until_the_cue_carries(recorder, heard_hz: float, gone_hz: float, timeout_s: float = 10.0) -> None:
    """The cue output changed over before it is measured: a 0.1 s wait was too short once in a
    full CI rehearsal (the other tone still at 0.0025 in the next 0.5 s; never alone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        cue = recorder.record(0.1)[1]
        if amplitude_at(cue, gone_hz) < 1e-3 and amplitude_at(cue, heard_hz) > 0.95 * AMPLITUDE:
            return
        assert time.monotonic() < deadline, f"the cue output did not change over to {heard_hz:g} Hz"


def _record_without_leaks(decks, recorder, leaks) -> np.ndarray:
    """Half a second of the recorder's ports, where ``leaks(recording)`` names no tone heard where
    it must not be. A leak is allowed only where the JACK server reported an xrun meanwhile: a
    missed cycle leaves a gap whose edges ring at every frequency (the silent tone at 0.0025-0.0029
    in full CI rehearsals). That attempt is repeated, at most 3 in all."""
    for _ in range(3):
        xruns = decks.deck("A").status().xruns
        recording = recorder.record(0.5)
        leaked = leaks(recording)
        if not leaked:
            return recording
        assert decks.deck("A").status().xruns > xruns, f"{leaked}, with no xrun to explain it"
    pytest.fail("the JACK server ran late in every attempt; the machine is too busy to tell")


def _leaks(**silent_hz: tuple[int, float]):
    """``name=(channel, tone)``: what the check for :func:`_record_without_leaks` says of each
    tone heard above 1e-3 on its channel."""
    return lambda recording: "; ".join(
        f"{tone:g} Hz at {amplitude_at(recording[channel], tone):.4f} on the {name}"
        for name, (channel, tone) in silent_hz.items()
        if amplitude_at(recording[channel], tone) >= 1e-3
    )


def test_cue_output_carries_b_while_the_master_carries_a(jack_server, decks, recorder):
    decks.start_output()
    recorder.connect("stemdeck:master_L", "stemdeck:cue_L", "stemdeck:master_R", "stemdeck:cue_R")
    start_playing(decks, "A", sine_track(TONE_A_HZ, 6.0))
    start_playing(decks, "B", sine_track(TONE_B_HZ, 6.0))  # playing, but the crossfader is on A
    decks.set_cue("B")
    decks.set_cue_mix(0.0)  # the headphones hear the cue bus alone
    _until_the_cue_carries(recorder, TONE_B_HZ, TONE_A_HZ)
    master, cue = _record_without_leaks(decks, recorder, _leaks(master=(0, TONE_B_HZ), cue=(1, TONE_A_HZ)))[:2]
    assert amplitude_at(master, TONE_A_HZ) == pytest.approx(AMPLITUDE, rel=0.05)
    assert amplitude_at(master, TONE_B_HZ) < 1e-3
    assert amplitude_at(cue, TONE_B_HZ) == pytest.approx(AMPLITUDE, rel=0.05)
    assert amplitude_at(cue, TONE_A_HZ) < 1e-3
    decks.set_cue_mix(1.0)  # the knob to master: the headphones hear A
    _until_the_cue_carries(recorder, TONE_A_HZ, TONE_B_HZ)
    cue = _record_without_leaks(decks, recorder, _leaks(cue=(1, TONE_B_HZ)))[1]
    assert amplitude_at(cue, TONE_A_HZ) == pytest.approx(AMPLITUDE, rel=0.05)
    assert amplitude_at(cue, TONE_B_HZ) < 1e-3


def test_sync_matches_the_other_decks_tempo_within_a_tenth_of_a_bpm_and_its_beats(jack_server, decks):
    from stemdeck.engine.audio.state import POSITION, playhead_frames

    a, b = decks.deck("A"), decks.deck("B")
    decks.start_output()
    # long enough that neither deck ends before the last measurement on a busy machine (the stretch
    # process's start alone takes 5 s there), where a deck that ran out reads as a wrong tempo
    start_playing(decks, "A", sine_track(TONE_A_HZ, 30.0))
    start_playing(decks, "B", sine_track(TONE_B_HZ, 30.0))
    a.set_beat_grid(120.0, 0.0)
    b.set_beat_grid(126.0, 0.1)
    with pytest.raises(ValueError, match="^deck A's tempo is not known yet"):
        a.set_beat_grid(None)
        decks.sync("B")
    a.set_beat_grid(120.0, 0.0)
    decks.sync("B")
    assert Decks.heard_bpm(b) == pytest.approx(120.0, abs=0.1)
    # the stretch joins (after sync's seek) within half a second: until then the old tempo plays
    assert wait_until(lambda: _stretch_joined(b), timeout_s=0.5), "the old tempo played on after sync"
    time.sleep(0.1)
    # on A's beats once joined: the same place in the beat, within a block (read now: the stretch
    # running dry later on a busy machine leaves B behind by the silence it played)
    phase_a = (playhead_frames(a.shared) / JACK_RATE / 0.5) % 1.0
    phase_b = ((playhead_frames(b.shared) / JACK_RATE - 0.1) / (60 / 126)) % 1.0
    assert abs((phase_a - phase_b + 0.5) % 1.0 - 0.5) < 0.03, (phase_a, phase_b, b.practice.underflows)
    for _ in range(3):  # the tempo heard: source frames played per output frame, times the recorded tempo
        underflows = b.practice.underflows  # the stretcher ran dry (a busy machine): that second says nothing
        source, output = playhead_frames(b.shared), int(b.shared.audio[POSITION])
        time.sleep(2.0)
        heard_bpm = 126.0 * (playhead_frames(b.shared) - source) / (int(b.shared.audio[POSITION]) - output)
        if b.practice.underflows == underflows:
            break
    assert heard_bpm == pytest.approx(120.0, abs=0.1), f"stretch underflows {b.practice.underflows}"


def _stretch_joined(engine: Engine) -> bool:
    """The deck plays the stretch stage's output: an epoch started after the last seek, joined."""
    from stemdeck.engine.audio.state import SEEK_SEEN, SEEK_SERIAL
    from stemdeck.engine.audio.stretched import EPOCH, EPOCH_SEEK, JOINED

    state, audio = engine.practice.buffers.state, engine.shared.audio
    seek = int(engine.shared.transport[SEEK_SERIAL])
    epoch = int(state[EPOCH])
    after_seek = int(audio[SEEK_SEEN]) == seek == int(state[EPOCH_SEEK])
    return after_seek and epoch % 2 == 0 and int(state[JOINED]) == epoch != 0


# In a fresh interpreter: the stage's warm-up, then a real epoch (playing, mid-track, at another
# tempo): the kernels' signatures before and after it.
_STAGE_WARM_UP_SCRIPT = """
import json

import numpy as np
from numba.core.registry import CPUDispatcher
from stemdeck.engine.audio.state import PLAY, PLAYHEAD, STEMS_WRITTEN, SharedState
from stemdeck.engine.audio.stretched import TEMPO, StretchBuffers
from stemdeck.engine.stretch import stage

config = stage.StageConfig()
stretcher = stage.warm_up_stage(4, 2, 44100, config)
kernels = {name: f for name, f in vars(stage).items() if isinstance(f, CPUDispatcher)}
warmed = {name: len(f.signatures) for name, f in kernels.items()}
slots = SharedState.specs(4)
inputs = stage.StageInputs(
    np.zeros((2, 88200), np.float32),
    np.zeros((4, 2, 88200), np.float32),
    *(np.zeros(*slots[name]) for name in ("audio", "worker", "transport")),
)
inputs.worker[STEMS_WRITTEN] = 88200
inputs.transport[PLAY], inputs.audio[PLAYHEAD] = 1, 44100
stretch = StretchBuffers.allocate(4, 2, config.ring_frames)
stretch.controls[TEMPO] = 120 / 126
real = stage.StretchStage(inputs, stretch, 44100, 2, config, stretcher)
for _ in range(8):
    real.step()
print(json.dumps(warmed))
print(json.dumps({name: len(f.signatures) for name, f in kernels.items()}))
"""


def test_the_stretch_stage_warm_up_compiles_every_kernel_a_playing_decks_first_epoch_calls():
    """The sync test's flake: a kernel the warm-up missed (``advance``, for an epoch ahead of a
    playing playhead) was compiled inside the first epoch's set-up, 0.4 s on a busy machine with
    a cold cache; the epoch's start was then behind the playhead and the old tempo played on."""
    result = subprocess.run([sys.executable, "-c", _STAGE_WARM_UP_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    warmed, after = map(json.loads, result.stdout.splitlines()[-2:])
    assert "advance" in warmed and min(warmed.values()) >= 1, warmed  # every kernel the stage calls
    assert after == warmed  # and the real epoch compiled nothing new


class SlowPassThrough(PassThrough):
    """The pass-through model at two seconds a window: a deck that takes its time."""

    def forward(self, mix):
        time.sleep(2.0)
        return super().forward(mix)


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]  # R, S, T (stopped), ...


def test_the_deck_on_air_gets_the_cpu_the_other_separation_waits(jack_server):
    """Deck A (on air, separating slowly) has priority: deck B's separation process is stopped
    while A is less than the lead ahead, continued when A pauses, and a load into B still works."""
    config = EngineConfig(
        precision="fp32", samplerate=JACK_RATE, inference_budget_s=0.0, cache_stems=False, beat_tracking=False
    )
    slow = Engine(SlowPassThrough(), EngineConfig(**{**config.__dict__, "worker": "thread"}))
    other = Engine(PassThrough(), EngineConfig(**{**config.__dict__, "worker": "process"}))
    decks = Decks(slow, other, DecksConfig(priority_lead_s=1000.0, priority_poll_s=0.02))
    try:
        decks.load_array("B", sine_track(TONE_B_HZ, 30.0))
        decks.start_output()  # first: its kernel's first compile takes long on a busy machine
        decks.load_array("A", sine_track(TONE_A_HZ, 120.0))  # 21 windows: separated in no less than 42 s
        pid = other.backend.process.pid
        decks.deck("A").play()
        assert wait_until(lambda: decks.status().paused_separation == "B")
        assert decks.status().on_air == "A" and _process_state(pid) == "T"
        decks.deck("A").pause()
        assert wait_until(lambda: decks.status().paused_separation is None)
        assert _process_state(pid) != "T"
        decks.deck("A").play()
        assert wait_until(lambda: decks.status().paused_separation == "B")
        began = time.monotonic()
        decks.load_array("B", sine_track(TONE_B_HZ, 5.0))  # its stopped worker is continued to load
        assert time.monotonic() - began < 10.0 and decks.deck("B").track_seconds == pytest.approx(5.0)
        assert wait_until(lambda: decks.status().paused_separation == "B")  # and stopped again
    finally:
        decks.stop()
