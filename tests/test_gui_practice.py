"""The practice row in the shown window, used as a person does: keys go to whatever widget has
the focus (window-wide shortcuts), pads and buttons are clicked, MIDI arrives through a real JACK
MIDI port; every action is checked on the engine's output audio (pass-through model, headless
deck pulled here) and on what the window shows (pads lit, loop and cues on the waveform)."""

import numpy as np
import pytest
import soundfile as sf
from PyQt6.QtCore import Qt
from PyQt6.QtGui import QFont, QFontMetrics
from PyQt6.QtWidgets import QApplication, QLabel, QPushButton
from test_gui import SR, output_ratio
from test_gui_keys import key, settings, window  # noqa: F401 - fixtures
from test_gui_midi_jack import deck, pads, press  # noqa: F401 - fixtures

SHIFT = Qt.KeyboardModifier.ShiftModifier
REFRESH_MS = 120  # a few of the window's 33 ms refreshes


@pytest.fixture
def themed(qapp):
    """The app's theme, as `stemdeck gui` sets it before any window: its stylesheet sets the font
    (11 pt) after the widgets are made. Request it before the window fixture."""
    from stemdeck.gui.theme import apply_theme

    style, sheet, palette = qapp.style().name(), qapp.styleSheet(), qapp.palette()
    apply_theme(qapp)
    yield qapp
    qapp.setStyleSheet(sheet)
    qapp.setStyle(style)
    qapp.setPalette(palette)


def cut_texts(row, widest=(("tempo_label", "150 %"), ("key_label", "key -12"))) -> list[str]:
    """The practice row's labels and buttons narrower than their text needs, widest figures shown
    and every toggle on: the theme sets a checked button's text in bold, which a size hint made
    in the regular font does not see, so a toggle must fit its bold text plus the padding."""
    for name, text in widest:
        getattr(row, name).setText(text)
    QApplication.processEvents()
    narrow = [w for w in row.findChildren((QLabel, QPushButton)) if w.width() < w.sizeHint().width()]
    cut = [f"{w.text()!r} {w.width()} < {w.sizeHint().width()} px" for w in narrow]
    for button in row.findChildren(QPushButton):
        if button.isCheckable() and button.width() < bold_width_px(button):
            cut.append(f"{button.text()!r} checked {button.width()} < {bold_width_px(button)} px")
    return cut


def bold_width_px(button) -> int:
    """The width a button's text in bold needs: its bold advance and the theme's padding and border
    (a plain button of the same text and name in the regular font, less that text's advance)."""
    plain = QPushButton(button.text(), button.parentWidget())
    plain.setObjectName(button.objectName())
    plain.ensurePolished()
    bold = QFont(plain.font())
    bold.setBold(True)
    regular_px = plain.fontMetrics().horizontalAdvance(button.text())
    width = plain.sizeHint().width() - regular_px + QFontMetrics(bold).horizontalAdvance(button.text())
    plain.deleteLater()
    return width


def test_practice_row_shows_every_figure_whole_in_the_themes_font_at_minimum_size(qtbot, themed, window):
    """Widths fixed in the font a label had when made cut "100 %" to "00 %" and "×2" to a sliver
    in the real window (Xvfb, 96 dpi)."""
    window.resize(window.minimumSizeHint())
    qtbot.wait(REFRESH_MS)
    assert window.transport.tempo_label.font().pointSizeF() == 11  # the theme applies
    assert cut_texts(window.transport) == []


def test_the_key_label_keeps_its_width_from_minus_to_plus_12(qtbot, themed, window):
    """The label was as wide as "key -12", and "key +12" is wider in the theme's font: the buttons
    beside it moved at +12. Its width is now the same at every key."""
    label = window.transport.key_label
    widths = set()
    for semitones in (-12, -1, 0, 5, 12):
        label.setText(f"key {semitones:+d}" if semitones else "key ±0")
        QApplication.processEvents()
        widths.add(label.sizeHint().width())
    assert len(widths) == 1, widths


def test_the_beats_list_looks_disabled_until_the_tempo_is_known(qtbot, themed, window):
    """Disabled, it was drawn as when enabled: the theme styled combo boxes, not their disabled
    state."""
    box = window.transport.beats_box
    box.setEnabled(True)
    enabled = box.grab().toImage()
    box.setEnabled(False)
    disabled = box.grab().toImage()
    assert enabled != disabled


