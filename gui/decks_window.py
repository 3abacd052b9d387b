"""The two-deck window (``stemdeck gui A.flac B.flac``): deck A and deck B side by side, the DJ
mixer between them (crossfader with its curve, cue/master mix, master meter).

Each deck panel reuses the one-deck window's widgets (waveform overview, transport row, stem
strips) and talks to its deck's :class:`Engine` through :class:`DecksSession`'s
:class:`~engine.decks.Decks`; the mixer talks to the decks. A 30 fps timer reads
``decks.status()`` and updates the views only where something changed.

Keys (window-wide; no widget takes the keyboard): Space / Enter play-pause deck A / B;
1-6 mute deck A's stems, Q W E R T Y deck B's; Left / Right move the crossfader a tenth
towards A / B; Ctrl+O opens a file into deck A, Ctrl+Shift+O into deck B.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from PyQt6.QtCore import QKeyCombination, QSettings, Qt, QTimer
from PyQt6.QtGui import QColor, QKeySequence, QShortcut
from PyQt6.QtWidgets import (
    QComboBox,
    QDial,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from stemdeck.engine.audio.decks_mix import CURVES
from stemdeck.gui.decks_session import DecksSession
from stemdeck.gui.main_window import (
    DIGIT_KEYS,
    MODEL_CHOICES,
    OPEN_FILTER,
    PAUSE_TEXT,
    PLAY_TEXT,
    REFRESH_MS,
    SHIFTED_DIGIT_KEYS,
    _at_end,
    _clock,
    _remaining,
    _rewind_if_ended,
    _stretcher_installed,
    master_panel,
    take_said,
)
from stemdeck.gui.theme import stem_colour
from stemdeck.gui.transport import TransportRow
from stemdeck.gui.widgets import (
    DbFader,
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

DECK_NAMES = ("A", "B")
DECK_B_MUTE_KEYS = [Qt.Key.Key_Q, Qt.Key.Key_W, Qt.Key.Key_E, Qt.Key.Key_R, Qt.Key.Key_T, Qt.Key.Key_Y]
MUTE_KEY_NAMES = ("123456", "QWERTY")
PLAY_KEYS = (Qt.Key.Key_Space, Qt.Key.Key_Return)
PLAY_KEY_NAMES = ("Space", "Enter")
BUSY_LABEL_PX = 360
CROSSFADER_STEPS = 100
CROSSFADER_KEY_STEP = 10  # a tenth of the way per key press
CUE_MIX_STEPS = 100


def _no_focus(widget: QWidget) -> QWidget:
    widget.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the window's shortcuts always work
    return widget


def _show_checked(button: QPushButton, on: bool) -> None:
    if button.isChecked() != bool(on):
        button.blockSignals(True)
        button.setChecked(bool(on))
        button.blockSignals(False)


class DeckPanel(QFrame):
    """One deck: track, transport, tempo and sync, headphone cue, channel fader, stem strips."""

    def __init__(self, window: DecksWindow, index: int):
        super().__init__()
        self.window, self.index, self.name = window, index, DECK_NAMES[index]
        self.strips: list[StemStrip] = []
        self.setObjectName("panel")
        layout = QVBoxLayout(self)
        layout.addLayout(self._build_header())
        self.overview = WaveformOverview()
        self.overview.seek_requested.connect(lambda s: self._call("seek", s))
        layout.addWidget(self.overview)
        self.transport = TransportRow(compact=True)
        self.transport.record_button.hide()  # two decks record the master, not a deck
        self._connect_transport(self.transport)
        layout.addWidget(self.transport)
        body = QHBoxLayout()
        self.strip_row = QHBoxLayout()
        body.addLayout(self.strip_row, 1)
        body.addLayout(self._build_channel())
        layout.addLayout(body, 1)

    def _build_header(self) -> QVBoxLayout:
        """Title, track and times above the deck's buttons: two rows, so two decks and the mixer
        fit a 1366-pixel laptop screen."""
        rows = QVBoxLayout()
        title_row, row = QHBoxLayout(), QHBoxLayout()
        rows.addLayout(title_row)
        rows.addLayout(row)
        title = QLabel(f"Deck {self.name}")
        title.setObjectName("stemName")
        title_row.addWidget(title)
        keys = PLAY_KEY_NAMES[self.index]
        self.open_button = self._push("Open…", f"Load a track into deck {self.name}")
        self.open_button.clicked.connect(lambda: self.window.open_dialog(self.index))
        self.play_button = SteadyButton((PLAY_TEXT, PAUSE_TEXT), f"Play / pause deck {self.name} ({keys})")
        self.play_button.clicked.connect(lambda: self.window.toggle_play(self.index))
        self.cue_button = self._push("Cue", "While playing: back to the cue point and pause; paused: set it here")
        self.cue_button.clicked.connect(lambda: self._call("cue"))
        self.sync_button = self._push("Sync", "Match the other deck's tempo and beats")
        self.sync_button.clicked.connect(lambda: self.window.sync(self.index))
        self.headphone_button = self._push("Phones", f"Deck {self.name} in the headphones (the cue output)")
        self.headphone_button.setCheckable(True)
        self.headphone_button.setMinimumWidth(self.headphone_button.sizeHint().width() + 8)  # bold when on
        self.headphone_button.toggled.connect(lambda on: self.window.decks.set_cue(self.index, on))
        for widget in (self.open_button, self.play_button, self.cue_button, self.sync_button, self.headphone_button):
            row.addWidget(widget)
        row.addStretch(1)
        self.track_label = ElidedLabel("no track")  # a long name is elided, never widens the window
        title_row.addWidget(self.track_label, 1)
        self.elapsed_label, self.remaining_label = QLabel("0:00.0"), QLabel("−0:00.0")
        for label in (self.elapsed_label, self.remaining_label):
            label.setObjectName("time")
            title_row.addWidget(label)
        return rows

    def _build_channel(self) -> QVBoxLayout:
        """The channel fader (into the crossfader) with the deck's meter after it."""
        column = QVBoxLayout()
        label = QLabel("Channel")
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        column.addWidget(label)
        faders = QHBoxLayout()
        self.volume = _no_focus(DbFader())
        self.volume.setToolTip(f"Deck {self.name}'s channel fader in dB (double-click: 0 dB)")
        self.volume.changed_db.connect(lambda db: self.window.decks.set_volume_db(self.index, db))
        self.meter = LevelMeter(QColor("#e8eaed"))
        faders.addWidget(self.volume)
        faders.addWidget(self.meter)
        column.addLayout(faders, 1)
        return column

    def _connect_transport(self, row: TransportRow) -> None:
        row.loop_in.connect(lambda: self._call("loop_in"))
        row.loop_out.connect(lambda: self._call("loop_out"))
        row.loop_toggled.connect(lambda: self._call("toggle_loop"))
        row.halve.connect(lambda: self._call("halve_loop"))
        row.double.connect(lambda: self._call("double_loop"))
        row.loop_beats.connect(lambda beats: self._call("loop_beats", beats))
        row.snap_toggled.connect(lambda on: setattr(self.engine, "snap_to_beats", on) if self.engine else None)
        row.count_in_toggled.connect(lambda on: self._call("set_count_in", 4 if on else 0))
        row.hot_cue.connect(lambda n: self._call("hot_cue", n))
        row.tempo_changed.connect(lambda ratio: self._call("set_tempo", ratio))
        row.key_step.connect(lambda step: self._call("set_key", max(-12, min(12, round(self.engine.key) + step))))

    def _push(self, text: str, tip: str) -> QPushButton:
        button = QPushButton(text)
        button.setToolTip(tip)
        return _no_focus(button)

    @property
    def engine(self):
        decks = self.window.decks
        return None if decks is None else decks.deck(self.index)

    def _call(self, method: str, *args) -> None:
        """A control on this deck's engine; what it refuses is said in the status bar."""
        if self.engine is None:
            return
        try:
            getattr(self.engine, method)(*args)
        except ValueError as exc:
            self.window.show_message(f"deck {self.name}: {exc}")

    def build_strips(self, sources: tuple[str, ...]) -> None:
        """The deck's stem strips, made anew for a model (its stems may differ)."""
        for strip in self.strips:
            self.strip_row.removeWidget(strip)
            strip.deleteLater()
        self.strips.clear()
        keys = MUTE_KEY_NAMES[self.index]
        for index, name in enumerate(sources):
            strip = StemStrip(index, name, stem_colour(name, index))
            strip.mute.setToolTip(f"Mute deck {self.name}'s {name}" + (f" ({keys[index]})" if index < 6 else ""))
            strip.solo.setToolTip(f"Solo deck {self.name}'s {name}" + (f" (Shift+{keys[index]})" if index < 6 else ""))
            strip.mute.toggled.connect(lambda on, i=index: self._call("set_mute", i, on))
            strip.solo.toggled.connect(lambda on, i=index: self._call("set_solo", i, on))
            strip.fader.changed_db.connect(lambda db, i=index: self._call("set_gain", i, db))
            for widget in (strip.mute, strip.solo, strip.fader):
                _no_focus(widget)
            self.strips.append(strip)
            self.strip_row.addWidget(strip)

    def show_track(self, track) -> None:
        self.overview.set_track(track.peaks, track.seconds)
        self.track_label.setText(track.name)
        self.track_label.setToolTip(str(track.path or track.name))
        for strip in self.strips:
            strip.reset_views()
        self.meter.reset()

    def refresh(self, decks, status, decks_status, elapsed_s: float) -> None:
        """Show the deck's state (set here, by MIDI or by a key) without sending it back; from the
        ``decks`` the window's refresh read once (a model switch replaces the session's meanwhile)."""
        engine = decks.deck(self.index)
        mixer = engine.mixer()
        playing = status.playing
        if playing and _at_end(engine):
            engine.pause()  # the end of the track: stopped, ready to play it again
            playing = False
        rms, peak = status.rms, status.peak
        if not playing:  # a paused deck is silent, whatever was last measured
            rms = peak = (0.0,) * len(rms)
        for index, strip in enumerate(self.strips[: len(rms) - 1]):
            strip.meter.set_levels(rms[index], peak[index], elapsed_s)
            strip.activity.push(peak[index])
            _show_checked(strip.mute, mixer.mute[index])
            _show_checked(strip.solo, mixer.solo[index])
            if not strip.fader.isSliderDown() and abs(strip.fader.db - mixer.gain_db[index]) > 0.05:
                if not (strip.fader.db == -math.inf and mixer.gain_db[index] <= -60):
                    strip.show_gain(mixer.gain_db[index])
        self.meter.set_levels(decks_status.rms[self.index], decks_status.peak[self.index], elapsed_s)
        self.play_button.setText(PAUSE_TEXT if playing else PLAY_TEXT)
        _show_checked(self.headphone_button, decks_status.cue[self.index])
        volume_db = decks_status.volume_db[self.index]
        if not self.volume.isSliderDown() and abs(self.volume.db - volume_db) > 0.05:
            if not (self.volume.db == -math.inf and volume_db <= -60):
                self.volume.blockSignals(True)
                self.volume.set_db(volume_db)
                self.volume.blockSignals(False)
        stretch = _stretcher_installed()
        self.transport.sync(mixer, engine.bpm, engine.tempo if stretch else None, engine.key if stretch else None)
        self.sync_button.setEnabled(stretch and engine.bpm is not None)
        track = self.window.session.tracks[self.index]
        if track is not None:
            self.overview.set_position(status.position_s, max(0.0, status.seconds_ahead))
            self.overview.set_marks(engine.hot_cues, (status.loop_in_s, status.loop_out_s, status.looping))
            self.elapsed_label.setText(_clock(status.position_s))
            self.remaining_label.setText(_remaining(track.seconds - status.position_s))


