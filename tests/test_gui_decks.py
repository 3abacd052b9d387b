"""The two-deck window (issue 15) under pytest-qt (offscreen) on real decks with the pass-through
model (stems: drums 0.1, bass 0.2, other 0.3, vocals 0.4 of the track): deck A plays a 220 Hz
tone, deck B 330 Hz, and the master is the decks' own callback driven block by block."""

import argparse
import os

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import soundfile
from PyQt6.QtCore import QSettings, Qt
from PyQt6.QtTest import QTest
from PyQt6.QtWidgets import QApplication, QMessageBox
from test_gui import IDLE_TIMEOUT_MS, SIX, loader
from test_gui_midi_jack import CONTROLLER, pads, send  # noqa: F401 - pads: the controller fixture
from test_gui_practice import cut_texts, themed  # noqa: F401 - themed: the app theme fixture

from stemdeck.gui.app import _start_decks_midi
from stemdeck.gui.decks_session import DecksSession
from stemdeck.gui.decks_window import DecksWindow
from stemdeck.gui.session import SessionConfig

SR = 44100
BLOCK = 256
TONE_A_HZ, TONE_B_HZ = 220.0, 330.0
AMPLITUDE = 0.3
VOCALS = 3


def tone(hz: float, seconds: float = 8.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    wave = (AMPLITUDE * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.stack([wave, wave])


def wait_idle(qtbot, session):
    qtbot.waitUntil(lambda: session.idle.is_set(), timeout=IDLE_TIMEOUT_MS)
    qtbot.wait(50)  # the signals queued to the GUI thread land


def shown_window(qtbot, tmp_path, **config) -> tuple[DecksWindow, DecksSession]:
    """A shown two-deck window on the pass-through model; ``config`` changes its session's
    (headless by default)."""
    settings = QSettings(str(tmp_path / "stemdeck.ini"), QSettings.Format.IniFormat)
    config = {"model": "passthrough", "headless": True, "worker": "thread", "calibrate": False, **config}
    session = DecksSession(SessionConfig(**config), model_loader=loader)
    window = DecksWindow(session, settings)
    qtbot.addWidget(window)
    window.show()
    return window, session


@pytest.fixture
def window(qtbot, tmp_path):
    window, session = shown_window(qtbot, tmp_path)
    session.start("passthrough")
    session.open_array(0, tone(TONE_A_HZ), SR, "deck-a tone")
    session.open_array(1, tone(TONE_B_HZ), SR, "deck-b tone")
    wait_idle(qtbot, session)
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
    for deck in session.decks.decks:
        assert deck.wait_separated(3 * SR, timeout_s=60)
    yield window
    window.close()
    session.close()


SHIFT = Qt.KeyboardModifier.ShiftModifier


def key(window, code):
    """A key press where the keyboard goes: the focused widget, else the active window."""
    QTest.keyClick(QApplication.focusWidget() or QApplication.activeWindow() or window, code)


def amplitudes(decks, blocks: int = 40) -> tuple[float, float]:
    """The master's amplitude at deck A's and deck B's tone, after the 10 ms ramps."""
    out = np.zeros((BLOCK, 4), np.float32)
    for _ in range(4):
        decks.process_block(out)
    left = np.zeros(blocks * BLOCK, np.float32)
    for k in range(blocks):
        decks.process_block(out)
        left[k * BLOCK : (k + 1) * BLOCK] = out[:, 0]
    t = np.arange(left.size) / SR

    def at(hz):
        return 2 * abs(np.dot(left, np.exp(-2j * np.pi * hz * t))) / left.size

    return at(TONE_A_HZ), at(TONE_B_HZ)


LAPTOP_WIDTH_PX = 1366  # the commonest laptop screen's width


def test_the_window_fits_a_laptop_screen_and_shows_every_figure_whole(qtbot, themed, window):  # noqa: F811
    """In the theme's font (11 pt) two decks and the mixer were 1638 px at the least (1680 on a
    96-dpi Xvfb desktop): deck B hung off a 1600-pixel screen. A long track name is elided."""
    window.panels[1].track_label.setText("a very long track name, " * 8 + ".flac")
    qtbot.wait(100)
    assert window.minimumSizeHint().width() <= LAPTOP_WIDTH_PX
    window.resize(window.minimumSizeHint())
    qtbot.wait(100)
    for panel in window.panels:
        assert cut_texts(panel.transport) == []


def test_window_shows_both_decks_tracks_and_stems(window):
    a, b = window.panels
    assert (a.track_label.text(), b.track_label.text()) == ("deck-a tone", "deck-b tone")
    assert [s.name for s in b.strips] == ["drums", "bass", "other", "vocals"]
    assert window.decks.deck("B").track_seconds == pytest.approx(8.0, abs=0.01)


def test_crossfader_widget_and_arrow_keys_move_the_decks_crossfader(qtbot, window):
    decks, slider = window.decks, window.crossfader
    assert decks.crossfader == 0.0
    qtbot.mouseClick(slider, Qt.MouseButton.LeftButton, pos=slider.rect().center())
    assert slider.value() > 0
    assert decks.crossfader == pytest.approx(slider.value() / 100)
    before = decks.crossfader
    key(window, Qt.Key.Key_Left)
    assert decks.crossfader == pytest.approx(before - 0.1)
    window.curve_box.setCurrentText("linear")
    window.curve_box.activated.emit(window.curve_box.currentIndex())
    assert decks.crossfader_curve == "linear"


def test_deck_b_mute_mutes_deck_b_only_in_the_mixer_and_the_master(qtbot, window):
    decks = window.decks
    decks.set_crossfader_curve("linear")
    window.crossfader.setValue(50)  # both decks half up on the master
    key(window, Qt.Key.Key_Space)
    key(window, Qt.Key.Key_Return)
    assert decks.playing("A") and decks.playing("B")
    a_before, b_before = amplitudes(decks)
    assert a_before == pytest.approx(0.5 * AMPLITUDE, rel=0.05)
    qtbot.mouseClick(window.panels[1].strips[VOCALS].mute, Qt.MouseButton.LeftButton)
    assert decks.deck("B").mixer().mute[VOCALS] and not decks.deck("A").mixer().mute[VOCALS]
    a_after, b_after = amplitudes(decks)
    assert b_after / b_before == pytest.approx(0.6, abs=0.02)  # B's vocals (0.4) gone
    assert a_after / a_before == pytest.approx(1.0, abs=0.02)
    key(window, Qt.Key.Key_Q)  # deck B's first stem (drums), by key
    assert decks.deck("B").mixer().mute[0] and not decks.deck("A").mixer().mute[0]
    key(window, Qt.Key.Key_1)  # deck A's
    assert decks.deck("A").mixer().mute[0]
    # with Shift, the solos (they did nothing): deck A's bass, then deck B's other
    QTest.keyClick(QApplication.focusWidget() or QApplication.activeWindow() or window, Qt.Key.Key_2, SHIFT)
    assert decks.deck("A").mixer().solo[1] and not decks.deck("B").mixer().solo[1]
    QTest.keyClick(QApplication.focusWidget() or QApplication.activeWindow() or window, Qt.Key.Key_E, SHIFT)
    assert decks.deck("B").mixer().solo[2] and not decks.deck("A").mixer().solo[2]
    assert window.panels[0].strips[1].solo.isChecked() and window.panels[1].strips[2].solo.isChecked()


def test_loading_into_the_playing_deck_asks_and_the_other_deck_plays_on(qtbot, window, tmp_path, monkeypatch):
    decks = window.decks
    path = tmp_path / "next.wav"
    soundfile.write(path, tone(TONE_B_HZ, 2.0).T, SR)
    key(window, Qt.Key.Key_Space)  # deck A plays
    asked = []

    def answer(parent, title, text, *args):
        asked.append(title)
        return QMessageBox.StandardButton.No

    monkeypatch.setattr(QMessageBox, "question", answer)
    assert window.load(0, path) is False
    assert asked == ["Deck A is playing"]
    assert decks.playing("A") and window.panels[0].track_label.text() == "deck-a tone"
    assert window.load(1, path) is True  # deck B is not playing: no question
    wait_idle(qtbot, window.session)
    assert asked == ["Deck A is playing"]
    assert window.panels[1].track_label.text() == "next.wav"
    assert decks.deck("B").track_seconds == pytest.approx(2.0, abs=0.01)
    assert decks.playing("A")
    assert amplitudes(decks)[0] == pytest.approx(AMPLITUDE, rel=0.05)  # A on the master, untouched


def test_a_deck_at_its_end_stops_and_space_plays_it_again(qtbot, window):
    decks, panel = window.decks, window.panels[0]
    deck_a = decks.deck("A")
    deck_a.seek(7.9)
    key(window, Qt.Key.Key_Space)
    out = np.zeros((BLOCK, 4), np.float32)
    for _ in range(40):  # 0.23 s: past the end
        decks.process_block(out)
    window.refresh()
    assert not decks.playing("A") and panel.play_button.text() == "▶ Play"
    key(window, Qt.Key.Key_Space)
    assert decks.playing("A") and deck_a.status().position_s < 0.1


def test_play_pause_and_the_end_of_a_track_move_no_button_or_clock(qtbot, themed, window):  # noqa: F811
    """A playing deck's "❚❚ Pause" is wider than "▶ Play": Cue, Sync and Phones moved 25 px when a deck played, and
    at the end the remaining time lost its minus sign and the elapsed time moved 10 px."""
    decks, panel = window.decks, window.panels[0]
    qtbot.wait(3 * 33)

    def places() -> tuple[int, ...]:
        QApplication.processEvents()
        widgets = (panel.cue_button, panel.sync_button, panel.headphone_button, panel.elapsed_label)
        return tuple(widget.mapTo(window, widget.rect().topLeft()).x() for widget in widgets)

    paused = places()
    key(window, Qt.Key.Key_Space)
    qtbot.waitUntil(lambda: panel.play_button.text() == "❚❚ Pause", timeout=2000)
    assert places() == paused
    decks.deck("A").seek(7.95)
    out = np.zeros((BLOCK, 4), np.float32)
    for _ in range(40):  # past the end
        decks.process_block(out)
    qtbot.waitUntil(lambda: panel.play_button.text() == "▶ Play", timeout=2000)
    assert panel.remaining_label.text() == " 0:00.0"
    assert places() == paused


def test_midi_cc8_moves_the_crossfader_and_channel_2_mutes_deck_b(qtbot, pads, window, tmp_path):  # noqa: F811
    """As `stemdeck gui A B --midi-in fakectl` wires it, through a real JACK MIDI port."""
    args = argparse.Namespace(
        midi_in=CONTROLLER, midi_out=None, midi_virtual=False, midi_api="jack", midi_map=tmp_path / "midi.toml"
    )
    midi = _start_decks_midi(window, window.session, args)
    assert midi is not None and not window.errors, window.errors
    try:
        decks = window.decks
        send(qtbot, pads, window, (0xB0, 8, 127), until=lambda: decks.crossfader == 1.0, midi=midi)
        assert window.crossfader.value() == 100
        send(
            qtbot, pads, window, (0x91, 36 + VOCALS, 127), until=lambda: decks.deck("B").mixer().mute[VOCALS], midi=midi
        )
        assert window.panels[1].strips[VOCALS].mute.isChecked()
        assert not decks.deck("A").mixer().mute[VOCALS] and not window.panels[0].strips[VOCALS].mute.isChecked()
    finally:
        midi.close()


def test_the_two_deck_window_opens_no_wider_than_the_screen(qtbot, tmp_path):
    """It opened 1900 x 900 on a 1600 x 1000 screen: deck B's vocals, fader and clock off it.
    (Headless, rendering to a file, it keeps 1900 x 900.)"""
    settings = QSettings(str(tmp_path / "stemdeck.ini"), QSettings.Format.IniFormat)
    for headless in (False, True):
        config = SessionConfig(model="passthrough", headless=headless, worker="thread", calibrate=False)
        window = DecksWindow(DecksSession(config, model_loader=loader), settings)
        qtbot.addWidget(window)
        free = window.screen().availableGeometry()
        if headless:
            assert (window.width(), window.height()) == (1900, 900)
        else:
            assert window.width() <= max(free.width(), window.minimumSizeHint().width()) < 1900
        window.close()
        window.session.close()


def test_with_no_sound_device_the_decks_still_show_their_strips_and_say_why(qtbot, tmp_path):
    """With no sound server nor card, the two-deck window showed no stem strips and no message."""
    window, session = shown_window(qtbot, tmp_path, headless=False, output_device="no-such-device-xyz")
    try:
        session.start("passthrough")
        qtbot.waitUntil(lambda: bool(window.errors), timeout=30000)
        assert "no-such-device-xyz" in window.errors[-1]
        assert all(len(panel.strips) == 4 for panel in window.panels)
    finally:
        window.close()
        session.close()


def test_the_status_bar_shows_the_latency_xruns_and_each_decks_separation(qtbot, tmp_path, jack_server):
    """The two-deck window's status bar had messages only: no latency, no xruns, no figure of
    how each deck's separation keeps up, which the one-deck window shows."""
    import re

    window, session = shown_window(qtbot, tmp_path, headless=False)
    try:
        session.start("passthrough")
        session.open_array(0, tone(TONE_A_HZ), SR, "deck-a tone")
        wait_idle(qtbot, session)
        qtbot.waitUntil(lambda: window.latency_status.text().startswith("latency"), timeout=10000)
        decks = session.decks
        assert (
            window.latency_status.text() == f"latency {1000 * decks.status().latency_frames / decks.samplerate:.0f} ms"
        )
        qtbot.waitUntil(lambda: window.deck_status[0].text().startswith("A: RTF "), timeout=10000)
        assert re.fullmatch(r"A: RTF (\d+\.\d\d|—) · (ahead|behind) \d+\.\d s", window.deck_status[0].text())
        assert window.deck_status[1].text() == ""  # deck B holds no track
        assert re.fullmatch(r"xruns \d+ · late \d+ / \d+", window.xrun_status.text())
    finally:
        window.close()
        session.close()


def test_the_master_is_recorded_from_the_two_deck_window(qtbot, window, tmp_path, monkeypatch):
    """The two-deck window had no Rec: a DJ's set could be recorded only with `play A B --record`."""
    monkeypatch.setenv("STEMDECK_RECORDINGS_DIR", str(tmp_path / "takes"))
    decks = window.decks
    decks.deck("A").play()
    QTest.mouseClick(window.record_button, Qt.MouseButton.LeftButton)
    assert decks.recorder.recording and window.record_button.isChecked()
    out = np.zeros((BLOCK, 4), np.float32)
    played = []
    for _ in range(40):
        decks.process_block(out)
        played.append(out[:, :2].copy())
    QTest.mouseClick(window.record_button, Qt.MouseButton.LeftButton)
    assert not decks.recorder.recording
    qtbot.waitUntil(lambda: not window.record_button.isChecked(), timeout=2000)
    [take] = list((tmp_path / "takes").iterdir())
    recorded, rate = soundfile.read(str(take), dtype="float32", always_2d=True)
    assert rate == SR and np.array_equal(recorded, np.concatenate(played))  # the master, block for block
    assert np.abs(recorded).max() > 0.1  # deck A's tone
    assert window.statusBar().currentMessage() == f"recorded {40 * BLOCK / SR:.1f} s to {take}"


def _level_at(signal: np.ndarray, hz: float) -> float:
    """The amplitude of the ``hz`` sine in ``signal`` (a whole number of its cycles or close)."""
    t = np.arange(signal.size) / SR
    return 2 * abs(np.mean(signal * np.exp(-2j * np.pi * hz * t)))


def test_the_output_picker_reopens_both_decks_output_and_deck_a_plays_on(qtbot, tmp_path, jack_server):
    """The two-deck window had no output picker: the decks played where `--output` or the default
    put them, and a device started after the window could not be chosen."""
    from conftest import JackRecorder

    window, session = shown_window(qtbot, tmp_path, headless=False)
    recorder = None
    try:
        session.start("passthrough")
        session.open_array(0, tone(TONE_A_HZ, seconds=30.0), SR, "deck-a tone")
        wait_idle(qtbot, session)
        box = window.output_box
        box.showPopup()  # lists the devices again, as a click on it does
        box.hidePopup()
        labels = [box.itemText(index) for index in range(box.count())]
        jack_label = next(label for label in labels if label.endswith("[JACK Audio Connection Kit]"))
        assert labels[0] == "default" and box.currentText() == "default"
        decks = session.decks
        decks.deck("A").play()
        before = decks._stream
        box.setCurrentIndex(labels.index(jack_label))
        box.activated.emit(labels.index(jack_label))  # what choosing it in the open list emits
        wait_idle(qtbot, session)
        assert session.config.output_device == jack_label.rsplit(" [", 1)[0]
        assert box.toolTip().endswith(f"\nNow: {jack_label}")  # whole, where the box cuts it
        assert decks._stream is not before and decks.output_open
        assert window.errors == [] and window.cue_output_label.text() == ""
        recorder = JackRecorder(jack_server, 2)
        recorder.connect("stemdeck:master_L", "stemdeck:master_R")
        left = recorder.record(1.0)[0]
        assert _level_at(left, TONE_A_HZ) > 0.5 * AMPLITUDE  # deck A, heard through the reopened output
    finally:
        if recorder is not None:
            recorder.close()
        window.close()
        session.close()


def test_the_output_picker_shows_the_device_given_on_the_command_line(qtbot, tmp_path, jack_server):
    window, session = shown_window(qtbot, tmp_path, headless=False, output_device="syst")
    try:
        assert window.output_box.currentText() == "system [JACK Audio Connection Kit]"
    finally:
        window.close()
        session.close()


def _choose_model(window, name: str) -> None:
    """As choosing ``name`` in the open list does (a test's stand-in name added first)."""
    box = window.model_box
    if box.findText(name) < 0:
        box.addItem(name)
    box.setCurrentText(name)
    box.activated.emit(box.currentIndex())


def test_the_model_picker_switches_both_decks_keeping_tracks_positions_and_mixer(qtbot, window):
    """The two-deck window had no model picker: the model was the command line's for the session."""
    session, old = window.session, window.decks
    old.deck("A").seek(2.0)
    old.deck("B").set_mute("vocals", True)
    old.set_crossfader(0.8)
    old.set_volume_db("A", -6.0)
    _choose_model(window, "six")
    wait_idle(qtbot, session)
    decks = session.decks
    assert decks is not old and session.model_name == "six" and window.model_box.currentText() == "six"
    assert decks.sources == SIX and [len(panel.strips) for panel in window.panels] == [6, 6]
    assert decks.deck("A").status().position_s == pytest.approx(2.0, abs=0.01)
    assert decks.deck("B").mixer().mute == tuple(name == "vocals" for name in SIX)
    qtbot.wait(3 * 33)  # the window's refresh shows what the decks hold
    assert [strip.mute.isChecked() for strip in window.panels[1].strips] == [name == "vocals" for name in SIX]
    assert decks.crossfader == pytest.approx(0.8) and decks.volume_db("A") == pytest.approx(-6.0, abs=0.01)
    assert [panel.track_label.text() for panel in window.panels] == ["deck-a tone", "deck-b tone"]
    fractions = np.array([0.1, 0.1, 0.2, 0.3, 0.2, 0.1])  # the six-stem stand-in's
    for index, hz in enumerate((TONE_A_HZ, TONE_B_HZ)):
        engine = decks.deck(index)
        assert engine.wait_separated(4 * SR, timeout_s=60)
        stems, track = engine._deck_buffers.stems[..., 2 * SR : 4 * SR], tone(hz)[:, 2 * SR : 4 * SR]
        assert np.abs(stems - fractions[:, None, None] * track).max() < 1e-4  # the new model's stems


def test_the_model_is_not_switched_under_a_playing_deck(qtbot, window):
    session, decks = window.session, window.decks
    decks.deck("B").play()
    _choose_model(window, "six")
    wait_idle(qtbot, session)
    assert session.decks is decks and decks.sources != SIX
    assert window.errors[-1] == "deck B is playing; pause it to switch the model (both decks separate again)"
    assert decks.playing("B")
    assert window.model_box.currentText() == "passthrough"  # the picker shows the model that plays
