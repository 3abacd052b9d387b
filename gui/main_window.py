"""The desktop mixer's window: source, a strip per stem, master, status; keyboard and MIDI learn."""
from __future__ import annotations

import math
import time
from pathlib import Path

from PyQt6.QtCore import QSettings, Qt, QTimer
from PyQt6.QtGui import QAction, QColor, QKeySequence
from PyQt6.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QFrame, QHBoxLayout, QLabel, QMainWindow, QMenu, QProgressBar,
                             QPushButton, QSlider, QTabWidget, QVBoxLayout, QWidget)

from .session import Session, Track
from .theme import stem_colour
from .widgets import LevelMeter, StemStrip, WaveformOverview

REFRESH_MS = 33  # ≈ 30 fps
SEEK_STEP_S = 5.0
MAX_STEMS = 6
MAX_RECENT = 8
DIGIT_KEYS = [getattr(Qt.Key, f"Key_{n}") for n in range(1, MAX_STEMS + 1)]
# What Shift+1..6 gives on a US layout; other layouts still send the digit with Shift held.
SHIFTED_DIGIT_KEYS = [Qt.Key.Key_Exclam, Qt.Key.Key_At, Qt.Key.Key_NumberSign, Qt.Key.Key_Dollar,
                      Qt.Key.Key_Percent, Qt.Key.Key_AsciiCircum]
