"""The deck's practice row: loop in/out/on, halve/double, loops by beats, snap, count-in, hot cue pads 1-8,
record, and the tempo, key and BPM controls. Buttons only say what was pressed (signals); the
window calls the engine, and :meth:`TransportRow.sync` shows the engine's state at each refresh."""

from __future__ import annotations

from PyQt6.QtCore import QSize, Qt, pyqtSignal
from PyQt6.QtGui import QFont, QFontMetrics
from PyQt6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from stemdeck.engine.practice import LOOP_BEATS, NUM_HOT_CUES
from stemdeck.gui.theme import checked_text_is_bold

TEMPO_RANGE_PERCENT = (50, 150)
KEY_RANGE_SEMITONES = 12
NO_BEATS = "beats"  # the length list's first entry: no loop by beats chosen
GLYPH_BUTTON_PX = 36  # ½ and ×2, as narrow as the cue pads: the window keeps its minimum width
STEADY_LABEL_SLACK_PX = 6  # beyond the widest figure's advance: the glyphs' side bearings
COUNT_IN_BEATS = 4  # the Count-in button's clicks: one bar of 4/4
COUNT_IN_TIP = f"{COUNT_IN_BEATS} clicks (one a beat as heard) before the loop restarts"


class TransportRow(QWidget):
    """Practice controls; nothing here takes the keyboard, so the window's shortcuts always work."""

    loop_in = pyqtSignal()
    loop_out = pyqtSignal()
    loop_toggled = pyqtSignal()
    halve = pyqtSignal()
    double = pyqtSignal()
    loop_beats = pyqtSignal(int)
    snap_toggled = pyqtSignal(bool)
    count_in_toggled = pyqtSignal(bool)
    hot_cue = pyqtSignal(int)  # 1-8: jump, or set when empty
    record_toggled = pyqtSignal()
    tempo_changed = pyqtSignal(float)  # ratio
    key_step = pyqtSignal(int)  # semitones to add

    def __init__(self, parent=None, compact: bool = False):
        """Two rows (loop, then cues and tempo); ``compact``: three, for half a laptop screen
        (a deck of the two-deck window): loop, then snap, count-in and tempo, then cues."""
        super().__init__(parent)
        rows = QVBoxLayout(self)
        rows.setContentsMargins(0, 0, 0, 0)
        loop_row, cue_row = QHBoxLayout(), QHBoxLayout()  # two rows: the window stays narrow
        tempo_row = QHBoxLayout() if compact else cue_row
        for row in dict.fromkeys((loop_row, tempo_row, cue_row)):
            rows.addLayout(row)
        self._build_loop(loop_row, loop_row if not compact else tempo_row)
        loop_row.addStretch(1)
        self.bpm_label = QLabel("— BPM")
        self.bpm_label.setToolTip("The track's tempo, once the beat tracker has found it")
        loop_row.addWidget(self.bpm_label)
        self.record_button = self._button("● Rec", "Record what you hear to a WAV file (R)", checkable=True)
        self.record_button.setObjectName("record")
        self.record_button.clicked.connect(lambda: self.record_toggled.emit())
        loop_row.addWidget(self.record_button)
        cue_row.addWidget(QLabel("Cues"))
        self.pads = [self._pad(n) for n in range(1, NUM_HOT_CUES + 1)]
        for pad in self.pads:
            cue_row.addWidget(pad)
        cue_row.addStretch(1)
        if compact:
            tempo_row.addStretch(1)
        self._build_tempo(tempo_row)

    def _build_loop(self, row: QHBoxLayout, beat_row: QHBoxLayout) -> None:
        """Loop controls in ``row``; snap and count-in (the beat's) in ``beat_row``."""
        row.addWidget(QLabel("Loop"))
        self.loop_in_button = self._button("In", "Set the loop's in point at the playhead (I)")
        self.loop_out_button = self._button("Out", "Set the loop's out point and play the loop (O)")
        self.loop_button = self._button("⟳ On", "Loop on / off (L)", checkable=True)
        self.halve_button = self._button("½", "Halve the loop ([)")
        self.double_button = self._button("×2", "Double the loop (])")
        for glyph in (self.halve_button, self.double_button):
            glyph.setObjectName("glyph")  # the theme's rule: no side padding, so the glyph fits
            glyph.setFixedWidth(GLYPH_BUTTON_PX)  # one glyph each: room in the row for Count-in
        self.beats_box = QComboBox()
        self.beats_box.addItems([NO_BEATS] + [str(b) for b in LOOP_BEATS])
        self.beats_box.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.beats_box.setToolTip("Loop this many beats from the in point (once the tempo is known)")
        self.beats_box.activated.connect(self._beats_chosen)
        self.snap_button = self._button("Snap", "Loop points and hot cues land on the nearest beat", checkable=True)
        self.snap_button.toggled.connect(self.snap_toggled.emit)
        self.count_in_button = self._button("Count-in", COUNT_IN_TIP, checkable=True)
        self.count_in_button.toggled.connect(self.count_in_toggled.emit)
        for button, signal in (
            (self.loop_in_button, self.loop_in),
            (self.loop_out_button, self.loop_out),
            (self.loop_button, self.loop_toggled),
            (self.halve_button, self.halve),
            (self.double_button, self.double),
        ):
            button.clicked.connect(lambda _=False, s=signal: s.emit())
        for widget in (
            self.loop_in_button,
            self.loop_out_button,
            self.loop_button,
            self.halve_button,
            self.double_button,
            self.beats_box,
        ):
            row.addWidget(widget)
        beat_row.addWidget(self.snap_button)
        beat_row.addWidget(self.count_in_button)

    def _build_tempo(self, row: QHBoxLayout) -> None:
        """Tempo and key: enabled where the engine has them (the time-stretcher)."""
        self.tempo_slider = QSlider(Qt.Orientation.Horizontal)
        self.tempo_slider.setRange(*TEMPO_RANGE_PERCENT)
        self.tempo_slider.setValue(100)
        self.tempo_slider.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.tempo_slider.setMinimumWidth(60)
        self.tempo_slider.setMaximumWidth(140)
        self.tempo_slider.setToolTip("Tempo 50-150 %, pitch unchanged")
        self.tempo_slider.valueChanged.connect(lambda v: self.tempo_changed.emit(v / 100))
        self.tempo_label = SteadyLabel("100 %", widest="150 %")
        self.tempo_reset = self._button("1×", "Back to the recorded tempo")
        self.tempo_reset.clicked.connect(lambda: self.tempo_slider.setValue(100))
        self.key_down = self._button("♭", "Key down a semitone")
        self.key_label = SteadyLabel("key ±0", widest=("key -12", "key +12"))
        self.key_up = self._button("♯", "Key up a semitone")
        self.key_down.clicked.connect(lambda: self.key_step.emit(-1))
        self.key_up.clicked.connect(lambda: self.key_step.emit(1))
        for widget in (
            self.tempo_slider,
            self.tempo_label,
            self.tempo_reset,
            self.key_down,
            self.key_label,
            self.key_up,
        ):
            row.addWidget(widget)
        self.set_stretch_available(False)

    def _button(self, text: str, tip: str, checkable: bool = False) -> QPushButton:
        button = ToggleButton(text)
        button.setToolTip(tip)
        button.setCheckable(checkable)
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        return button

    def _pad(self, number: int) -> QPushButton:
        pad = self._button(
            str(number), f"Hot cue {number}: jump there, or set it here when empty (F{number}); Shift clears it"
        )
        pad.setCheckable(True)  # checked: the cue is set (the click itself toggles nothing)
        pad.setObjectName("hotcue")
        pad.setFixedWidth(30)
        pad.clicked.connect(lambda _=False, n=number: self.hot_cue.emit(n))
        return pad

    def _beats_chosen(self, index: int) -> None:
        """A choice acts once and the list shows "beats" again: it kept showing a length whose loop
        was refused, or left since, and the same length chosen again looked like nothing."""
        self.beats_box.setCurrentIndex(0)
        if index > 0:
            self.loop_beats.emit(LOOP_BEATS[index - 1])

    def set_stretch_available(self, available: bool) -> None:
        for widget in (self.tempo_slider, self.tempo_reset, self.key_down, self.key_up):
            widget.setEnabled(available)

    def sync(self, mixer, bpm: float | None, tempo: float | None, key: float | None) -> None:
        """Show the engine's state (looping, recording, cues set, tempo and key) without signals."""
        _show_checked(self.loop_button, mixer.looping)
        _show_checked(self.record_button, mixer.recording)
        _show_checked(self.count_in_button, mixer.count_in > 0)
        for pad, is_set in zip(self.pads, mixer.hot_cues_set, strict=False):
            _show_checked(pad, is_set)
        self.beats_box.setEnabled(bpm is not None)
        heard_bpm = None if bpm is None else bpm * (tempo or 1.0)  # what the DJ beat-matches against
        self.bpm_label.setText("— BPM" if heard_bpm is None else f"{heard_bpm:.1f} BPM")
        self.bpm_label.setToolTip("The tempo you hear" + ("" if bpm is None else f" (recorded at {bpm:.1f} BPM)"))
        self.set_stretch_available(tempo is not None)
        if tempo is not None and not self.tempo_slider.isSliderDown():
            self.tempo_slider.blockSignals(True)
            self.tempo_slider.setValue(round(100 * tempo))
            self.tempo_slider.blockSignals(False)
            self.tempo_label.setText(f"{100 * tempo:.0f} %")
        if key is not None:
            self.key_label.setText(f"key {key:+.0f}" if key else "key ±0")


