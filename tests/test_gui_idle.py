"""The window must leave the audio callback its GIL: the callback runs Python every 5.8 ms and an
idle GUI that repainted its 1200-column waveform in Python 30 times a second (≈ 30 ms each with
the GIL held) made JACK count its client late: 85 to 1357 xruns a minute on an idle deck where the
engine alone counted 2 (benchmarks/gui_idle_xruns.py). Painting is now on change only, and cheap."""

import statistics
import time

import pytest
from PyQt6.QtCore import QEvent, QObject, QSettings
from test_gui import make_window


class PaintCounter(QObject):
    def __init__(self, widgets):
        super().__init__()
        self.counts = {id(w): 0 for w in widgets}
        for widget in widgets:
            widget.installEventFilter(self)

    def eventFilter(self, watched, event):
        if event.type() == QEvent.Type.Paint and id(watched) in self.counts:
            self.counts[id(watched)] += 1
        return False


@pytest.fixture
def window(qtbot, tmp_path):
    window = make_window(qtbot, QSettings(str(tmp_path / "stemdeck.ini"), QSettings.Format.IniFormat))
    yield window
    window.close()
    window.session.close()


def test_a_paused_window_paints_nothing(qtbot, window):
    window.session.engine.pause()
    qtbot.wait(200)  # the last levels fall to silence
    views = [window.overview, window.master_meter] + [w for s in window.strips for w in (s.meter, s.activity)]
    counter = PaintCounter(views)
    qtbot.wait(1000)  # ≈ 30 refreshes
    assert sum(counter.counts.values()) == 0, counter.counts


def test_the_waveform_paints_in_a_few_calls(qtbot, window):
    overview = window.overview
    window.resize(1600, 900)
    qtbot.wait(50)
    overview.repaint()  # the lines are built once per track and size
    times_ms = []
    for step in range(20):
        overview.set_position(step * 0.5, 2.0)
        start = time.perf_counter()
        overview.repaint()
        times_ms.append(1000 * (time.perf_counter() - start))
    assert statistics.median(times_ms) < 8.0, times_ms  # a Python loop per column took ≈ 30 ms


def test_the_playhead_repaints_only_when_it_moves_on_screen(qtbot, window):
    overview = window.overview
    window.timer.stop()  # only this test moves the playhead
    qtbot.wait(50)
    counter = PaintCounter([overview])
    for _ in range(10):
        overview.set_position(1.0, 2.0)
        qtbot.wait(5)
    assert counter.counts[id(overview)] <= 1
    overview.set_position(1.0 + 12.0 / 2, 2.0)  # half the 12 s track further: far on screen
    qtbot.wait(50)
    assert counter.counts[id(overview)] >= 1
