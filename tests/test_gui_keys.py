"""The keyboard as a person uses it: keys go to whatever widget has the focus in the shown,
active window (not to the window object), after clicking the controls and after the Open dialog."""

import pytest
from PyQt6.QtCore import Qt, QTimer
from PyQt6.QtTest import QTest
from PyQt6.QtWidgets import QApplication
from test_gui import BASS, SR, VOCALS, make_window, output_ratio

SHIFT = Qt.KeyboardModifier.ShiftModifier


@pytest.fixture
def window(qtbot, settings):
    window = make_window(qtbot, settings)
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
    yield window
    window.close()
    window.session.close()


@pytest.fixture
def settings(tmp_path):
    from PyQt6.QtCore import QSettings

    return QSettings(str(tmp_path / "stemdeck.ini"), QSettings.Format.IniFormat)


def key(window, code, modifier=Qt.KeyboardModifier.NoModifier):
    """A key press where the keyboard goes: the focused widget, else the active window."""
    QTest.keyClick(QApplication.focusWidget() or QApplication.activeWindow() or window, code, modifier)


def close_popup(box):
    if hasattr(box, "hidePopup"):  # a list opened by the click
        box.hidePopup()


def assert_every_shortcut_works(window):
    engine = window.session.engine
    for stem in range(4):
        key(window, getattr(Qt.Key, f"Key_{stem + 1}"))
        assert engine.mixer().mute[stem], f"key {stem + 1} did not mute"
        key(window, getattr(Qt.Key, f"Key_{stem + 1}"))
        assert not engine.mixer().mute[stem]
    key(window, Qt.Key.Key_4)
    assert output_ratio(window) == pytest.approx(0.6, abs=1e-5)  # vocals muted, in the output
    key(window, Qt.Key.Key_4)
    key(window, Qt.Key.Key_2, SHIFT)  # solo bass
    assert engine.mixer().solo[BASS] and output_ratio(window) == pytest.approx(0.2, abs=1e-5)
    key(window, Qt.Key.Key_At, SHIFT)  # Shift+2 as a US layout sends it
    assert not engine.mixer().solo[BASS]
    key(window, Qt.Key.Key_Dollar)  # and as some send it, without the modifier
    assert engine.mixer().solo[VOCALS]
    key(window, Qt.Key.Key_4, SHIFT)
    assert not engine.mixer().solo[VOCALS]
    key(window, Qt.Key.Key_Space)
    assert not engine.mixer().playing
    key(window, Qt.Key.Key_Space)
    assert engine.mixer().playing
    before = engine.status().position_s
    key(window, Qt.Key.Key_Right)
    output_ratio(window, blocks=1)  # the seek lands in the next block
    assert engine.status().position_s == pytest.approx(before + 5.0 + 256 / SR, abs=1e-3)
    key(window, Qt.Key.Key_Left)
    output_ratio(window, blocks=1)
    assert engine.status().position_s == pytest.approx(before + 2 * 256 / SR, abs=1e-3)


def test_shortcuts_work_in_the_shown_window(window):
    assert_every_shortcut_works(window)


def test_shortcuts_work_after_using_the_latency_control(qtbot, window):
    qtbot.mouseClick(window.latency_box, Qt.MouseButton.LeftButton)  # where the text box took the focus
    close_popup(window.latency_box)
    focused = QApplication.focusWidget()
    assert focused is None or not focused.inherits("QAbstractSpinBox") and not focused.inherits("QLineEdit")
    assert_every_shortcut_works(window)


def test_shortcuts_work_whatever_has_the_focus(qtbot, window):
    for widget in (window.latency_box, window.model_box, window.crossfader, window.strips[0].fader):
        widget.setFocus()
        key(window, Qt.Key.Key_3)
        assert window.session.engine.mixer().mute[2], f"3 did not reach the mixer from {type(widget).__name__}"
        key(window, Qt.Key.Key_3)
        assert not window.session.engine.mixer().mute[2]


def test_shortcuts_work_after_the_open_dialog(qtbot, window):
    qtbot.mouseClick(window.latency_box, Qt.MouseButton.LeftButton)
    close_popup(window.latency_box)
    closed = []

    def cancel():  # the user presses Cancel
        dialog = QApplication.activeModalWidget()
        closed.append(dialog is not None)
        if dialog is not None:
            dialog.reject()

    QTimer.singleShot(300, cancel)
    window.open_dialog()
    assert closed == [True]
    window.activateWindow()  # what the window manager does when the dialog closes (offscreen has none)
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
    assert_every_shortcut_works(window)
