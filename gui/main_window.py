"""The desktop mixer's window: source, a strip per stem, master, status; keyboard and MIDI learn."""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

from PyQt6.QtCore import QKeyCombination, QSettings, Qt, QTimer
from PyQt6.QtGui import QAction, QColor, QKeySequence, QShortcut
from PyQt6.QtWidgets import (
    QApplication,
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QProgressBar,
    QPushButton,
    QSlider,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from stemdeck.engine.config import PRESETS
from stemdeck.engine.stretch.stretcher import stretch_available
from stemdeck.gui.library_dialog import show_library_dialog
from stemdeck.gui.session import Session, Track
from stemdeck.gui.theme import stem_colour
from stemdeck.gui.transport import COUNT_IN_BEATS, TransportRow
from stemdeck.gui.widgets import (
    DeviceBox,
    ElidedLabel,
    LevelMeter,
    SteadyButton,
    StemStrip,
    WaveformOverview,
    device_choice,
    device_labels,
    fit_to_screen,
)

REFRESH_MS = 33  # ≈ 30 fps
SEEK_STEP_S = 5.0
MAX_STEMS = 6
MAX_RECENT = 8
DIGIT_KEYS = [getattr(Qt.Key, f"Key_{n}") for n in range(1, MAX_STEMS + 1)]
# What Shift+1..6 gives on a US layout; other layouts still send the digit with Shift held.
SHIFTED_DIGIT_KEYS = [
    Qt.Key.Key_Exclam,
    Qt.Key.Key_At,
    Qt.Key.Key_NumberSign,
    Qt.Key.Key_Dollar,
    Qt.Key.Key_Percent,
    Qt.Key.Key_AsciiCircum,
]
PRESET_NAMES = tuple(PRESETS)
# models.registry.model_names(), written out: importing the registry imports torch (3 s), which must not
# delay the window; tests/test_import_graph.py checks that the two agree.
PLAY_TEXT, PAUSE_TEXT = "▶ Play", "❚❚ Pause"
MODEL_CHOICES = ("htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "tiny", "passthrough")
LATENCY_CHOICES_S = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)  # instead of the preset
MIDI_MESSAGE_MS = 5000
NOTE_MS = 15000
STATUS_MODEL_WIDTH = 170  # px; longer model names are elided, in full in the tooltip
END_EPSILON_S = 1e-6
HOT_CUE_KEYS = [getattr(Qt.Key, f"Key_F{n}") for n in range(1, 9)]  # F1-F8; with Shift: clear


def _at_end(engine) -> bool:
    """The deck's playhead has reached the end of its track."""
    if engine._mode != "deck" or engine.track_seconds <= 0:
        return False
    return engine.status().position_s >= engine.track_seconds - END_EPSILON_S


def _rewind_if_ended(engine) -> None:
    """Play at the end of the track starts it again, as a player does."""
    if not engine.mixer().playing and _at_end(engine):
        engine.seek(0.0)


def model_note(name: str) -> str:
    """What the user should know about a stand-in model, and how to get the real one offline."""
    from stemdeck.models.registry import (  # a model is loaded: torch is in already
        BUILT_IN,
        BUNDLED,
        REGISTRY,
        cache_dir,
    )

    if name in BUILT_IN:
        return "stand-in: its stems are fixed fractions of the mix, not a separation"
    if name not in BUNDLED:
        return ""
    files = ", ".join(remote.filename for remote in REGISTRY["htdemucs"].files)
    return (
        f"bundled small model; for the official htdemucs put {files} in $STEMDECK_MODEL_DIR or {cache_dir()} "
        "(README: Getting the official weights)"
    )


def model_label(name: str) -> str:
    """The status bar's name: the built-in and bundled models say what they are."""
    from stemdeck.models.registry import BUILT_IN, BUNDLED

    return f"{name} (stand-in)" if name in BUILT_IN else f"{name} (bundled)" if name in BUNDLED else name


def _clock(seconds: float) -> str:
    tenths = max(0, round(seconds * 10))
    return f"{tenths // 600}:{tenths % 600 / 10:04.1f}"


def take_said(take, samplerate: int) -> str:
    """A finished take, for the status bar: its length, file and any frames the disk lost."""
    dropped = f"; {take.dropped_frames} frames dropped (the disk was too slow)" if take.dropped_frames else ""
    return f"recorded {take.frames / samplerate:.1f} s to {take.path}{dropped}"


def _remaining(seconds: float) -> str:
    """Time left, counting down; at the end nothing is left, and no minus sign (a space in its
    place: the clock's font is monospaced, and the elapsed time beside it moved 10 px)."""
    clock = _clock(seconds)
    return " " + clock if clock == "0:00.0" else "−" + clock


def _client(port_name: str) -> str:
    """``fakectl:pads out`` → ``fakectl``: the controller, short enough for the status bar."""
    return port_name.partition(":")[0] or port_name


OPEN_FILTER = "Audio (*.wav *.flac *.ogg *.mp3 *.aiff *.aif *.stem.mp4);;NI STEM files (*.stem.mp4);;All files (*)"


def master_panel() -> tuple[QFrame, QVBoxLayout, LevelMeter]:
    """The master panel as both windows open it: titled, its meter taking the height; each window
    adds its own controls to the layout below the meter."""
    panel = QFrame()
    panel.setObjectName("panel")
    layout = QVBoxLayout(panel)
    title = QLabel("Master")
    title.setObjectName("stemName")
    title.setAlignment(Qt.AlignmentFlag.AlignCenter)
    layout.addWidget(title)
    meter = LevelMeter(QColor("#e8eaed"))
    layout.addWidget(meter, 1, Qt.AlignmentFlag.AlignHCenter)
    return panel, layout, meter


class EngineControls:
    """The current engine's control API, whichever engine that is (MIDI outlives model switches)."""

    def __init__(self, session: Session):
        self._session = session

    @property
    def sources(self) -> tuple[str, ...]:
        engine = self._session.engine
        return engine.sources if engine is not None else ()

    def toggle_play(self) -> None:
        engine = self._engine()
        _rewind_if_ended(engine)
        engine.toggle_play()

    def _engine(self):
        engine = self._session.engine
        if engine is None:
            raise ValueError("no model is loaded yet")
        return engine

    def __getattr__(self, name):
        return getattr(self._engine(), name)


@functools.cache
def _stretcher_installed() -> bool:
    """Tempo and key's stretcher is an optional extra; asked once, not on every refresh."""
    return stretch_available()


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
        self._last_midi_event: str | None = None
        self.setWindowTitle("stemdeck")
        self.setAcceptDrops(True)  # the minimum size is the layout's: nothing overlaps at it
        self._build()
        self._build_shortcuts()
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
        self._build_banner(central)
        self._build_status_bar()
        self._build_menu()

    def _build_top_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(QLabel("Model"))
        self.model_box = self._combo(MODEL_CHOICES, "Separation model (switching keeps the app responsive)")
        self.model_box.activated.connect(lambda _: self.choose_model(self.model_box.currentText()))
        row.addWidget(self.model_box)
        row.addWidget(QLabel("Preset"))
        self.preset_box = self._combo(PRESET_NAMES, "quality: most context, most latency; low-latency: least")
        self.preset_box.activated.connect(self._preset_chosen)
        row.addWidget(self.preset_box)
        # A list, not a text box: nothing on the main view takes the keyboard from the shortcuts.
        self.latency_box = self._combo(
            ["preset"] + [f"{s:g} s" for s in LATENCY_CHOICES_S],
            "Target latency instead of the preset ('preset': use the preset)",
        )
        self.latency_box.activated.connect(self._latency_chosen)
        row.addWidget(QLabel("or latency"))
        row.addWidget(self.latency_box)
        self.busy_label = ElidedLabel("")  # "loading <a long name>…" must not widen the window either
        self.busy_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)
        self.busy_bar.setMaximumWidth(160)
        self.busy_bar.hide()
        row.addWidget(self.busy_label, 1)
        row.addWidget(self.busy_bar)
        return row

    def _build_banner(self, central: QWidget) -> None:
        """Errors and notes float over the top row: showing one moves nothing under the mouse."""
        self.banner = QFrame(central)
        self.banner.setObjectName("banner")
        layout = QHBoxLayout(self.banner)
        layout.setContentsMargins(10, 4, 4, 4)
        self.banner_text = QLabel("")
        self.banner_text.setWordWrap(True)
        self.banner_text.setTextInteractionFlags(Qt.TextInteractionFlag.NoTextInteraction)
        close = QPushButton("✕")
        close.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        close.setToolTip("Dismiss")
        close.clicked.connect(self.banner.hide)
        layout.addWidget(self.banner_text, 1)
        layout.addWidget(close)
        self.banner.hide()
        self._note_timer = QTimer(self)
        self._note_timer.setSingleShot(True)
        self._note_timer.timeout.connect(self.banner.hide)

    def _place_banner(self) -> None:
        central = self.centralWidget()
        width = central.width() - 16
        height = max(self.banner.sizeHint().height(), self.banner.heightForWidth(width))
        self.banner.setGeometry(8, 4, width, height)
        self.banner.raise_()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._place_banner()

    def _build_deck(self) -> QWidget:
        deck = QWidget()
        layout = QVBoxLayout(deck)
        row = QHBoxLayout()
        self.open_button = self._push("Open…", "Open a track (Ctrl+O); or drop a file on the window")
        self.open_button.clicked.connect(self.open_dialog)
        self.recent_button = self._push("Recent", "Recently opened tracks")
        self.recent_menu = QMenu(self)
        self.recent_button.setMenu(self.recent_menu)
        self.play_button = SteadyButton((PLAY_TEXT, PAUSE_TEXT), "Play / pause (Space)")
        self.play_button.clicked.connect(self.toggle_play)
        self.track_label = ElidedLabel("no track")  # a long name is elided, never widens the window
        self.elapsed_label = QLabel("0:00.0")
        self.remaining_label = QLabel("−0:00.0")
        for label in (self.elapsed_label, self.remaining_label):
            label.setObjectName("time")
        for widget in (self.open_button, self.recent_button, self.play_button):
            row.addWidget(widget)
        row.addWidget(self.track_label, 1)
        row.addWidget(self.elapsed_label)
        row.addWidget(self.remaining_label)
        layout.addLayout(row)
        self.overview = WaveformOverview()
        self.overview.seek_requested.connect(self.seek_to)
        layout.addWidget(self.overview)
        self.transport = TransportRow()
        self._connect_transport(self.transport)
        layout.addWidget(self.transport)
        return deck

    def _connect_transport(self, row: TransportRow) -> None:
        row.loop_in.connect(lambda: self.practice("loop_in"))
        row.loop_out.connect(lambda: self.practice("loop_out"))
        row.loop_toggled.connect(lambda: self.practice("toggle_loop"))
        row.halve.connect(lambda: self.practice("halve_loop"))
        row.double.connect(lambda: self.practice("double_loop"))
        row.loop_beats.connect(lambda beats: self.practice("loop_beats", beats))
        row.snap_toggled.connect(self._snap)
        row.count_in_toggled.connect(self._count_in)
        row.hot_cue.connect(self.pad_pressed)
        row.record_toggled.connect(self.toggle_recording)
        row.tempo_changed.connect(lambda ratio: self.practice("set_tempo", ratio))
        row.key_step.connect(self.step_key)

    def _build_live(self) -> QWidget:
        live = QWidget()
        layout = QHBoxLayout(live)
        layout.addWidget(QLabel("Input"))
        self.input_box = DeviceBox(lambda rescan: self._device_names(rescan)[0], "Input device (host API in brackets)")
        layout.addWidget(self.input_box, 1)
        layout.addWidget(QLabel("Output"))
        self.live_output_box = DeviceBox(
            lambda rescan: self._device_names(rescan)[1], "Output device (host API in brackets)"
        )
        layout.addWidget(self.live_output_box, 1)
        self.live_button = self._push("Start live", "Separate the input live, latency-compensated; press again to stop")
        self.live_button.clicked.connect(self.toggle_live)
        layout.addWidget(self.live_button)
        return live

    def _build_master(self) -> QFrame:
        master, layout, self.master_meter = master_panel()
        layout.addWidget(QLabel("Stems ◀ ▶ Dry"))
        self.crossfader = QSlider(Qt.Orientation.Horizontal)
        self.crossfader.setRange(0, 100)
        self.crossfader.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.crossfader.setToolTip("Crossfade between the stems mix and the dry track (latency-aligned)")
        self.crossfader.valueChanged.connect(lambda v: self._engine_call("set_dry_mix", v / 100))
        layout.addWidget(self.crossfader)
        self.output_box = DeviceBox(lambda rescan: self._device_names(rescan)[1], "Output device for the deck")
        self.output_box.activated.connect(lambda _: self.session.set_output(self._device_choice(self.output_box)))
        layout.addWidget(QLabel("Output"))
        layout.addWidget(self.output_box)
        master.setMinimumWidth(200)
        return master

    def _build_status_bar(self) -> None:
        """Short figures, each in full; a message (MIDI learn, a scene) takes the whole bar a while."""
        bar = self.statusBar()
        self.model_status, self.latency_status, self.load_status = QLabel("no model"), QLabel(""), QLabel("")
        self.ahead_status, self.xrun_status, self.midi_status = QLabel(""), QLabel(""), QLabel("")
        self.load_status.setToolTip("Real-time factor: the model's time per hop of audio (below 1 keeps up)")
        self.ahead_status.setToolTip("How far separation has got ahead of the playhead")
        self.xrun_status.setToolTip(
            "xruns: audio blocks the sound system missed; late: windows the model "
            "did not finish in time (the dry track played instead)"
        )
        for label in (
            self.model_status,
            self.latency_status,
            self.load_status,
            self.ahead_status,
            self.xrun_status,
            self.midi_status,
        ):
            bar.addWidget(label)  # normal widgets: a temporary message hides them and gets the width
        spacer = QWidget()
        spacer.setStyleSheet("background: transparent")  # the bar's own colour, not a dark box
        bar.addWidget(spacer, 1)

    def show_message(self, text: str, timeout_ms: int = 0) -> None:
        """A line for the user across the status bar (0: until the next one)."""
        self.statusBar().showMessage(text, timeout_ms)

    def status_message(self) -> str:
        return self.statusBar().currentMessage()

    def _build_shortcuts(self) -> None:
        """Window-wide: they work whatever widget has the focus (no widget here takes text)."""
        self._shortcut(QKeySequence(Qt.Key.Key_Space), self.toggle_play)
        self._shortcut(QKeySequence(Qt.Key.Key_Left), lambda: self.seek_by(-SEEK_STEP_S), repeat=True)
        self._shortcut(QKeySequence(Qt.Key.Key_Right), lambda: self.seek_by(SEEK_STEP_S), repeat=True)
        self._shortcut(QKeySequence(Qt.Key.Key_Escape), self.cancel_learn)
        shift = Qt.KeyboardModifier.ShiftModifier
        for key, method in (
            (Qt.Key.Key_I, "loop_in"),
            (Qt.Key.Key_O, "loop_out"),
            (Qt.Key.Key_L, "toggle_loop"),
            (Qt.Key.Key_BracketLeft, "halve_loop"),
            (Qt.Key.Key_BracketRight, "double_loop"),
        ):
            self._shortcut(QKeySequence(key), lambda m=method: self.practice(m))
        self._shortcut(QKeySequence(Qt.Key.Key_R), self.toggle_recording)
        for number, key in enumerate(HOT_CUE_KEYS, 1):
            self._shortcut(QKeySequence(key), lambda n=number: self.practice("hot_cue", n))
            clear = QKeySequence(QKeyCombination(shift, key))
            self._shortcut(clear, lambda n=number: self.practice("clear_hot_cue", n))
        for index, (digit, shifted) in enumerate(zip(DIGIT_KEYS, SHIFTED_DIGIT_KEYS, strict=True)):
            self._shortcut(QKeySequence(digit), lambda i=index: self.toggle_stem(i, "mute"))
            # Shift+digit arrives as the digit or as the layout's symbol, with or without Shift; X11
            # offers one key press as several of these, which Qt calls ambiguous: all mean the same.
            for key in (QKeyCombination(shift, digit), QKeyCombination(shift, shifted), QKeyCombination(shifted)):
                self._shortcut(QKeySequence(key), lambda i=index: self.toggle_stem(i, "solo"), same_as_ambiguous=True)

    def _shortcut(self, keys: QKeySequence, slot, repeat: bool = False, same_as_ambiguous: bool = False) -> None:
        shortcut = QShortcut(keys, self)
        shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
        shortcut.setAutoRepeat(repeat)  # a held Space must not flutter play/pause
        shortcut.activated.connect(slot)
        if same_as_ambiguous:  # Qt delivers an ambiguous key press to one of them only
            shortcut.activatedAmbiguously.connect(slot)

    def _build_menu(self) -> None:
        open_action = QAction("Open…", self)
        open_action.setShortcut(QKeySequence("Ctrl+O"))
        open_action.triggered.connect(self.open_dialog)
        self.addAction(open_action)
        menu = self.menuBar().addMenu("&File")
        menu.addAction(open_action)
        library_action = menu.addAction("Separate a folder in the background…")
        library_action.triggered.connect(lambda: show_library_dialog(self))
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

    def _device_names(self, rescan: bool = False) -> tuple[list[str], list[str]]:
        return device_labels(self.session.config.headless, rescan)

    @staticmethod
    def _device_choice(box: QComboBox) -> str | None:
        return device_choice(box.currentText())

    # -- session ------------------------------------------------------------------------------------

    def _connect_session(self) -> None:
        s = self.session
        s.busy.connect(self._show_busy)
        s.failed.connect(self._session_failed)
        s.model_ready.connect(self._on_model_ready)
        s.track_ready.connect(self._on_track_ready)
        s.live_ready.connect(self._on_live_ready)
        s.live_stopped.connect(self._on_live_stopped)  # the button follows the engine at each refresh

    def choose_model(self, name: str | None, remember: bool = True) -> None:
        """The user's choice is remembered; a fallback the session makes instead is not."""
        if remember and name:
            self.settings.setValue("model", name)
        self.session.choose_model(name, self.preset_box.currentText())

    def _preset_chosen(self) -> None:
        self.session.config.latency_s = None
        self.latency_box.setCurrentIndex(0)
        self.session.choose_model(
            self.session.model_name or self.model_box.currentText(), self.preset_box.currentText()
        )

    def _latency_chosen(self) -> None:
        index = self.latency_box.currentIndex()
        latency_s = LATENCY_CHOICES_S[index - 1] if index > 0 else None
        if latency_s != self.session.config.latency_s:
            self.session.config.latency_s = latency_s
            self.session.choose_model(
                self.session.model_name or self.model_box.currentText(), self.preset_box.currentText()
            )

    def _show_busy(self, what: str) -> None:
        self.busy_label.setText(what)
        self.busy_label.setToolTip(what)
        self.busy_bar.setVisible(bool(what))

    def show_error(self, message: str) -> None:
        """Non-modal: the app keeps running and the message says what to do."""
        self.errors.append(message)
        self._show_banner(message, "banner")
        self._note_timer.stop()

    def show_note(self, message: str) -> None:
        """Something to know, not a fault: shown a while, in the banner's place."""
        if self.banner.isVisible() and self.banner.objectName() == "banner":
            return  # an error stays until dismissed
        self._show_banner(message, "note")
        self._note_timer.start(NOTE_MS)

    def _show_banner(self, message: str, role: str) -> None:
        self.banner.setObjectName(role)
        self.banner.setStyleSheet("")  # the theme's rule for the new role applies
        self.banner_text.setText(message)
        self.banner.show()
        self._place_banner()

    def _session_failed(self, message: str) -> None:
        self.show_error(message)
        if self.session.model_name:  # a model that failed to load leaves the current one playing
            self.model_box.setCurrentText(self.session.model_name)

    def _on_model_ready(self, name: str, sources: tuple) -> None:
        self.sources = tuple(sources)
        self._rebuild_strips()
        if self.model_box.findText(name) < 0:
            self.model_box.addItem(name)  # a checkpoint file given by path
        self.model_box.setCurrentText(name)
        self.preset_box.setCurrentText(self.session.config.preset)
        self.settings.setValue("preset", self.session.config.preset)
        note = model_note(name)
        label, tip = model_label(name), f"{name}: {', '.join(sources)}" + (f" — {note}" if note else "")
        network = self.session.network_description
        if network:  # --backend openvino or onnx: which, in the label; all of it in the tooltip
            label, tip = f"{label} · {network.split(' ', 1)[0]}", f"{tip}\nwindows: {network}"
        metrics = self.model_status.fontMetrics()
        self.model_status.setText(metrics.elidedText(label, Qt.TextElideMode.ElideMiddle, STATUS_MODEL_WIDTH))
        self.model_status.setToolTip(tip)
        if note and str(self.settings.value("model") or "") != name:  # not what the user picked
            self.show_note(f"{name}: {note}")

    def _on_track_ready(self, track: Track) -> None:
        self.overview.set_track(track.peaks, track.seconds)
        self.track_label.setText(track.name)
        self.track_label.setToolTip(str(getattr(track, "path", None) or track.name))
        for strip in self.strips:  # nothing of the old track's levels stays on screen
            strip.reset_views()
        self.master_meter.reset()
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
                    lambda pos, w=widget, c=control, i=index: self._midi_menu(w, pos, c, i)
                )
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
        path, _ = QFileDialog.getOpenFileName(self, "Open a track", str(self._open_folder()), OPEN_FILTER)
        if path:
            self.open_path(path)

    def _open_folder(self) -> Path:
        """Where the Open dialog starts: the loaded track's folder, else the last one opened's,
        else home (it always started at home, however deep the user's music lies)."""
        track = self.session.track
        candidates = [track.path] if track is not None and track.path is not None else []
        candidates += [Path(recent) for recent in self._recent()[:1]]
        for candidate in candidates:
            if Path(candidate).parent.is_dir():
                return Path(candidate).parent
        return Path.home()

    def open_path(self, path: str | Path) -> None:
        self.tabs.setCurrentIndex(0)
        self.session.open_file(path)

    def toggle_play(self) -> None:
        engine = self.session.engine
        if engine is None:
            return
        if engine._mode == "deck" and not engine.mixer().playing and engine.status().stream_error:
            self.session.set_output(self.session.config.output_device)  # the device or server came back
            self.banner.hide()
        EngineControls(self.session).toggle_play()

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

    def practice(self, method: str, *args) -> None:
        """A practice control (loop, hot cue, tempo...) on the engine; what it refuses (no track,
        loop out before in, beats before the tempo is known) is said in the status bar."""
        engine = self.session.engine
        if engine is None or not hasattr(engine, method):
            return
        try:
            getattr(engine, method)(*args)
        except ValueError as exc:
            self.show_message(str(exc), MIDI_MESSAGE_MS)

    def pad_pressed(self, number: int) -> None:
        """A hot cue pad: jump (or set when empty); with Shift held, clear it."""
        shift = QApplication.keyboardModifiers() & Qt.KeyboardModifier.ShiftModifier
        self.practice("clear_hot_cue" if shift else "hot_cue", number)

    def _snap(self, on: bool) -> None:
        engine = self.session.engine
        if engine is not None:
            engine.snap_to_beats = on

    def _count_in(self, on: bool) -> None:
        """The Count-in button: a bar of clicks before each restart of the loop, or none."""
        self.practice("set_count_in", COUNT_IN_BEATS if on else 0)

    def step_key(self, semitones: int) -> None:
        engine = self.session.engine
        if engine is not None and hasattr(engine, "set_key"):
            self.practice("set_key", max(-12, min(12, round(engine.key) + semitones)))

    def toggle_recording(self) -> None:
        """Record what plays to a fresh WAV file in the recordings folder, or finish the take."""
        engine = self.session.engine
        if engine is None:
            return
        try:
            take = engine.toggle_recording()
        except (ValueError, OSError) as exc:
            self.show_error(f"cannot record: {exc}")
            return
        if take is None:
            self.show_message(f"recording to {engine.recorder.path}")
            return
        self.show_message(take_said(take, engine.config.samplerate), NOTE_MS)

    def start_live(self) -> None:
        self.session.config.input_device = self._device_choice(self.input_box)
        self.session.config.output_device = self._device_choice(self.live_output_box)
        self.session.start_live()

    def toggle_live(self) -> None:
        engine = self.session.engine
        if engine is not None and engine.live_running:
            self.session.stop_live()
        else:
            self.start_live()

    def _on_live_ready(self) -> None:
        self.track_label.setText("live input")

    def _on_live_stopped(self) -> None:
        self.track_label.setText("no track")

    # -- keyboard, drops ----------------------------------------------------------------------------

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
        self.show_message(f"MIDI learn: move a control or press a pad for {target} (Esc cancels)")

    def cancel_learn(self) -> None:
        if self.midi is not None and self.midi.learning:
            self.midi.cancel_learn()
            self.show_message("MIDI learn cancelled", MIDI_MESSAGE_MS)

    # -- the 30 fps refresh -------------------------------------------------------------------------

    def refresh(self) -> None:
        now = time.perf_counter()
        elapsed_s, self._last_tick = now - self._last_tick, now
        engine = self.session.engine
        if engine is None:
            return
        if engine._mode == "deck" and engine.mixer().playing and _at_end(engine):
            engine.pause()  # the end of the track: stopped, ready to play it again
        status, mixer = engine.status(), engine.mixer()
        rms, peak = status.rms, status.peak
        if engine._mode == "deck" and not status.playing:  # a paused deck is silent, whatever was last measured
            rms = peak = (0.0,) * len(status.rms)
        for index, strip in enumerate(self.strips[: len(rms) - 1]):
            strip.meter.set_levels(rms[index], peak[index], elapsed_s)
            strip.activity.push(peak[index])
            self._sync(strip.mute, mixer.mute[index])
            self._sync(strip.solo, mixer.solo[index])
            self._sync_fader(strip, mixer.gain_db[index])
        self.master_meter.set_levels(rms[-1], peak[-1], elapsed_s)
        if not self.crossfader.isSliderDown() and self.crossfader.value() != round(100 * mixer.dry_mix):
            self.crossfader.blockSignals(True)  # moved from MIDI
            self.crossfader.setValue(round(100 * mixer.dry_mix))
            self.crossfader.blockSignals(False)
        self.play_button.setText(PAUSE_TEXT if status.playing else PLAY_TEXT)
        self.live_button.setText("Stop live" if engine.live_running else "Start live")
        stretch = hasattr(engine, "set_tempo") and _stretcher_installed()  # an optional extra (GPL)
        self.transport.sync(mixer, engine.bpm, engine.tempo if stretch else None, engine.key if stretch else None)
        if self.session.track is not None:
            seconds = self.session.track.seconds
            self.overview.set_position(status.position_s, max(0.0, status.seconds_ahead))
            self.overview.set_marks(engine.hot_cues, (status.loop_in_s, status.loop_out_s, status.looping))
            self.elapsed_label.setText(_clock(status.position_s))
            self.remaining_label.setText(_remaining(seconds - status.position_s))
        self._refresh_status_bar(engine, status)
        problem = status.stream_error or status.worker_error
        if problem and problem != self._reported_stream_error:
            self._reported_stream_error = problem
            if engine._mode == "deck":  # the button says Play again, and Play opens the output anew
                engine.pause()
                self.show_error(f"{problem}; press play to go on (or pick another output device)")
            else:
                self.show_error(f"{problem}; press Start live to go on (or pick other devices)")
        elif not problem:
            self._reported_stream_error = None  # the next loss is said again

    def _refresh_status_bar(self, engine, status) -> None:
        deck = engine._mode == "deck"
        latency = f"latency {status.latency_ms:.0f} ms" if engine._mode is not None else ""  # nothing runs: none
        self.latency_status.setText("no added delay" if deck else latency)
        self.latency_status.setToolTip(
            "the deck plays the stems on the playhead: separation runs ahead"
            if deck
            else "live input: the stems come this much after the input"
        )
        rtf = status.realtime_factor  # none measured: nothing separated yet (stems from the cache, a stem file)
        self.load_status.setText(f"RTF {rtf:.2f}" if rtf > 0 else "RTF —")
        ahead_s = status.seconds_ahead  # negative: separation is behind the playhead (it plays dry)
        self.ahead_status.setText(
            "" if not deck else f"ahead {ahead_s:.1f} s" if ahead_s >= 0 else f"behind {-ahead_s:.1f} s"
        )
        self.xrun_status.setText(f"xruns {status.xruns} · late {status.late_windows}")
        for label in (self.latency_status, self.load_status, self.ahead_status, self.xrun_status):
            label.setMinimumWidth(max(label.minimumWidth(), label.sizeHint().width()))  # grows, never jitters
        if self.midi is None:
            return
        names = self.midi.input_names
        self.midi_status.setText("MIDI " + (", ".join(_client(n) for n in names) or "disconnected"))
        self.midi_status.setToolTip(", ".join(names))
        event = self.midi.events[-1] if self.midi.events else None
        if event is not None and event is not self._last_midi_event:  # learned, a scene, a port
            self._last_midi_event = event
            self.show_message(event if event.startswith("MIDI") else f"MIDI {event}", MIDI_MESSAGE_MS)

    @staticmethod
    def _sync_fader(strip, gain_db: float) -> None:
        """Follow a gain set elsewhere (MIDI, a scene), unless the user holds the fader."""
        if strip.fader.isSliderDown() or abs(strip.fader.db - gain_db) <= 0.05:
            return
        if strip.fader.db == -math.inf and gain_db <= -60:
            return  # both below the fader's floor
        strip.show_gain(gain_db)

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
        geometry, headless = self.settings.value("geometry"), self.session.config.headless
        if geometry is not None:
            self.restoreGeometry(geometry)
            fit_to_screen(self, self.width(), self.height(), headless)  # saved on a larger screen, or too wide once
        else:
            fit_to_screen(self, 1280, 720, headless)
        self._fill_recent()
        self.preset_box.setCurrentText(self.session.config.preset)
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
