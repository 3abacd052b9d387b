"""The running mixer window driven by a MIDI controller through a real JACK MIDI port, every
default binding and the scenes, the way `stemdeck gui --midi-in fakectl` wires it (gui/app.py).

The controller is a second JACK client with an output port; the window's engine is headless,
its blocks pulled here, on a six-stem pass-through model whose stems are known fractions of the
track. Each message must reach the engine (the output audio says so), show in the window, and
leave the window alive: the window's 30 fps refresh runs in the Qt event loop between messages
and any exception there fails the test (it aborted the real app).
"""

import argparse

import numpy as np
import pytest
from test_gui import SIX, SR, loader, output_ratio, tone, wait_idle

from stemdeck.engine.midi.bindings import cc_to_db
from stemdeck.engine.midi.ports import open_client
from stemdeck.gui.app import _start_midi
from stemdeck.gui.main_window import MainWindow, _clock
from stemdeck.gui.session import Session, SessionConfig

FRACTIONS = (0.1, 0.1, 0.2, 0.3, 0.2, 0.1)  # the "six" pass-through model's stems
VOCALS, BASS = SIX.index("vocals"), SIX.index("bass")
CONTROLLER = "fakectl"
REFRESH_TICKS_MS = 150  # several 33 ms refreshes of the window
JACK_CYCLES_MS = 25  # a few 5.8 ms JACK periods
RESEND_AFTER_MS = 2000


@pytest.fixture
def pads(jack_server):
    """The controller's output port, as JACK shows a plugged-in hardware controller.

    No JACK audio client of this process may run meanwhile (an earlier test's stays open for the
    process): with it running, closing an rtmidi JACK port connected to this one hung (rtmidi holds
    the GIL through the call; that client's Python callback needs it every cycle).
    """
    from stemdeck.engine.audio.jack_output import close_session_output

    close_session_output()
    client = open_client("out", "jack", CONTROLLER)
    client.open_virtual_port("pads out")
    yield client
    client.close_port()
    client.delete()


@pytest.fixture
def deck(qtbot, pads, settings, tmp_path):
    """A shown window playing a tone, with MIDI started as `stemdeck gui --midi-in fakectl` does:
    before any model has loaded (gui/app.py starts it first; that once failed every launch)."""
    session = Session(SessionConfig(model="six", headless=True, worker="thread", calibrate=False), model_loader=loader)
    window = MainWindow(session, settings)
    qtbot.addWidget(window)
    args = argparse.Namespace(
        midi_in=CONTROLLER, midi_out=None, midi_virtual=False, midi_api="jack", midi_map=tmp_path / "midi.toml"
    )
    midi = _start_midi(window, session, args)
    assert midi is not None and not window.errors, window.errors
    window.show()
    session.choose_model("six")
    session.open_array(tone(), SR, "tone")
    wait_idle(qtbot, session)
    assert session.engine.wait_separated(6 * SR, timeout_s=60)
    session.engine.play()
    yield window
    midi.close()
    window.close()
    session.close()


@pytest.fixture
def settings(tmp_path):
    from PyQt6.QtCore import QSettings

    return QSettings(str(tmp_path / "stemdeck.ini"), QSettings.Format.IniFormat)


def message_fits(window) -> bool:
    """The status bar's message is there in full, not cut at the window's edge."""
    bar = window.statusBar()
    return bar.fontMetrics().horizontalAdvance(bar.currentMessage()) + 16 <= bar.width()


def deliver(qtbot, pads, midi, message) -> None:
    """Send ``message`` and wait until the controller's dispatcher has it.

    Once in about fifteen whole-suite runs on a loaded 2-core machine, a CC never reached the
    dispatcher (no port was reported lost; the cause was not found, and 36 loaded repeats did
    not show it again). A CC or program change sets an absolute state, so one that did not
    arrive within RESEND_AFTER_MS is sent once more, and said so; a note toggles, so it is not.
    """
    received = midi.received
    pads.send_message(list(message))
    try:
        qtbot.waitUntil(lambda: midi.received > received, timeout=RESEND_AFTER_MS)
    except qtbot.TimeoutError:
        if message[0] & 0xF0 not in (0xB0, 0xC0):
            raise AssertionError(f"{message} did not reach the controller within {RESEND_AFTER_MS} ms") from None
        print(f"{message} did not reach the controller within {RESEND_AFTER_MS} ms; sent again")
        pads.send_message(list(message))
        qtbot.waitUntil(lambda: midi.received > received, timeout=RESEND_AFTER_MS)