PRESET_NAMES = ("quality", "balanced", "low-latency")
MODEL_CHOICES = ("htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "tiny", "passthrough")


def _clock(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


class EngineControls:
    """The current engine's control API, whichever engine that is (MIDI outlives model switches)."""

    def __init__(self, session: Session):
        self._session = session

    @property
    def sources(self) -> tuple[str, ...]:
        engine = self._session.engine
        return engine.sources if engine is not None else ()

    def __getattr__(self, name):
        engine = self._session.engine
        if engine is None:
            raise ValueError("no model is loaded yet")
        return getattr(engine, name)


class MainWindow(QMainWindow):
    def __init__(self, session: Session, settings: QSettings | None = None, midi=None):
        super().__init__()
        self.session, self.midi = session, midi
        self.settings = settings or QSettings("stemdeck", "stemdeck")
        self.strips: list[StemStrip] = []
        self.sources: tuple[str, ...] = ()
        self.errors: list[str] = []
        self._last_tick = time.perf_counter()
        self._reported_stream_error: str | None = None
        self.setWindowTitle("stemdeck")
        self.setAcceptDrops(True)
        self.setMinimumSize(760, 520)
        self._build()
        self._connect_session()
        self._restore_settings()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(REFRESH_MS)

    # -- layout -------------------------------------------------------------------------------------

    def _build(self) -> None:
        central = QWidget()
        root = QVBoxLayout(central)
        root.addLayout(self._build_top_row())
        root.addWidget(self._build_banner())
        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_deck(), "File deck")
        self.tabs.addTab(self._build_live(), "Live input")
        self.tabs.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        root.addWidget(self.tabs)
        mixer = QHBoxLayout()
        self.strip_row = QHBoxLayout()
        mixer.addLayout(self.strip_row, 1)
        mixer.addWidget(self._build_master())
        root.addLayout(mixer, 1)
        self.setCentralWidget(central)
        self._build_status_bar()
        self._build_menu()

    def _build_top_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(QLabel("Model"))
        self.model_box = self._combo(MODEL_CHOICES, "Separation model (switching keeps the app responsive)")
        self.model_box.activated.connect(lambda _: self.session.choose_model(self.model_box.currentText(),
                                                                             self.preset_box.currentText()))
        row.addWidget(self.model_box)
        row.addWidget(QLabel("Preset"))
        self.preset_box = self._combo(PRESET_NAMES, "quality: most context, most latency; low-latency: least")
        self.preset_box.activated.connect(self._preset_chosen)
        row.addWidget(self.preset_box)
        self.latency_box = QDoubleSpinBox()
        self.latency_box.setRange(0.0, 10.0)
        self.latency_box.setSingleStep(0.1)
        self.latency_box.setDecimals(2)
        self.latency_box.setSpecialValueText("preset")
        self.latency_box.setSuffix(" s")
        self.latency_box.setToolTip("Target latency in seconds instead of the preset ('preset': use the preset)")
        self.latency_box.editingFinished.connect(self._latency_chosen)
        row.addWidget(QLabel("or latency"))
        row.addWidget(self.latency_box)
        row.addStretch(1)
        self.busy_label = QLabel("")
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)
        self.busy_bar.setMaximumWidth(160)
        self.busy_bar.hide()
        row.addWidget(self.busy_label)
        row.addWidget(self.busy_bar)
        return row

    def _build_banner(self) -> QFrame:
        self.banner = QFrame()
        self.banner.setObjectName("banner")
        layout = QHBoxLayout(self.banner)
        self.banner_text = QLabel("")
        self.banner_text.setWordWrap(True)
        close = QPushButton("✕")
        close.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        close.setToolTip("Dismiss")
        close.clicked.connect(self.banner.hide)
        layout.addWidget(self.banner_text, 1)
        layout.addWidget(close)
        self.banner.hide()
        return self.banner

    def _build_deck(self) -> QWidget:
        deck = QWidget()
        layout = QVBoxLayout(deck)
        row = QHBoxLayout()
        self.open_button = self._push("Open…", "Open a track (Ctrl+O); or drop a file on the window")
        self.open_button.clicked.connect(self.open_dialog)
        self.recent_button = self._push("Recent", "Recently opened tracks")
        self.recent_menu = QMenu(self)
        self.recent_button.setMenu(self.recent_menu)
        self.play_button = self._push("▶ Play", "Play / pause (Space)")
        self.play_button.clicked.connect(self.toggle_play)
        self.track_label = QLabel("no track")
        self.elapsed_label = QLabel("0:00.0")
        self.remaining_label = QLabel("−0:00.0")
        for label in (self.elapsed_label, self.remaining_label):
            label.setObjectName("time")
        for widget in (self.open_button, self.recent_button, self.play_button, self.track_label):
            row.addWidget(widget)
        row.addStretch(1)
        row.addWidget(self.elapsed_label)
        row.addWidget(self.remaining_label)
        layout.addLayout(row)
        self.overview = WaveformOverview()
        self.overview.seek_requested.connect(self.seek_to)
        layout.addWidget(self.overview)
        return deck

    def _build_live(self) -> QWidget:
        live = QWidget()
        layout = QHBoxLayout(live)
        inputs, outputs = self._device_names()
        layout.addWidget(QLabel("Input"))
        self.input_box = self._combo(["default"] + inputs, "Input device (host API in brackets)")
        layout.addWidget(self.input_box, 1)
        layout.addWidget(QLabel("Output"))
        self.live_output_box = self._combo(["default"] + outputs, "Output device (host API in brackets)")
        layout.addWidget(self.live_output_box, 1)
        self.live_button = self._push("Start live", "Separate the input live, latency-compensated")
        self.live_button.clicked.connect(self.start_live)
        layout.addWidget(self.live_button)
        return live

    def _build_master(self) -> QFrame:
        master = QFrame()
        master.setObjectName("panel")
        layout = QVBoxLayout(master)
        title = QLabel("Master")
        title.setObjectName("stemName")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(title)
        self.master_meter = LevelMeter(QColor("#e8eaed"))
        layout.addWidget(self.master_meter, 1, Qt.AlignmentFlag.AlignHCenter)
        layout.addWidget(QLabel("Stems ◀ ▶ Dry"))
        self.crossfader = QSlider(Qt.Orientation.Horizontal)
        self.crossfader.setRange(0, 100)
        self.crossfader.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.crossfader.setToolTip("Crossfade between the stems mix and the dry track (latency-aligned)")
        self.crossfader.valueChanged.connect(lambda v: self._engine_call("set_dry_mix", v / 100))
        layout.addWidget(self.crossfader)
        _, outputs = self._device_names()
        self.output_box = self._combo(["default"] + outputs, "Output device for the deck")
        self.output_box.activated.connect(
            lambda _: self.session.set_output(self._device_choice(self.output_box)))
        layout.addWidget(QLabel("Output"))
        layout.addWidget(self.output_box)
        master.setMinimumWidth(200)
        return master

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.model_status, self.latency_status, self.load_status = QLabel("no model"), QLabel(""), QLabel("")
        self.ahead_status, self.xrun_status, self.midi_status = QLabel(""), QLabel(""), QLabel("")
        for label in (self.model_status, self.latency_status, self.load_status, self.ahead_status,
                      self.xrun_status, self.midi_status):
            bar.addPermanentWidget(label)

    def _build_menu(self) -> None:
        open_action = QAction("Open…", self)
        open_action.setShortcut(QKeySequence("Ctrl+O"))
        open_action.triggered.connect(self.open_dialog)
        self.addAction(open_action)
        menu = self.menuBar().addMenu("&File")
        menu.addAction(open_action)
        quit_action = QAction("Quit", self)
        quit_action.setShortcut(QKeySequence("Ctrl+Q"))
        quit_action.triggered.connect(self.close)
        menu.addAction(quit_action)

    def _combo(self, items, tip: str) -> QComboBox:
        box = QComboBox()
        box.addItems(list(items))
        box.setToolTip(tip)
        box.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        return box

    def _push(self, text: str, tip: str) -> QPushButton:
        button = QPushButton(text)
        button.setToolTip(tip)
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        return button

    def _device_names(self) -> tuple[list[str], list[str]]:
        if self.session.config.headless:
            return [], []
        try:
            from engine.device import list_devices
            devices = list_devices()
        except Exception:  # noqa: BLE001 - no audio backend: the pickers stay at default
            return [], []
        label = lambda d: f"{d['name']} [{d['hostapi_name']}]"  # noqa: E731
        return ([label(d) for d in devices if d["max_input_channels"] > 0],
                [label(d) for d in devices if d["max_output_channels"] > 0])

    @staticmethod
    def _device_choice(box: QComboBox) -> str | None:
        text = box.currentText()
        return None if text == "default" else text.rsplit(" [", 1)[0]

    # -- session ------------------------------------------------------------------------------------

    def _connect_session(self) -> None:
        s = self.session
        s.busy.connect(self._show_busy)
        s.failed.connect(self.show_error)
        s.model_ready.connect(self._on_model_ready)
        s.track_ready.connect(self._on_track_ready)
        s.live_ready.connect(lambda: self.track_label.setText("live input"))

    def _preset_chosen(self) -> None:
        self.session.config.latency_s = None
        self.latency_box.setValue(0.0)
        self.session.choose_model(self.session.model_name or self.model_box.currentText(),
                                  self.preset_box.currentText())

    def _latency_chosen(self) -> None:
        self.latency_box.clearFocus()  # the keys go back to the mixer
        latency_s = self.latency_box.value() or None
        if latency_s != self.session.config.latency_s:
            self.session.config.latency_s = latency_s
            self.session.choose_model(self.session.model_name or self.model_box.currentText(),
                                      self.preset_box.currentText())

    def _show_busy(self, what: str) -> None:
        self.busy_label.setText(what)
        self.busy_bar.setVisible(bool(what))

    def show_error(self, message: str) -> None:
        """Non-modal: the app keeps running and the message says what to do."""
        self.errors.append(message)
        self.banner_text.setText(message)
        self.banner.show()

    def _on_model_ready(self, name: str, sources: tuple) -> None:
        self.sources = tuple(sources)
        self._rebuild_strips()
        self.model_box.setCurrentText(name)
        self.preset_box.setCurrentText(self.session.config.preset)
        self.settings.setValue("model", name)
        self.settings.setValue("preset", self.session.config.preset)
        note = {"passthrough": " — stand-in: stems are fixed fractions of the mix",
                "tiny": " — bundled small model; `stemdeck models fetch htdemucs` for the official one"}.get(name, "")
        self.model_status.setText(f"{name}: {', '.join(sources)}{note}")

    def _on_track_ready(self, track: Track) -> None:
        self.overview.set_track(track.peaks, track.seconds)
        self.track_label.setText(track.name)
        if track.path is not None:
            recent = [str(track.path)] + [p for p in self._recent() if p != str(track.path)]
            self.settings.setValue("recent", recent[:MAX_RECENT])
            self._fill_recent()

    def _rebuild_strips(self) -> None:
        for strip in self.strips:
            self.strip_row.removeWidget(strip)
            strip.deleteLater()
        self.strips = []
        mixer = self._mixer()
        for index, name in enumerate(self.sources):
            colour = QColor(self.settings.value(f"colours/{name}", stem_colour(name, index).name()))
            strip = StemStrip(index, name, colour)
            if mixer is not None:
                strip.fader.set_db(mixer.gain_db[index])
                strip.mute.setChecked(mixer.mute[index])
                strip.solo.setChecked(mixer.solo[index])
            strip.mute.toggled.connect(lambda on, i=index: self._engine_call("set_mute", i, on))
            strip.solo.toggled.connect(lambda on, i=index: self._engine_call("set_solo", i, on))
            strip.fader.changed_db.connect(lambda db, i=index: self._engine_call("set_gain", i, db))
            for widget, control in ((strip.mute, "mute"), (strip.solo, "solo"), (strip.fader, "gain")):
                widget.setFocusPolicy(Qt.FocusPolicy.NoFocus)
                widget.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
                widget.customContextMenuRequested.connect(
                    lambda pos, w=widget, c=control, i=index: self._midi_menu(w, pos, c, i))
            self.strips.append(strip)
            self.strip_row.addWidget(strip)

    def _mixer(self):
        engine = self.session.engine
        return engine.mixer() if engine is not None else None

    def _engine_call(self, name: str, *args) -> None:
        engine = self.session.engine
        if engine is not None:
            getattr(engine, name)(*args)

    # -- commands -----------------------------------------------------------------------------------

    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a track", str(Path.home()),
                                              "Audio (*.wav *.flac *.ogg *.mp3 *.aiff *.aif);;All files (*)")
        if path:
            self.open_path(path)

    def open_path(self, path: str | Path) -> None:
        self.tabs.setCurrentIndex(0)
        self.session.open_file(path)

    def toggle_play(self) -> None:
        self._engine_call("toggle_play")

    def seek_to(self, seconds: float) -> None:
        self._engine_call("seek", seconds)

    def seek_by(self, seconds: float) -> None:
        engine = self.session.engine
        if engine is not None and engine._mode == "deck":
            engine.seek(max(0.0, engine.status().position_s + seconds))

    def toggle_stem(self, index: int, control: str) -> None:
        if index < len(self.strips):
            button = self.strips[index].mute if control == "mute" else self.strips[index].solo
            button.toggle()

    def start_live(self) -> None:
        self.session.config.input_device = self._device_choice(self.input_box)
        self.session.config.output_device = self._device_choice(self.live_output_box)
        self.session.start_live()

    # -- keyboard, drops ----------------------------------------------------------------------------

    def keyPressEvent(self, event) -> None:
        key, shift = event.key(), bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        if key == Qt.Key.Key_Space:
            self.toggle_play()
        elif key == Qt.Key.Key_Left:
            self.seek_by(-SEEK_STEP_S)
        elif key == Qt.Key.Key_Right:
            self.seek_by(SEEK_STEP_S)
        elif key == Qt.Key.Key_Escape and self.midi is not None and self.midi.learning:
            self.midi.cancel_learn()
            self.statusBar().showMessage("MIDI learn cancelled", 3000)
        elif key in DIGIT_KEYS:
            self.toggle_stem(DIGIT_KEYS.index(key), "solo" if shift else "mute")
        elif key in SHIFTED_DIGIT_KEYS:
            self.toggle_stem(SHIFTED_DIGIT_KEYS.index(key), "solo")
        else:
            super().keyPressEvent(event)

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        urls = [u for u in event.mimeData().urls() if u.isLocalFile()]
        if urls:
            self.open_path(urls[0].toLocalFile())

    # -- MIDI learn ---------------------------------------------------------------------------------

    def _midi_menu(self, widget, pos, control: str, index: int) -> None:
        menu = QMenu(self)
        action = menu.addAction(f"MIDI learn: {control} {self.sources[index]}")
        if self.midi is None:
            action.setEnabled(False)
            action.setToolTip("start stemdeck with --midi-in NAME or --midi-virtual")
        action.triggered.connect(lambda: self.midi_learn(control, index))
        menu.popup(widget.mapToGlobal(pos))

    def midi_learn(self, control: str, index: int | None) -> None:
        if self.midi is None:
            return
        self.midi.learn(control, index)
        target = f"{control} {self.sources[index]}" if index is not None else control
        self.statusBar().showMessage(f"MIDI learn: move a control or press a pad for {target} (Esc cancels)")

    # -- the 30 fps refresh -------------------------------------------------------------------------

    def refresh(self) -> None:
        now = time.perf_counter()
        elapsed_s, self._last_tick = now - self._last_tick, now
        engine = self.session.engine
        if engine is None:
            return
        status, mixer = engine.status(), engine.mixer()
        for index, strip in enumerate(self.strips[: len(status.rms) - 1]):
            strip.meter.set_levels(status.rms[index], status.peak[index], elapsed_s)
            strip.activity.push(status.peak[index])
            self._sync(strip.mute, mixer.mute[index])
            self._sync(strip.solo, mixer.solo[index])
            if abs(strip.fader.db - mixer.gain_db[index]) > 0.05 and not strip.fader.isSliderDown():
                if not (strip.fader.db == -math.inf and mixer.gain_db[index] <= -60):
                    strip.fader.blockSignals(True)
                    strip.fader.set_db(mixer.gain_db[index])
                    strip.fader._show_db(strip.fader.db)
                    strip.fader.blockSignals(False)
        self.master_meter.set_levels(status.rms[-1], status.peak[-1], elapsed_s)
        if not self.crossfader.isSliderDown() and self.crossfader.value() != round(100 * mixer.dry_mix):
            self.crossfader.blockSignals(True)  # moved from MIDI
            self.crossfader.setValue(round(100 * mixer.dry_mix))
            self.crossfader.blockSignals(False)
        self.play_button.setText("❚❚ Pause" if status.playing else "▶ Play")
        if self.session.track is not None:
            seconds = self.session.track.seconds
            self.overview.set_position(status.position_s, status.seconds_ahead)
            self.elapsed_label.setText(_clock(status.position_s))
            self.remaining_label.setText("−" + _clock(seconds - status.position_s))
        deck = engine._mode == "deck"
        self.latency_status.setText("deck: stems on the playhead, no added delay" if deck
                                    else f"latency {status.latency_ms:.0f} ms")
        self.load_status.setText(f"RTF {status.realtime_factor:.2f} · headroom {100 * status.headroom:.0f} %")
        self.ahead_status.setText(f"separated ahead {status.seconds_ahead:.1f} s" if deck else "")
        self.xrun_status.setText(f"xruns {status.xruns} · late {status.late_windows}")
        if self.midi is not None:
            self.midi_status.setText("MIDI " + (", ".join(self.midi.input_names) or "disconnected"))
            if self.midi.events and self.midi.events[-1] != getattr(self, "_last_midi_event", None):
                self._last_midi_event = self.midi.events[-1]
                self.statusBar().showMessage(f"MIDI: {self._last_midi_event}", 5000)
        problem = status.stream_error or status.worker_error
        if problem and problem != self._reported_stream_error:
            self._reported_stream_error = problem
            self.show_error(f"{problem}; pick an output device and press play to go on")

    @staticmethod
    def _sync(button: QPushButton, on: bool) -> None:
        if button.isChecked() != on:
            button.blockSignals(True)
            button.setChecked(on)
            button.blockSignals(False)

    # -- settings -----------------------------------------------------------------------------------

    def _recent(self) -> list[str]:
        value = self.settings.value("recent", [])
        return [value] if isinstance(value, str) else list(value or [])

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for path in self._recent():
            self.recent_menu.addAction(Path(path).name, lambda p=path: self.open_path(p))
        self.recent_button.setEnabled(bool(self._recent()))

    def _restore_settings(self) -> None:
        geometry = self.settings.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 720)
        self._fill_recent()
        for box, key in ((self.output_box, "output_device"), (self.input_box, "input_device")):
            saved = self.settings.value(key)
            if saved and box.findText(saved) >= 0:
                box.setCurrentText(saved)

    def save_settings(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("output_device", self.output_box.currentText())
        self.settings.setValue("input_device", self.input_box.currentText())
        for strip in self.strips:
            self.settings.setValue(f"colours/{strip.name}", strip.colour.name())
        self.settings.sync()

    def closeEvent(self, event) -> None:
        self.timer.stop()
        self.save_settings()
        super().closeEvent(event)