class ToggleButton(QPushButton):
    """A button as wide as its text in bold, which the theme gives it when checked: sized for the
    regular font, a checked "Count-in" lost its last letter. (Without the theme, as the regular font.)"""

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        if not (self.isCheckable() and checked_text_is_bold()):
            return hint
        bold = QFont(self.font())
        bold.setBold(True)
        extra_px = QFontMetrics(bold).horizontalAdvance(self.text()) - self.fontMetrics().horizontalAdvance(self.text())
        return QSize(hint.width() + max(0, extra_px), hint.height())


class SteadyLabel(QLabel):
    """A label as wide as the widest text it will show, so the buttons beside it stay under the
    mouse while its figure changes (a tempo slider dragged from 100 % to 53 %). Measured in the
    font it has when laid out, not when made: the theme's stylesheet sets the font later, and a
    width fixed at construction cut "100 %" to "00 %" on a 96-dpi desktop. ``widest``: one text
    or several, where the font decides which is widest ("key +12" was wider than "key -12", and
    the label grew at +12)."""

    def __init__(self, text: str, widest: str | tuple[str, ...]):
        super().__init__(text)
        self._widest = (widest,) if isinstance(widest, str) else widest
        self.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Preferred)

    def sizeHint(self) -> QSize:
        margins = self.contentsMargins()
        width = max(self.fontMetrics().horizontalAdvance(t) for t in (*self._widest, self.text()))
        width += margins.left() + margins.right() + 2 * self.margin() + STEADY_LABEL_SLACK_PX
        return QSize(width, super().sizeHint().height())

    def minimumSizeHint(self) -> QSize:
        return self.sizeHint()


def _show_checked(button: QPushButton, on: bool) -> None:
    if button.isChecked() != bool(on):
        button.blockSignals(True)
        button.setChecked(bool(on))
        button.blockSignals(False)