def send(qtbot, pads, window, message, until, midi=None):
    """Send ``message`` from the controller; wait for the engine to show it, then for the window
    (``midi``: the window's controller, where the window does not hold it as ``window.midi``)."""
    with qtbot.captureExceptions() as exceptions:
        deliver(qtbot, pads, midi or window.midi, message)
        qtbot.waitUntil(until, timeout=5000)
        qtbot.wait(REFRESH_TICKS_MS)
    assert not exceptions, f"the window raised on {message}: {exceptions[0][1]!r}"
    assert window.isVisible()


def press(qtbot, pads, window, note, until):
    send(qtbot, pads, window, [0x90, note, 100], until)
    pads.send_message([0x80, note, 0])  # the pad's release: a toggle ignores it
    # A finger's release and next press are cycles apart; rtmidi's JACK output can lose a message
    # written in the same cycle as the one before it, which no hardware controller does.
    qtbot.wait(JACK_CYCLES_MS)


def test_every_mute_and_solo_pad(qtbot, pads, deck):
    engine = deck.session.engine
    for stem, fraction in enumerate(FRACTIONS):
        press(qtbot, pads, deck, 36 + stem, lambda stem=stem: engine.mixer().mute[stem])
        assert deck.strips[stem].mute.isChecked()
        assert output_ratio(deck) == pytest.approx(1.0 - fraction, abs=1e-5), SIX[stem]
        press(qtbot, pads, deck, 36 + stem, lambda stem=stem: not engine.mixer().mute[stem])
        assert output_ratio(deck) == pytest.approx(1.0, abs=1e-5)
    for stem, fraction in enumerate(FRACTIONS):
        press(qtbot, pads, deck, 42 + stem, lambda stem=stem: engine.mixer().solo[stem])
        assert deck.strips[stem].solo.isChecked()
        assert output_ratio(deck) == pytest.approx(fraction, abs=1e-5), SIX[stem]
        press(qtbot, pads, deck, 42 + stem, lambda stem=stem: not engine.mixer().solo[stem])
        assert not deck.strips[stem].solo.isChecked()
    assert output_ratio(deck) == pytest.approx(1.0, abs=1e-5)


def test_every_fader_cc_moves_the_stem_and_its_fader(qtbot, pads, deck):
    engine = deck.session.engine
    db = cc_to_db(80)  # ≈ −4.9 dB
    for stem, fraction in enumerate(FRACTIONS):
        send(qtbot, pads, deck, [0xB0, 1 + stem, 80], lambda stem=stem: engine.mixer().gain_db[stem] < -1)
        assert engine.mixer().gain_db[stem] == pytest.approx(db, abs=1e-3)
        assert deck.strips[stem].fader.db == pytest.approx(db, abs=0.05)
        assert deck.strips[stem].db_label.text() == f"−{-db:.1f} dB"
        assert output_ratio(deck) == pytest.approx(1 - fraction + fraction * 10 ** (db / 20), abs=1e-5)
        send(qtbot, pads, deck, [0xB0, 1 + stem, 0], lambda stem=stem: engine.mixer().gain_db[stem] <= -60)
        assert deck.strips[stem].db_label.text() == "−∞ dB"
        assert output_ratio(deck) == pytest.approx(1 - fraction, abs=1e-5)
        send(qtbot, pads, deck, [0xB0, 1 + stem, 100], lambda stem=stem: engine.mixer().gain_db[stem] == 0.0)
        assert deck.strips[stem].db_label.text() == "0.0 dB"


