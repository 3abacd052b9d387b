"""The mixer's widgets: meters, dB faders, activity views, the track overview, a channel strip."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import numpy as np
from PyQt6.QtCore import QLineF, QPointF, QRectF, QSize, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QPainter, QPen
from PyQt6.QtWidgets import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from stemdeck.gui.theme import ACCENT, DIM_TEXT, PANEL, TEXT

METER_FLOOR_DB = -60.0
PEAK_HOLD_S = 1.5
FADER_MIN_DB, FADER_MAX_DB = -60.0, 6.0
FADER_STEPS_PER_DB = 10
ACTIVITY_POINTS = 90  # three seconds at 30 fps
PLAYED = "#7a808a"  # the waveform left of the playhead
METER_MIN_HEIGHT = 90  # the window's minimum size keeps every label clear of the meters
CUE_COLOUR, LOOP_COLOUR = "#26c6da", "#66bb6a"  # hot cue marks; the loop's band
CUE_FLAG_PX = 14


def to_db(value: float) -> float:
    return 20.0 * math.log10(value) if value > 1e-6 else -math.inf


def db_text(db: float) -> str:
    """A fader's readout: "−∞ dB", "0.0 dB" (as it opens: it read "+0.0 dB" after a scene
    recall), else signed, "+3.5 dB", "−6.0 dB"."""
    if db == -math.inf:
        return "−∞ dB"
    shown = f"{db:+.1f}"
    return "0.0 dB" if shown in ("+0.0", "-0.0") else f"{shown} dB".replace("-", "−")


def fit_to_screen(window: QWidget, width: int, height: int, headless: bool = False) -> None:
    """``window`` at ``width`` x ``height``, or less where its screen's free area is smaller (a
    two-deck window of 1900 px opened partly off a 1600 px screen); never below its minimum.
    ``headless`` (a picture rendered to a file, no screen to fit): as asked."""
    screen = None if headless else window.screen()
    if screen is not None:
        free = screen.availableGeometry()
        width, height = min(width, free.width()), min(height, free.height())
    window.resize(width, height)


class ElidedLabel(QLabel):
    """A label that shows as much of its text as fits, ending in "…": a track's name, however
    long, never sets the window's width. ``text()`` keeps the whole text; the tooltip shows it."""

    MIN_WIDTH_PX = 40

    def __init__(self, text: str = ""):
        super().__init__(text)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    def minimumSizeHint(self) -> QSize:
        return QSize(self.MIN_WIDTH_PX, super().minimumSizeHint().height())

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        shown = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, self.contentsRect().width())
        painter.drawText(self.contentsRect(), int(self.alignment()), shown)


def device_labels(headless: bool, rescan: bool = False) -> tuple[list[str], list[str]]:
    """Input and output devices' labels for the pickers ("name [host API]"); ``rescan`` first
    has PortAudio look again (a picker opening: a server started since), where no stream of ours
    is open. Empty where the window opens no device or no audio backend is there."""
    if headless:
        return [], []
    try:
        from stemdeck.engine.device import list_devices, rescan_devices

        if rescan:
            rescan_devices()
        devices = list_devices()
    except Exception:  # noqa: BLE001 - no audio backend: the pickers stay at default
        return [], []

    def label(device: dict) -> str:
        return f"{device['name']} [{device['hostapi_name']}]"

    return (
        [label(d) for d in devices if d["max_input_channels"] > 0],
        [label(d) for d in devices if d["max_output_channels"] > 0],
    )


def device_choice(label: str) -> str | None:
    """The device a picker's label names (None: the default)."""
    return None if label == "default" else label.rsplit(" [", 1)[0]


class SteadyButton(QPushButton):
    """A button as wide as the widest of its texts, so the buttons beside it stay under the mouse
    when it changes ("▶ Play" to "❚❚ Pause" pushed Cue, Sync and Phones 25 px aside). Measured in
    the font it has when laid out (the theme's, set after it is made)."""

    def __init__(self, texts: tuple[str, ...], tip: str):
        super().__init__(texts[0])
        self._texts = texts
        self.setToolTip(tip)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        metrics = self.fontMetrics()
        widest = max(metrics.horizontalAdvance(text) for text in self._texts)
        return QSize(hint.width() - metrics.horizontalAdvance(self.text()) + widest, hint.height())

    def minimumSizeHint(self) -> QSize:
        return self.sizeHint()


