"""The practice row's Count-in button, clicked as a person does: the engine plays a bar of
clicks before the loop restarts (checked on its output), the button follows the engine (MIDI
may set it), and at another tempo the status bar and the tooltip say the count-in is not heard."""

import numpy as np
import pytest
from PyQt6.QtCore import Qt
from test_gui_keys import settings, window  # noqa: F401 - fixtures
from test_gui_practice import REFRESH_MS, pull

from stemdeck.engine.audio.click import ACCENT, click_buffer
from stemdeck.engine.audio.state import playhead_frames
from stemdeck.engine.config import CountInConfig
from stemdeck.engine.engine import COUNT_IN_TEMPO_NOTE
from stemdeck.gui.transport import COUNT_IN_BEATS

SR = 44100


def test_the_count_in_button_clicks_a_bar_before_the_loop_restarts(qtbot, window):
    engine, row = window.session.engine, window.transport
    assert engine.count_in == 0 and not row.count_in_button.isChecked()
    qtbot.mouseClick(row.count_in_button, Qt.MouseButton.LeftButton)
    assert engine.count_in == COUNT_IN_BEATS == 4 and row.count_in_button.isChecked()
    engine.set_beat_grid(240.0)  # a beat of 11025 frames
    engine.set_loop(0.1, 0.2)
    engine.seek(0.1)
    engine.play()
    pull(window, 4410)  # to the loop's out point
    out = pull(window, 4 * 11025)
    click = click_buffer(CountInConfig(), SR)
    np.testing.assert_array_equal(out[: click.shape[1], 0], click[ACCENT])
    assert np.abs(out[11025 : 11025 + click.shape[1]]).max() > 0.1 and not out[click.shape[1] : 11025].any()
    assert playhead_frames(engine.shared) == int(0.1 * SR)  # waiting at the in point
    qtbot.mouseClick(row.count_in_button, Qt.MouseButton.LeftButton)
    assert engine.count_in == 0 and not row.count_in_button.isChecked()
    engine.set_count_in(4)  # as MIDI would: the button follows at the next refresh
    qtbot.waitUntil(row.count_in_button.isChecked, timeout=2000)
    row.tempo_slider.setValue(80)
    qtbot.wait(REFRESH_MS)
    assert engine.tempo == pytest.approx(0.8) and row.count_in_button.toolTip() == COUNT_IN_TEMPO_NOTE
    qtbot.mouseClick(row.count_in_button, Qt.MouseButton.LeftButton)  # off
    qtbot.mouseClick(row.count_in_button, Qt.MouseButton.LeftButton)  # on again, at 80 %: said
    assert window.status_message() == COUNT_IN_TEMPO_NOTE
