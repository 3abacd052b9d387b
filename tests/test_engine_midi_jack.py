"""MIDI through a real JACK server (dummy driver) with rtmidi's JACK API: a second client plays
the controller, with its own output (pads, faders) and input (LEDs)."""

import subprocess
import sys
import time

import pytest
from conftest import run_stemdeck
from fake_controller import CONTROLLER, FakeController
from test_engine_midi import BASS, VOCALS, deck, settled_ratio  # noqa: F401  (the deck fixture)

from stemdeck.engine.midi import MidiConfig, MidiController, MidiError, default_mapping, load_mapping, parse
from stemdeck.engine.midi.ports import open_client


@pytest.fixture
def fake(jack_server):
    controller = FakeController()
    yield controller
    controller.close()


def wait_for(condition, timeout_s=5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def midi(deck, fake):
    with MidiController(
        deck, default_mapping(4), MidiConfig(input=CONTROLLER, api="jack", hotplug_poll_s=0.05)
    ) as controller:
        yield controller


def test_note_on_from_another_client_mutes_the_vocals_in_the_output(deck, fake, midi):
    assert midi.input_names == [f"{CONTROLLER}:pads out"]
    assert settled_ratio(deck) == pytest.approx(1.0, abs=1e-5)
    fake.send(0x90, 36 + VOCALS, 100)
    assert wait_for(lambda: deck.mixer().mute[VOCALS])
    assert settled_ratio(deck) == pytest.approx(0.6, abs=1e-5)
    fake.send(0x90, 36 + VOCALS, 0)
    fake.send(0x90, 36 + VOCALS, 100)  # press again: back
    assert wait_for(lambda: not deck.mixer().mute[VOCALS])
    assert settled_ratio(deck) == pytest.approx(1.0, abs=1e-5)


def test_learn_binds_a_cc_and_the_fader_follows(deck, fake, midi):
    midi.learn("gain", BASS)
    fake.send(0xB2, 74, 64)
    result = midi.wait_learned(5)
    assert result is not None and (result.binding.number, result.binding.channel) == (74, 3)
    fake.send(0xB2, 74, 100)
    assert wait_for(lambda: deck.mixer().gain_db[BASS] == pytest.approx(0.0, abs=1e-4))
    fake.send(0xB2, 74, 0)
    assert wait_for(lambda: deck.mixer().gain_db[BASS] <= -60)
    assert settled_ratio(deck) == pytest.approx(0.8, abs=1e-5)


def test_led_feedback_at_start_and_on_every_change_whoever_makes_it(deck, fake, midi):
    # found as the same controller's port (JACK numbers a client's second connection: fakectl-01)
    assert midi.output_name.startswith(CONTROLLER) and midi.output_name.endswith(":leds in")
    for stem in range(4):  # every pad's state at start
        assert fake.wait_led([0x90, 36 + stem, 0])
    fake.send(0x90, 36 + VOCALS, 100)  # from MIDI
    assert fake.wait_led([0x90, 36 + VOCALS, 127])
    deck.set_solo(BASS)  # from the GUI or keyboard: the engine's control API
    assert fake.wait_led([0x90, 42 + BASS, 127])
    deck.set_gain(BASS, -6.0)  # a fader: its CC carries the position back
    assert wait_for(lambda: any(m[:2] == [0xB0, 1 + BASS] and m[2] < 100 for m in fake.leds))


def test_a_controller_that_disappears_and_comes_back_is_reconnected(deck, fake, midi):
    fake.unplug()
    assert wait_for(lambda: any("disconnected" in e for e in midi.events))
    assert midi.input_names == []
    fake.plug()  # JACK may give it a new client number; the name still matches
    assert wait_for(lambda: any("reconnected" in e for e in midi.events))
    assert midi.input_names and midi.input_names[0].endswith(":pads out")
    time.sleep(0.1)  # JACK's connection lands on its next cycle
    fake.send(0x90, 36 + VOCALS, 100)
    assert wait_for(lambda: deck.mixer().mute[VOCALS])


def test_malformed_and_unexpected_messages_are_ignored(deck, fake, midi):
    for message in ([0xF0, 0x7E, 0x7F, 0x06, 0x01, 0xF7], [0xD0, 64], [0xE0, 0, 64], [0xA0, 39, 3], [39, 100], [0xF8]):
        fake.send(*message)
    fake.send(0x90, 36 + VOCALS, 100)  # and what follows still works
    assert wait_for(lambda: deck.mixer().mute[VOCALS])
    assert midi.applied == 1
    assert deck.mixer().mute == (False, False, False, True) and deck.mixer().solo == (False,) * 4


class Unloaded:
    """The GUI's controls before a model is loaded: every control refuses."""

    sources = ("drums", "bass", "other", "vocals")

    def mixer(self, *args):
        raise RuntimeError("no model is loaded yet")

    set_mute = set_gain = mixer


def test_a_refusal_repeated_by_every_message_is_said_once(fake):
    """A fader moved before a model is loaded sends dozens of messages: one line, not one each."""
    lines = []
    config = MidiConfig(input=CONTROLLER, api="jack")
    with MidiController(Unloaded(), default_mapping(4), config, report=lines.append) as controller:
        for value in range(40):
            fake.send(0xB0, 1, value)  # channel 1 CC 1: the drums' fader
        assert wait_for(lambda: controller.received == 40)
    assert lines == ["MIDI message not applied: no model is loaded yet"]


# A controller in its own process that sends a fader move every 50 µs (about 100 in each JACK
# cycle), and a stemdeck process that opens and closes its MIDI ports meanwhile, its main thread
# busy between (the GUI thread as the user quits): the test sees a crash or a hang as the
# second process's exit.
FLOOD = """
import time
from stemdeck.engine.midi.ports import open_client

pads = open_client("out", "jack", "flood")
pads.open_virtual_port("pads out")
print("ready", flush=True)
while True:
    pads.send_message([0xB0, 7, 64])
    time.sleep(0.00005)
"""
OPEN_AND_CLOSE = """
import sys, time
from stemdeck.engine.midi import MidiConfig, MidiController, default_mapping
from stemdeck.engine.midi.cli import _NoEngine

received = 0
for _ in range(int(sys.argv[1])):
    config = MidiConfig(input="flood", api="jack", hotplug_poll_s=0.05)
    controller = MidiController(_NoEngine(), default_mapping(4), config).start()
    busy_until = time.perf_counter() + 0.03
    while time.perf_counter() < busy_until:
        pass
    controller.close()
    received += controller.received
print("received", received)
"""


def test_closing_while_a_controller_floods_neither_crashes_nor_hangs(jack_server):
    """With an rtmidi callback this crashed (SIGSEGV) or hung: the callback, waiting for the GIL on
    JACK's thread, was freed under it, or waited for by a port closing with the GIL held."""
    cycles = 12
    flood = subprocess.Popen([sys.executable, "-c", FLOOD], stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout.readline().strip() == "ready"
        result = subprocess.run(
            [sys.executable, "-c", OPEN_AND_CLOSE, str(cycles)], capture_output=True, text=True, timeout=90
        )
    finally:
        flood.kill()
        flood.wait()
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) >= 100 * cycles  # each controller applied the moves that came


def test_virtual_port_lets_another_app_drive_stemdeck(deck, jack_server):
    with MidiController(deck, default_mapping(4), MidiConfig(virtual=True, api="jack")) as controller:
        app = open_client("out", "jack", "daw")
        try:
            ports = app.get_ports()
            app.open_port(next(i for i, n in enumerate(ports) if n.endswith("stemdeck-midi-in:control in")))
            time.sleep(0.1)
            app.send_message([0x90, 42 + VOCALS, 100])
            assert wait_for(lambda: deck.mixer().solo[VOCALS])
            assert controller.applied == 1
        finally:
            app.close_port()
            app.delete()


def test_unknown_input_is_one_clear_error(deck, fake):
    with pytest.raises(MidiError, match=r"no MIDI input matches 'nanoKONTROL'; inputs: 'fakectl:pads out'"):
        MidiController(deck, default_mapping(4), MidiConfig(input="nanoKONTROL", api="jack")).start()


def _cli(*args):
    return run_stemdeck(*args, timeout_s=180)


def test_cli_lists_ports(fake):
    result = _cli("midi", "list", "--midi-api", "jack")
    assert result.returncode == 0, result.stderr
    assert "  fakectl:pads out" in result.stdout and "  fakectl-01:leds in" in result.stdout


def _armed_learn(control, mapping):
    """`stemdeck midi learn CONTROL`, once it is waiting for a message."""
    learn = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stemdeck",
            "midi",
            "learn",
            control,
            "--midi-in",
            CONTROLLER,
            "--midi-api",
            "jack",
            "--midi-map",
            str(mapping),
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = learn.stderr.readline()
    while "move a control" not in line and line:
        line = learn.stderr.readline()
    return learn


def test_cli_learn_saves_the_binding(fake, tmp_path):
    mapping = tmp_path / "midi.toml"
    learn = _armed_learn("gain:vocals", mapping)
    fake.send(0xB0, 33, 80)
    _, rest = learn.communicate(timeout=30)
    assert learn.returncode == 0, rest
    assert "learned: CC 33 on channel 1 drives gain vocals" in rest
    binding = load_mapping(mapping).find(parse([0xB0, 33, 0]))
    assert (binding.control, binding.stem) == ("gain", VOCALS)


def test_cli_learn_escape_cancels(fake, tmp_path):
    mapping = tmp_path / "midi.toml"
    learn = _armed_learn("mute:bass", mapping)
    _, rest = learn.communicate("\x1b", timeout=30)
    assert learn.returncode == 1
    assert "MIDI learn cancelled; nothing changed" in rest and "Traceback" not in rest
    assert not mapping.exists()


def test_cli_rejects_a_bad_mapping_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[binding]]\nmessage = "note"\nnumber = 36\ncontrol = "mute"\nstem = 9\n')
    result = _cli("midi", "import", str(bad), "--midi-map", str(tmp_path / "midi.toml"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"stemdeck: error: {bad} line 5: binding 1: unknown stem 9 (use 1-6 or drums, bass, other, vocals, "
        "guitar, piano)"
    ]
    assert not (tmp_path / "midi.toml").exists()


def test_cli_play_with_midi_reports_the_controller(fake, tmp_path):
    from conftest import write_tone

    song = tmp_path / "song.wav"
    write_tone(song, seconds=2.0)
    result = _cli(
        "play", str(song), "--model", "passthrough", "--duration", "1", "--midi-in", CONTROLLER, "--midi-api", "jack"
    )
    assert result.returncode == 0, result.stderr
    assert f"stemdeck: MIDI: {CONTROLLER}:pads out, LEDs on {CONTROLLER}-01:leds in" in result.stderr


# stemdeck's virtual MIDI ports on a JACK server that is stopped and started again, in its own
# process (a libjack client of a server that stops must not be this suite's): the ports are
# said closed, opened again once the server is back, and another app drives stemdeck through them.
SERVER_RESTART = """
import ctypes, os, signal, subprocess, sys, time
from stemdeck.engine.device import list_devices
from stemdeck.engine.midi import MidiConfig, MidiController, default_mapping
from stemdeck.engine.midi.cli import _NoEngine
from stemdeck.engine.midi.ports import open_client

def die_with_parent():
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no server left if this fails

def server():
    process = subprocess.Popen(["jackd", "-n", os.environ["JACK_DEFAULT_SERVER"], "-d", "dummy", "-r", "44100",
                                "-p", "256"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=die_with_parent)
    waited = subprocess.run(["jack_wait", "-w", "-t", "15"], capture_output=True)
    assert waited.returncode == 0, waited
    return process

def until(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)

jackd = server()
list_devices()  # PortAudio's own JACK client, as in the mixer: a client of the server that stops, too
controller = MidiController(_NoEngine(), default_mapping(4), MidiConfig(virtual=True, api="jack", hotplug_poll_s=0.05))
controller.start()
print("before", controller.input_names, flush=True)
jackd.terminate()
jackd.wait()
until(lambda: controller.input_names == [])
print("stopped", controller.input_names, flush=True)
jackd = server()
until(lambda: controller.input_names != [])
print("back", controller.input_names, flush=True)
app = open_client("out", "jack", "daw")
app.open_port(next(i for i, name in enumerate(app.get_ports()) if name.endswith(":control in")))
time.sleep(0.1)  # the connection lands on JACK's next cycle
app.send_message([0x90, 42, 100])
until(lambda: controller.received == 1)
print("received", controller.received, flush=True)
print("events", " | ".join(controller.events), flush=True)
app.close_port()
app.delete()
controller.close()
jackd.terminate()
jackd.wait()
"""


def test_virtual_ports_come_back_with_a_restarted_jack_server(tmp_path):
    """--midi-virtual ports died with the JACK server, and the status bar still named them: a
    DAW could not reach stemdeck again until it was restarted too."""
    import os

    from conftest import clear_stale_jack_state

    clear_stale_jack_state()
    name = f"stemdeck-restart-{os.getpid()}"
    env = {**os.environ, "JACK_DEFAULT_SERVER": name, "JACK_NO_START_SERVER": "1", "JACK_NO_AUDIO_RESERVATION": "1"}
    result = subprocess.run(
        [sys.executable, "-c", SERVER_RESTART], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["before"] == "['stemdeck-midi-in:control in']"
    assert lines["stopped"] == "[]"
    assert lines["back"] == "['stemdeck-midi-in:control in']"
    assert lines["received"] == "1"
    assert lines["events"].split(" | ")[:2] == [
        "the JACK server stopped: its MIDI ports are closed; stemdeck opens them again when it is back",
        "the JACK server is back: MIDI ports open again",
    ]