class DeviceBox(QComboBox):
    """A sound device picker that lists the devices again each time it opens: a sound server
    started after the window (JACK, PipeWire) or a card plugged in since shows up. The choice
    stays as it was, even when its device is gone (opening it then says so in one line)."""

    def __init__(self, names: Callable[[bool], list[str]], tip: str):
        super().__init__()
        self._names, self._tip = names, tip
        self.addItems(["default", *names(False)])
        self.setToolTip(tip)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.currentTextChanged.connect(self._show_whole_name)

    def _show_whole_name(self, label: str) -> None:
        """The chosen device's whole name in the tooltip: a narrow panel cuts it ("system [JACK Audi")."""
        self.setToolTip(f"{self._tip}\nNow: {label}")

    def showPopup(self) -> None:
        self.refill(self._names(True))
        super().showPopup()

    def refill(self, names: list[str]) -> None:
        chosen = self.currentText()
        items = ["default", *names]
        if chosen not in items:
            items.append(chosen)
        if items != [self.itemText(index) for index in range(self.count())]:
            self.blockSignals(True)
            self.clear()
            self.addItems(items)
            self.setCurrentText(chosen)
            self.blockSignals(False)


class LevelMeter(QWidget):
    """RMS bar with a peak-hold line, in dB from −60 to 0."""

    def __init__(self, colour: QColor, parent=None):
        super().__init__(parent)
        self.colour = colour
        self.rms_db = self.peak_db = self.hold_db = -math.inf
        self._hold_age_s = 0.0
        self.setFixedWidth(18)
        self.setMinimumHeight(METER_MIN_HEIGHT)

    def reset(self) -> None:
        """A new track: no level, no peak mark left from the old one."""
        self.rms_db = self.peak_db = self.hold_db = -math.inf
        self._hold_age_s = 0.0
        self.update()

    def set_levels(self, rms: float, peak: float, elapsed_s: float) -> None:
        before = (self.rms_db, self.hold_db)
        self.rms_db, self.peak_db = to_db(rms), to_db(peak)
        self._hold_age_s += elapsed_s
        if self.peak_db >= self.hold_db or self._hold_age_s > PEAK_HOLD_S:
            self.hold_db, self._hold_age_s = self.peak_db, 0.0
        if (self.rms_db, self.hold_db) != before:  # an idle meter costs no painting
            self.update()

    def _fraction(self, db: float) -> float:
        return 0.0 if db == -math.inf else min(1.0, max(0.0, 1.0 - db / METER_FLOOR_DB))

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        rect = QRectF(self.rect())
        p.fillRect(rect, QColor(PANEL))
        height = rect.height() * self._fraction(self.rms_db)
        p.fillRect(QRectF(rect.left(), rect.bottom() - height, rect.width(), height), self.colour)
        if self.hold_db > METER_FLOOR_DB:
            y = rect.bottom() - rect.height() * self._fraction(self.hold_db)
            p.setPen(QPen(QColor("#ff5252") if self.hold_db >= -0.1 else QColor(TEXT), 2))
            p.drawLine(QPointF(rect.left(), y), QPointF(rect.right(), y))


class ActivityView(QWidget):
    """The stem's level over the last seconds, scrolling: what it is doing right now."""

    def __init__(self, colour: QColor, parent=None):
        super().__init__(parent)
        self.colour = colour
        self.points: deque[float] = deque([0.0] * ACTIVITY_POINTS, maxlen=ACTIVITY_POINTS)
        self.setMinimumSize(60, 28)

    def reset(self) -> None:
        self.points.extend([0.0] * ACTIVITY_POINTS)
        self.update()

    def push(self, peak: float) -> None:
        value = self._fraction(peak)
        if value == 0.0 and not any(self.points):
            return  # silent and already flat: nothing moves
        self.points.append(value)
        self.update()

    @staticmethod
    def _fraction(value: float) -> float:
        db = to_db(value)
        return 0.0 if db == -math.inf else min(1.0, max(0.0, 1.0 - db / METER_FLOOR_DB))

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        rect = QRectF(self.rect())
        p.fillRect(rect, QColor(PANEL))
        width = rect.width() / ACTIVITY_POINTS
        middle, bar = rect.center().y(), max(1.0, width - 1)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(self.colour)
        p.drawRects(
            [
                QRectF(rect.left() + i * width, middle - value * middle, bar, 2 * value * middle)
                for i, value in enumerate(self.points)
                if value > 0
            ]
        )