def pull(window, frames: int) -> np.ndarray:
    """The engine's next ``frames`` of output, as the audio callback would play them."""
    engine = window.session.engine
    out = np.zeros((frames, 2), np.float32)
    engine.process_deck_block(out)
    return out


def track(window) -> np.ndarray:
    return window.session._track_audio


def test_loop_keys_set_play_halve_double_and_leave_the_loop(qtbot, window):
    engine = window.session.engine
    pull(window, 11025)
    key(window, Qt.Key.Key_I)
    pull(window, 22050)
    key(window, Qt.Key.Key_O)
    assert (engine.loop.in_frames, engine.loop.out_frames, engine.loop.active) == (11025, 33075, True)
    out = pull(window, 22050 + 4096)  # the whole loop, then its start again
    np.testing.assert_allclose(out[22050:], track(window)[:, 11025 : 11025 + 4096].T, atol=1e-6)
    key(window, Qt.Key.Key_BracketLeft)
    assert engine.loop.length_frames == 11025
    key(window, Qt.Key.Key_BracketRight)
    key(window, Qt.Key.Key_BracketRight)
    assert engine.loop.length_frames == 44100
    qtbot.wait(REFRESH_MS)
    assert window.transport.loop_button.isChecked()
    assert window.overview.loop == pytest.approx((0.25, 1.25, True))
    key(window, Qt.Key.Key_L)
    qtbot.wait(REFRESH_MS)
    assert not engine.status().looping and not window.transport.loop_button.isChecked()
    assert window.overview.loop[2] is False


def test_hot_cue_keys_set_jump_and_clear_and_show_on_the_waveform(qtbot, window):
    engine = window.session.engine
    pull(window, 22050)
    key(window, Qt.Key.Key_F2)  # empty: set at 0.5 s
    pull(window, 44100)
    key(window, Qt.Key.Key_F2)  # set: jump back
    out = pull(window, 512)
    np.testing.assert_allclose(out, track(window)[:, 22050 : 22050 + 512].T, atol=1e-6)
    qtbot.wait(REFRESH_MS)
    assert window.transport.pads[1].isChecked() and not window.transport.pads[0].isChecked()
    assert window.overview.cues[:2] == (None, 0.5)
    key(window, Qt.Key.Key_F2, SHIFT)
    qtbot.wait(REFRESH_MS)
    assert engine.hot_cues[1] is None and not window.transport.pads[1].isChecked()
    assert window.overview.cues[1] is None


def test_pads_and_loop_buttons_by_mouse(qtbot, window):
    engine = window.session.engine
    row = window.transport
    pull(window, 4410)
    qtbot.mouseClick(row.pads[4], Qt.MouseButton.LeftButton)
    assert engine.hot_cues[4] == pytest.approx(0.1)
    qtbot.mouseClick(row.loop_in_button, Qt.MouseButton.LeftButton)
    pull(window, 8820)
    qtbot.mouseClick(row.loop_out_button, Qt.MouseButton.LeftButton)
    assert engine.status().loop_in_s == pytest.approx(0.1) and engine.status().loop_out_s == pytest.approx(0.3)
    qtbot.mouseClick(row.pads[4], Qt.MouseButton.LeftButton, SHIFT)
    assert engine.hot_cues[4] is None
    assert not row.beats_box.isEnabled()  # no tempo yet: no loops by beats
    engine.set_beat_grid(120.0)
    qtbot.wait(REFRESH_MS)
    assert row.beats_box.isEnabled() and row.bpm_label.text() == "120.0 BPM"
    under_the_mouse = [(button.x(), button.y()) for button in (row.tempo_reset, row.key_down, row.key_up)]
    row.tempo_slider.setValue(53)  # the tempo heard is what a DJ matches: 0.53 x 120
    window.practice("set_key", -12)
    qtbot.wait(REFRESH_MS)
    assert engine.tempo == pytest.approx(0.53) and row.bpm_label.text() == "63.6 BPM"
    assert "recorded at 120.0 BPM" in row.bpm_label.toolTip()
    assert (row.tempo_label.text(), row.key_label.text()) == ("53 %", "key -12")
    assert [(button.x(), button.y()) for button in (row.tempo_reset, row.key_down, row.key_up)] == under_the_mouse
    row.tempo_slider.setValue(100)
    window.practice("set_key", 0)
    window.transport.loop_beats.emit(2)  # what choosing "2" in the list sends
    assert engine.loop.length_frames == SR
    engine.seek(0.05)  # before the in point: an out point here is refused, in the status bar
    qtbot.mouseClick(row.loop_out_button, Qt.MouseButton.LeftButton)
    assert window.status_message() == "the loop's out point must come after its in point"
    assert engine.loop.length_frames == SR


