"""The practice row's Count-in button, clicked as a person does: the engine plays a bar of
clicks before the loop restarts (checked on its output), the button follows the engine (MIDI
may set it), and at 80 % tempo the clicks come one beat as heard apart (the beat / 0.8), with
nothing said against it."""

import numpy as np
import pytest
from PyQt6.QtCore import Qt
from test_gui_keys import settings, window  # noqa: F401 - fixtures
from test_gui_practice import REFRESH_MS, pull

from stemdeck.engine.audio.click import ACCENT, BEAT, click_buffer
from stemdeck.engine.audio.state import playhead_frames
from stemdeck.engine.config import CountInConfig
from stemdeck.gui.transport import COUNT_IN_BEATS, COUNT_IN_TIP

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
    assert engine.tempo == pytest.approx(0.8) and row.count_in_button.toolTip() == COUNT_IN_TIP
    qtbot.mouseClick(row.count_in_button, Qt.MouseButton.LeftButton)  # off
    qtbot.mouseClick(row.count_in_button, Qt.MouseButton.LeftButton)  # on again, at 80 %: heard
    qtbot.wait(REFRESH_MS)
    assert engine.count_in == 4 and row.count_in_button.isChecked() and row.count_in_button.toolTip() == COUNT_IN_TIP
    assert window.status_message() == ""
    engine.seek(0.1)
    out = pull_stretched(window, 5 * 13781 + 8192)  # the loop (0.1 s / 0.8, after the stage's lead), 4 beats
    accent, beat = click_starts(out, click[ACCENT]), round(11025 / 0.8)
    assert click_starts(out, click[BEAT])[:3] == [accent[0] + k * beat for k in (1, 2, 3)]
    assert accent[1] - accent[0] == 4 * beat + 5513  # then the loop from its in point: 4410 frames / 0.8


def pull_stretched(window, frames: int, block: int = 256) -> np.ndarray:
    """As :func:`pull`, block by block, each once the stretch stage has filled its ring (as it
    has in real time)."""
    stage = window.session.engine.practice.stage
    blocks = []
    for _ in range(0, frames, block):
        assert stage.wait_ahead(window.session.engine.practice.config.fill_frames)
        blocks.append(pull(window, block))
    return np.concatenate(blocks)


def click_starts(out: np.ndarray, click: np.ndarray) -> list[int]:
    """Where ``click`` starts on channel 0, sample for sample."""
    candidates = np.flatnonzero(out[1:, 0] == click[1])
    return [int(i) for i in candidates if np.array_equal(out[i : i + click.size, 0], click)]