class DbFader(QSlider):
    """Vertical fader in dB with a unity mark; double-click resets to 0 dB."""

    changed_db = pyqtSignal(float)

    def __init__(self, parent=None):
        super().__init__(Qt.Orientation.Vertical, parent)
        self.setRange(int(FADER_MIN_DB * FADER_STEPS_PER_DB), int(FADER_MAX_DB * FADER_STEPS_PER_DB))
        self.setValue(0)
        self.setMinimumHeight(METER_MIN_HEIGHT)
        self.setPageStep(3 * FADER_STEPS_PER_DB)
        self.valueChanged.connect(lambda v: self.changed_db.emit(self.db))

    @property
    def db(self) -> float:
        value = self.value() / FADER_STEPS_PER_DB
        return -math.inf if value <= FADER_MIN_DB else value

    def set_db(self, db: float) -> None:
        self.setValue(round(max(FADER_MIN_DB, min(FADER_MAX_DB, db)) * FADER_STEPS_PER_DB))

    def mouseDoubleClickEvent(self, event) -> None:
        self.set_db(0.0)

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        p = QPainter(self)
        p.setPen(QPen(QColor(DIM_TEXT), 1))
        span = self.maximum() - self.minimum()
        y = self.height() * (self.maximum() - 0) / span
        p.drawLine(QPointF(0, y), QPointF(8, y))
        p.drawLine(QPointF(self.width() - 8, y), QPointF(self.width(), y))


class WaveformOverview(QWidget):
    """The whole track, the playhead, and a band showing how far ahead separation has got.

    The waveform's lines are built once per track and size and drawn in one call: painting runs
    on the GUI thread holding the GIL, which the audio callback needs every few milliseconds.
    """

    seek_requested = pyqtSignal(float)  # seconds

    def __init__(self, parent=None):
        super().__init__(parent)
        self.peaks = np.zeros(0, np.float32)
        self.seconds = 0.0
        self.position_s = 0.0
        self.separated_until_s = 0.0
        self.cues: tuple[float | None, ...] = ()
        self.loop: tuple[float | None, float | None, bool] = (None, None, False)
        self._lines: list[QLineF] = []
        self._lines_key: tuple | None = None
        self.setMinimumHeight(50)
        self.setToolTip("Click to seek (Left/Right: ±5 s). Shaded: separated ahead of the playhead")

    def set_track(self, peaks: np.ndarray, seconds: float) -> None:
        self.peaks, self.seconds = peaks, seconds
        self.position_s = self.separated_until_s = 0.0
        self._lines_key = None
        self.update()

    def set_position(self, position_s: float, ahead_s: float) -> None:
        """Repaints only when the playhead or the band moves on screen."""
        before = (self._x_of(self.position_s), self._x_of(self.separated_until_s))
        self.position_s, self.separated_until_s = position_s, position_s + ahead_s
        if before != (self._x_of(self.position_s), self._x_of(self.separated_until_s)):
            self.update()

    def set_marks(self, cues: tuple[float | None, ...], loop: tuple[float | None, float | None, bool]) -> None:
        """Hot cues (seconds or None) and the loop ``(in, out, playing)``; repaints on a change."""
        if (tuple(cues), tuple(loop)) != (self.cues, self.loop):
            self.cues, self.loop = tuple(cues), tuple(loop)
            self.update()

    def _x_of(self, seconds: float) -> int:
        return round(self.width() * min(1.0, seconds / self.seconds)) if self.seconds > 0 else 0

    def mousePressEvent(self, event) -> None:
        if self.seconds > 0:
            self.seek_requested.emit(self.seconds * min(1.0, max(0.0, event.position().x() / self.width())))

    def _waveform(self) -> list[QLineF]:
        key = (id(self.peaks), self.width(), self.height())
        if key != self._lines_key:
            scale = self.height() / 2 / max(1e-6, float(self.peaks.max()))
            middle, column = self.height() / 2, self.width() / len(self.peaks)
            self._lines = [
                QLineF(i * column, middle - peak * scale, i * column, middle + peak * scale)
                for i, peak in enumerate(self.peaks.tolist())
            ]
            self._lines_key = key
        return self._lines

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        rect = QRectF(self.rect())
        p.fillRect(rect, QColor(PANEL))
        if self.seconds <= 0 or len(self.peaks) == 0:
            p.setPen(QColor(DIM_TEXT))
            p.drawText(rect, Qt.AlignmentFlag.AlignCenter, "Open a track (Ctrl+O) or drop a file here")
            return
        played, ahead = self._x_of(self.position_s), self._x_of(self.separated_until_s)
        p.fillRect(QRectF(played, rect.top(), ahead - played, rect.height()), QColor(255, 179, 0, 50))
        lines = self._waveform()
        for colour, clip in (
            (PLAYED, QRectF(0, 0, played, rect.height())),
            (TEXT, QRectF(played, 0, rect.width() - played, rect.height())),
        ):
            p.setClipRect(clip)
            p.setPen(QColor(colour))
            p.drawLines(lines)
        p.setClipping(False)
        self._paint_loop(p, rect)
        self._paint_cues(p, rect)
        p.setPen(QPen(QColor(ACCENT), 2))
        p.drawLine(QPointF(played, rect.top()), QPointF(played, rect.bottom()))

    def _paint_loop(self, p: QPainter, rect: QRectF) -> None:
        """The loop's band (filled while it plays, outlined when off) and its in point alone."""
        loop_in, loop_out, playing = self.loop
        colour = QColor(LOOP_COLOUR)
        if loop_in is not None and loop_out is not None:
            left, right = self._x_of(loop_in), self._x_of(loop_out)
            band = QRectF(left, rect.top(), max(1, right - left), rect.height())
            if playing:
                p.fillRect(band, QColor(colour.red(), colour.green(), colour.blue(), 70))
            p.setPen(QPen(colour, 1, Qt.PenStyle.SolidLine if playing else Qt.PenStyle.DashLine))
            p.drawRect(band)
        elif loop_in is not None:
            x = self._x_of(loop_in)
            p.setPen(QPen(colour, 2))
            p.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))

    def _paint_cues(self, p: QPainter, rect: QRectF) -> None:
        """Each hot cue: a line with a numbered flag at the top."""
        colour = QColor(CUE_COLOUR)
        for number, seconds in enumerate(self.cues, 1):
            if seconds is None:
                continue
            x = self._x_of(seconds)
            p.setPen(QPen(colour, 1))
            p.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))
            flag = QRectF(x, rect.top(), CUE_FLAG_PX, CUE_FLAG_PX)
            p.fillRect(flag, colour)
            p.setPen(QColor("#000"))
            p.drawText(flag, Qt.AlignmentFlag.AlignCenter, str(number))