def _separation_figures(status) -> str:
    """A deck's RTF and head start, as the one-deck window's status bar says them."""
    rtf = status.realtime_factor  # none measured: nothing separated yet (stems from the cache)
    ahead_s = status.seconds_ahead
    ahead = f"ahead {ahead_s:.1f} s" if ahead_s >= 0 else f"behind {-ahead_s:.1f} s"
    return f"RTF {rtf:.2f} · {ahead}" if rtf > 0 else f"RTF — · {ahead}"


class DecksWindow(QMainWindow):
    """Deck A | mixer | deck B."""

    def __init__(self, session: DecksSession, settings: QSettings | None = None):
        super().__init__()
        self.session = session
        self.settings = settings or QSettings("stemdeck", "stemdeck")
        self.errors: list[str] = []
        self._last_tick = time.perf_counter()
        self._reported_error: str | None = None
        self.setWindowTitle("stemdeck — two decks")
        central = QWidget()
        row = QHBoxLayout(central)
        self.panels = (DeckPanel(self, 0), DeckPanel(self, 1))
        row.addWidget(self.panels[0], 1)
        row.addWidget(self._build_mixer())
        row.addWidget(self.panels[1], 1)
        self.setCentralWidget(central)
        self.busy_label = ElidedLabel("")  # "opening <a long name>…" must not widen the window
        self.busy_label.setFixedWidth(BUSY_LABEL_PX)  # and leaves the bar's messages their room
        self.statusBar().addPermanentWidget(self.busy_label)
        self._build_figures()
        self._build_shortcuts()
        session.busy.connect(self.busy_label.setText)
        session.busy.connect(lambda text: text or self._show_model(session.model_name))  # a model that failed: back
        session.failed.connect(self.show_error)
        session.decks_ready.connect(self._on_decks_ready)
        session.deck_ready.connect(lambda index, track: self.panels[index].show_track(track))
        session.output_opened.connect(self._show_cue_output)
        fit_to_screen(self, 1900, 900, session.config.headless)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.refresh)
        self.timer.start(REFRESH_MS)

    @property
    def decks(self):
        return self.session.decks

    def _build_mixer(self) -> QFrame:
        mixer, layout, self.master_meter = master_panel()
        layout.addWidget(QLabel("Model"))
        self.model_box = _no_focus(QComboBox())
        self.model_box.addItems(MODEL_CHOICES)
        self._show_model(self.session.config.model)
        self.model_box.setToolTip("Separation model of both decks (pause them to switch; their tracks stay loaded)")
        self.model_box.activated.connect(lambda _: self.session.choose_model(self.model_box.currentText()))
        layout.addWidget(self.model_box)
        layout.addWidget(QLabel("Cue ◀ mix ▶ Master"))
        self.cue_mix = _no_focus(QDial())
        self.cue_mix.setRange(0, CUE_MIX_STEPS)
        self.cue_mix.setValue(CUE_MIX_STEPS // 2)
        self.cue_mix.setNotchesVisible(True)
        self.cue_mix.setToolTip("What the headphones hear: the cued decks ... the master")
        self.cue_mix.valueChanged.connect(lambda v: self._mixer_call("set_cue_mix", v / CUE_MIX_STEPS))
        layout.addWidget(self.cue_mix, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addWidget(QLabel("Curve"))
        self.curve_box = _no_focus(QComboBox())
        self.curve_box.addItems(CURVES)
        self.curve_box.setToolTip("Crossfader curve: constant power (smooth mixes), linear, or cut (scratching)")
        self.curve_box.activated.connect(
            lambda _: self._mixer_call("set_crossfader_curve", self.curve_box.currentText())
        )
        layout.addWidget(self.curve_box)
        layout.addWidget(QLabel("A ◀ crossfader ▶ B"))
        self.crossfader = _no_focus(QSlider(Qt.Orientation.Horizontal))
        self.crossfader.setRange(0, CROSSFADER_STEPS)
        self.crossfader.setToolTip("Crossfader: deck A (left) to deck B (right); keys Left / Right")
        self.crossfader.valueChanged.connect(lambda v: self._mixer_call("set_crossfader", v / CROSSFADER_STEPS))
        layout.addWidget(self.crossfader)
        self.record_button = _no_focus(QPushButton("● Rec master"))
        self.record_button.setCheckable(True)
        self.record_button.setToolTip("Record the master (what the audience hears) to a fresh WAV file; again to stop")
        self.record_button.clicked.connect(self.toggle_recording)
        layout.addWidget(self.record_button)
        self.cue_output_label = QLabel("")
        self.cue_output_label.setWordWrap(True)
        layout.addWidget(self.cue_output_label)
        layout.addWidget(QLabel("Output"))
        self.output_box = DeviceBox(
            lambda rescan: device_labels(self.session.config.headless, rescan)[1],
            "Output device for both decks: the master on its first pair, the cue on its second",
        )
        self._show_output_choice(self.session.config.output_device)
        self.output_box.activated.connect(self._output_chosen)
        layout.addWidget(self.output_box)
        mixer.setFixedWidth(190)
        return mixer

    def toggle_recording(self) -> None:
        """The master to a fresh take in the recordings folder, or the take finished."""
        decks = self.decks
        if decks is None:
            self.show_error("cannot record: no decks yet; wait for the model to load")
            return
        try:
            take = decks.toggle_recording()
        except (ValueError, OSError) as exc:
            self.show_error(f"cannot record: {exc}")
            return
        if take is None:
            self.show_message(f"recording the master to {decks.recorder.path}")
            return
        self.show_message(take_said(take, decks.samplerate))

    def _build_shortcuts(self) -> None:
        for index, key in enumerate(PLAY_KEYS):
            self._shortcut(key, lambda i=index: self.toggle_play(i))
        shift = Qt.KeyboardModifier.ShiftModifier
        for deck, keys in enumerate((DIGIT_KEYS, DECK_B_MUTE_KEYS)):
            for stem, key in enumerate(keys):
                self._shortcut(key, lambda d=deck, s=stem: self.toggle_mute(d, s))
                # with Shift, the solo (it did nothing); a digit may also arrive as its layout's
                # symbol (as in the one-deck window), a letter as itself with Shift held
                symbol = [QKeyCombination(shift, SHIFTED_DIGIT_KEYS[stem]), QKeyCombination(SHIFTED_DIGIT_KEYS[stem])]
                for combination in [QKeyCombination(shift, key), *(symbol if deck == 0 else [])]:
                    self._shortcut(
                        QKeySequence(combination), lambda d=deck, s=stem: self.toggle_solo(d, s), same_as_ambiguous=True
                    )
        self._shortcut(Qt.Key.Key_Left, lambda: self.nudge_crossfader(-CROSSFADER_KEY_STEP), repeat=True)
        self._shortcut(Qt.Key.Key_Right, lambda: self.nudge_crossfader(CROSSFADER_KEY_STEP), repeat=True)
        self._shortcut(QKeySequence("Ctrl+O"), lambda: self.open_dialog(0))
        self._shortcut(QKeySequence("Ctrl+Shift+O"), lambda: self.open_dialog(1))
        self._shortcut(QKeySequence("Ctrl+Q"), self.close)

    def _shortcut(self, keys, slot, repeat: bool = False, same_as_ambiguous: bool = False) -> None:
        shortcut = QShortcut(QKeySequence(keys), self)
        shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
        shortcut.setAutoRepeat(repeat)
        shortcut.activated.connect(slot)
        if same_as_ambiguous:  # Qt delivers an ambiguous key press to one of them only
            shortcut.activatedAmbiguously.connect(slot)

    # -- commands -----------------------------------------------------------------------------------

    def _mixer_call(self, method: str, *args) -> None:
        if self.decks is not None:
            getattr(self.decks, method)(*args)

    def toggle_play(self, index: int) -> None:
        if self.decks is not None and self.session.tracks[index] is not None:
            engine = self.decks.deck(index)
            _rewind_if_ended(engine)  # play at the end starts the track again, as a player does
            engine.toggle_play()

    def toggle_mute(self, deck: int, stem: int) -> None:
        strips = self.panels[deck].strips
        if stem < len(strips):
            strips[stem].mute.toggle()

    def toggle_solo(self, deck: int, stem: int) -> None:
        strips = self.panels[deck].strips
        if stem < len(strips):
            strips[stem].solo.toggle()

    def nudge_crossfader(self, steps: int) -> None:
        self.crossfader.setValue(self.crossfader.value() + steps)

    def sync(self, index: int) -> None:
        try:
            self._mixer_call("sync", index)
        except ValueError as exc:
            self.show_message(str(exc))

    def open_dialog(self, index: int) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, f"Load into deck {DECK_NAMES[index]}", str(Path.home()), OPEN_FILTER
        )
        if path:
            self.load(index, path)

    def load(self, index: int, path: str | Path) -> bool:
        """Into a deck that is not playing at once; into the playing deck only after asking (it is
        paused, then loaded). The other deck is never touched. False: the user kept the track."""
        decks = self.decks
        if decks is not None and decks.playing(index):
            name = DECK_NAMES[index]
            answer = QMessageBox.question(
                self,
                f"Deck {name} is playing",
                f"Deck {name} is playing. Stop it and load {Path(path).name}?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No,
            )
            if answer != QMessageBox.StandardButton.Yes:
                return False
            decks.deck(index).pause()
        self.session.open_file(index, path)
        return True

    def show_message(self, text: str) -> None:
        self.statusBar().showMessage(text, 5000)

    def show_error(self, message: str) -> None:
        self.errors.append(message)
        self.statusBar().showMessage(message, 15000)

    def _on_decks_ready(self, sources: tuple) -> None:
        for panel in self.panels:
            panel.build_strips(sources)
        self._show_model(self.session.model_name)
        self.curve_box.setCurrentText(self.decks.crossfader_curve)
        self.crossfader.setValue(round(self.decks.crossfader * CROSSFADER_STEPS))
        self.cue_mix.setValue(round(self.decks.cue_mix * CUE_MIX_STEPS))
        self._show_cue_output()

    def _show_cue_output(self) -> None:
        decks = self.decks
        lacking = decks is not None and decks.output_open and not decks.cue_output
        self.cue_output_label.setText("no cue output (use JACK, or a 4-channel device)" if lacking else "")

    def _show_model(self, name: str | None) -> None:
        if name and self.model_box.findText(name) < 0:
            self.model_box.addItem(name)  # a checkpoint file given by path
        if name:
            self.model_box.setCurrentText(name)

    def _output_chosen(self) -> None:
        self.session.set_output(device_choice(self.output_box.currentText()))

    def _show_output_choice(self, device: str | None) -> None:
        """The picker on the device the decks open (``--output``'s, given by name or part of it)."""
        labels = [self.output_box.itemText(index) for index in range(self.output_box.count())]
        named = [label for label in labels[1:] if device and device.lower() in label.lower()]
        self.output_box.setCurrentText(named[0] if named else "default")

    # -- the 30 fps refresh -------------------------------------------------------------------------

    def refresh(self) -> None:
        now = time.perf_counter()
        elapsed_s, self._last_tick = now - self._last_tick, now
        decks = self.decks
        if decks is None:
            return
        status = decks.status()
        for panel, deck_status in zip(self.panels, status.decks, strict=True):
            panel.refresh(decks, deck_status, status, elapsed_s)
        self.master_meter.set_levels(status.rms[2], status.peak[2], elapsed_s)
        if not self.crossfader.isSliderDown() and self.crossfader.value() != round(
            status.crossfader * CROSSFADER_STEPS
        ):
            self.crossfader.blockSignals(True)  # moved by MIDI
            self.crossfader.setValue(round(status.crossfader * CROSSFADER_STEPS))
            self.crossfader.blockSignals(False)
        self._refresh_figures(decks, status)
        _show_checked(self.record_button, decks.recorder.recording)
        if status.stream_error and status.stream_error != self._reported_error:
            self._reported_error = status.stream_error
            self.show_error(status.stream_error)

    def _build_figures(self) -> None:
        """The figures the one-deck window shows, for the output and each deck."""
        self.latency_status = QLabel("")
        self.latency_status.setToolTip("From a deck's playhead to the speaker: one block and the output's own")
        self.deck_status = (QLabel(""), QLabel(""))
        for name, label in zip(DECK_NAMES, self.deck_status, strict=True):
            label.setToolTip(
                f"Deck {name}: the model's time per hop of audio (RTF, below 1 keeps up) and how far "
                "separation has got ahead of the playhead"
            )
        self.xrun_status = QLabel("")
        self.xrun_status.setToolTip(
            "xruns: audio blocks the sound system missed; late: windows the model did not finish in "
            "time on deck A and B (the dry track played instead)"
        )
        for label in (self.latency_status, *self.deck_status, self.xrun_status):
            self.statusBar().addPermanentWidget(label)

    def _refresh_figures(self, decks, status) -> None:
        open_ = decks.output_open
        latency_ms = 1000 * status.latency_frames / decks.samplerate
        self.latency_status.setText(f"latency {latency_ms:.0f} ms" if open_ else "")
        loaded = self.session.tracks
        for name, label, deck, track in zip(DECK_NAMES, self.deck_status, status.decks, loaded, strict=True):
            label.setText("" if track is None else f"{name}: {_separation_figures(deck)}")
        late = " / ".join(str(deck.late_windows) for deck in status.decks)
        self.xrun_status.setText(f"xruns {max(deck.xruns for deck in status.decks)} · late {late}" if open_ else "")
        for label in (self.latency_status, *self.deck_status, self.xrun_status):
            label.setMinimumWidth(max(label.minimumWidth(), label.sizeHint().width()))  # grows, never jitters

    def closeEvent(self, event) -> None:
        self.timer.stop()
        super().closeEvent(event)