def test_a_beats_list_choice_acts_each_time_and_the_list_says_beats_again(qtbot, window):
    """The list kept showing "4" after its loop was refused or left, and "4" chosen again looked
    like nothing."""
    engine, box = window.session.engine, window.transport.beats_box
    engine.set_beat_grid(120.0, first_beat_s=0.0)
    qtbot.waitUntil(box.isEnabled, timeout=2000)
    four = box.findText("4")
    for start_s in (1.0, 3.0):
        engine.clear_loop()
        engine.seek(start_s)
        box.setCurrentIndex(four)
        box.activated.emit(four)  # what choosing "4" in the open list emits
        assert engine.loop.in_frames == round(start_s * SR) and engine.loop.length_frames == 2 * SR
        assert box.currentText() == "beats"


def test_the_record_key_and_button_write_what_plays(qtbot, window, tmp_path, monkeypatch):
    monkeypatch.setenv("STEMDECK_RECORDINGS_DIR", str(tmp_path / "takes"))
    window.session.engine.set_mute("vocals")
    key(window, Qt.Key.Key_R)
    qtbot.wait(REFRESH_MS)
    assert window.transport.record_button.isChecked() and "recording to" in window.status_message()
    heard = np.concatenate([pull(window, 4096) for _ in range(4)])
    qtbot.mouseClick(window.transport.record_button, Qt.MouseButton.LeftButton)
    assert "recorded 0.4 s to" in window.status_message()
    (take,) = (tmp_path / "takes").glob("*.wav")
    recorded = sf.read(str(take), dtype="float32")[0]
    np.testing.assert_array_equal(recorded, heard)
    assert output_ratio(window) == pytest.approx(0.6, abs=1e-5)


def test_practice_pads_through_a_real_jack_midi_port(qtbot, pads, deck):  # noqa: F811 - fixtures
    engine = deck.session.engine
    output_ratio(deck, blocks=40)
    at = engine.status().position_s
    press(qtbot, pads, deck, 52, lambda: engine.hot_cues[2] is not None)  # pad 3: set
    assert engine.hot_cues[2] == pytest.approx(at, abs=1e-6)
    assert deck.transport.pads[2].isChecked()
    press(qtbot, pads, deck, 66, lambda: engine.loop.in_frames is not None)  # loop in
    output_ratio(deck, blocks=40)
    press(qtbot, pads, deck, 67, lambda: engine.status().looping)  # loop out: looping
    assert deck.transport.loop_button.isChecked()
    press(qtbot, pads, deck, 69, lambda: engine.loop.length_frames == 20 * 256)  # halve
    press(qtbot, pads, deck, 68, lambda: not engine.status().looping)  # loop off
    press(qtbot, pads, deck, 60, lambda: engine.hot_cues[2] is None)  # shift layer: clear pad 3
    assert not deck.transport.pads[2].isChecked()


def test_a_reopened_file_brings_back_its_cues_loop_and_position(qtbot, window, tmp_path):
    from conftest import write_tone
    from test_gui import wait_idle

    path = tmp_path / "song.flac"
    write_tone(path, seconds=3.0, samplerate=48000)  # the engine runs at 44.1 kHz: the key is the file's
    window.open_path(path)
    wait_idle(qtbot, window.session)
    engine = window.session.engine
    engine.seek(1.5)
    key(window, Qt.Key.Key_F4)
    engine.set_loop(0.5, 1.0, active=False)
    engine.seek(2.25)
    window.session.open_array(np.zeros((2, SR), np.float32), SR, "silence")  # another track: 2.25 s is kept
    wait_idle(qtbot, window.session)
    assert engine.hot_cues[3] is None
    window.open_path(path)
    wait_idle(qtbot, window.session)
    qtbot.wait(REFRESH_MS)
    assert engine.hot_cues[3] == pytest.approx(1.5, abs=1 / SR)
    assert engine.status().position_s == pytest.approx(2.25, abs=1 / SR)
    assert window.transport.pads[3].isChecked()
    assert window.overview.loop == pytest.approx((0.5, 1.0, False), abs=1 / SR)