class StemStrip(QFrame):
    """One stem: name, fader, Mute and Solo, meter and activity, all in the stem's colour."""

    def __init__(self, index: int, name: str, colour: QColor, parent=None):
        super().__init__(parent)
        self.index, self.name, self.colour = index, name, colour
        self.setObjectName("panel")
        self.label = QLabel(name.capitalize())
        self.label.setObjectName("stemName")
        self.label.setStyleSheet(f"color: {colour.name()}")
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.activity = ActivityView(colour)
        self.fader = DbFader()
        self.fader.setToolTip(f"{name} level in dB (double-click: 0 dB)")
        self.meter = LevelMeter(colour)
        self.db_label = QLabel("0.0 dB")
        self.db_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.fader.changed_db.connect(self._show_db)
        key = index + 1
        self.mute = self._button("M", "mute", f"Mute {name} ({key})")
        self.solo = self._button("S", "solo", f"Solo {name} (Shift+{key})")
        layout = QVBoxLayout(self)
        layout.addWidget(self.label)
        layout.addWidget(self.activity)
        middle = QHBoxLayout()
        middle.addStretch(1)
        middle.addWidget(self.fader)
        middle.addSpacing(12)
        middle.addWidget(self.meter)
        middle.addStretch(1)
        layout.addLayout(middle, 1)
        layout.addWidget(self.db_label)
        buttons = QHBoxLayout()
        buttons.addWidget(self.mute)
        buttons.addWidget(self.solo)
        layout.addLayout(buttons)

    def _button(self, text: str, role: str, tip: str) -> QPushButton:
        button = QPushButton(text)
        button.setObjectName(role)
        button.setCheckable(True)
        button.setToolTip(tip)
        button.setMinimumSize(44, 36)
        return button

    def show_gain(self, db: float) -> None:
        """Move the fader to ``db`` set elsewhere (MIDI, a scene) without sending it back."""
        self.fader.blockSignals(True)
        self.fader.set_db(db)
        self.fader.blockSignals(False)
        self._show_db(self.fader.db)

    def reset_views(self) -> None:
        self.meter.reset()
        self.activity.reset()

    def _show_db(self, db: float) -> None:
        self.db_label.setText(db_text(db))