def test_crossfader_cc_fades_to_the_dry_track(qtbot, pads, deck):
    engine = deck.session.engine
    press(qtbot, pads, deck, 36 + VOCALS, lambda: engine.mixer().mute[VOCALS])
    send(qtbot, pads, deck, [0xB0, 7, 127], lambda: engine.mixer().dry_mix == 1.0)
    assert deck.crossfader.value() == 100
    assert output_ratio(deck) == pytest.approx(1.0, abs=1e-5)  # all dry: the muted vocals are back
    send(qtbot, pads, deck, [0xB0, 7, 64], lambda: engine.mixer().dry_mix < 1.0)
    dry = 64 / 127
    assert deck.crossfader.value() == round(100 * dry)
    assert output_ratio(deck) == pytest.approx((1 - dry) * 0.7 + dry, abs=1e-5)


def test_play_and_cue_pads(qtbot, pads, deck):
    engine = deck.session.engine
    output_ratio(deck, blocks=40)  # play on to ≈ 0.23 s
    press(qtbot, pads, deck, 48, lambda: not engine.mixer().playing)
    assert deck.play_button.text() == "▶ Play"
    out = np.ones((256, 2), np.float32)
    engine.process_deck_block(out)
    assert not out.any()  # paused: silence
    paused_at = engine.status().position_s
    press(qtbot, pads, deck, 49, lambda: engine.cue_s == pytest.approx(paused_at))  # paused: set the cue here
    press(qtbot, pads, deck, 48, lambda: engine.mixer().playing)
    assert deck.play_button.text() == "❚❚ Pause"
    output_ratio(deck, blocks=40)
    assert engine.status().position_s > paused_at + 0.2
    press(qtbot, pads, deck, 49, lambda: not engine.mixer().playing)  # playing: back to the cue, paused
    engine.process_deck_block(out)
    assert engine.status().position_s == pytest.approx(paused_at, abs=1 / SR)
    qtbot.wait(REFRESH_TICKS_MS)
    assert deck.elapsed_label.text() == _clock(paused_at) and deck.play_button.text() == "▶ Play"


@pytest.mark.parametrize(
    "program, muted, soloed, ratio",
    [(1, {VOCALS}, set(), 0.7), (2, set(), {VOCALS}, 0.3), (3, {SIX.index("drums")}, set(), 0.9)],
)
def test_a_program_change_recalls_its_scene(qtbot, pads, deck, program, muted, soloed, ratio):
    engine = deck.session.engine
    send(qtbot, pads, deck, [0xB0, 1 + BASS, 0], lambda: engine.mixer().gain_db[BASS] <= -60)
    send(
        qtbot,
        pads,
        deck,
        [0xC0, program],
        lambda: (
            {s for s, m in enumerate(engine.mixer().mute) if m} == muted
            and {s for s, v in enumerate(engine.mixer().solo) if v} == soloed
        ),
    )
    assert [s.mute.isChecked() for s in deck.strips] == [s in muted for s in range(6)]
    assert [s.solo.isChecked() for s in deck.strips] == [s in soloed for s in range(6)]
    assert deck.strips[BASS].db_label.text() == "0.0 dB"  # a scene sets every fader
    assert output_ratio(deck) == pytest.approx(ratio, abs=1e-5)
    assert "recalled" in deck.status_message()
    send(qtbot, pads, deck, [0xC0, 0], lambda: not any(engine.mixer().mute + engine.mixer().solo))
    assert output_ratio(deck) == pytest.approx(1.0, abs=1e-5)  # program 0: the full mix


def test_a_learned_cc_drives_the_fader_and_the_window_says_so(qtbot, pads, deck):
    engine = deck.session.engine
    deck.midi_learn("gain", VOCALS)
    assert deck.status_message() == "MIDI learn: move a control or press a pad for gain vocals (Esc cancels)"
    assert message_fits(deck)
    send(qtbot, pads, deck, [0xB2, 74, 64], lambda: not deck.midi.learning)
    assert deck.status_message() == "MIDI learned: CC 74 on channel 3 drives gain vocals"
    assert message_fits(deck)
    send(qtbot, pads, deck, [0xB2, 74, 0], lambda: engine.mixer().gain_db[VOCALS] <= -60)
    assert deck.strips[VOCALS].db_label.text() == "−∞ dB"
    assert output_ratio(deck) == pytest.approx(0.7, abs=1e-5)
