"""File → Separate a folder in the background: the library queue (``stemdeck separate DIR -r``)
as a child process at low priority, paused while the deck plays.

The separation runs in its own process (``--nice 10``: the audio path and the GUI go first when
the CPU is short) and is stopped (SIGSTOP) whenever ``deck_busy()`` says a deck is playing, then
continued (SIGCONT): a playing deck never shares the cores with it. What it has finished stays
finished (its manifest), so closing the window or quitting midway loses at most the file in
flight; the next run over the same folder resumes.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from PyQt6.QtCore import QProcess, QTimer
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QGridLayout,
    QLabel,
    QLineEdit,
    QPushButton,
)

from stemdeck.gui.widgets import ElidedLabel

BACKGROUND_NICENESS = 10
POLL_MS = 250


def separate_command(folder: Path, out: Path, fmt: str, model: str | None = None) -> list[str]:
    """The command the dialog runs: the library queue over ``folder``, low priority."""
    return [*_separate(folder, out, fmt), *(["--model", model] if model else [])]


def _separate(folder: Path, out: Path, fmt: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stemdeck",
        "separate",
        str(folder),
        "-r",
        "-o",
        str(out),
        "--format",
        fmt,
        "--nice",
        str(BACKGROUND_NICENESS),
    ]


class BackgroundSeparation:
    """The child process, paused and continued on request; its stderr read line by line."""

    def __init__(self, parent, on_line: Callable[[str], None], on_finished: Callable[[int], None]):
        self.process = QProcess(parent)  # destroyed (and the child killed) with the window
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(lambda code, _status: on_finished(code))
        self.on_line, self.paused = on_line, False
        self._partial = ""

    def start(self, command: list[str]) -> None:
        self.process.start(command[0], command[1:])

    @property
    def running(self) -> bool:
        return self.process.state() != QProcess.ProcessState.NotRunning

    def pause(self, paused: bool) -> None:
        """Stop or continue the child (and nothing else: it runs its files in-process)."""
        pid = int(self.process.processId())
        if paused != self.paused and self.running and pid > 0:
            os.kill(pid, signal.SIGSTOP if paused else signal.SIGCONT)
            self.paused = paused

    def stop(self) -> None:
        if self.running:
            self.pause(False)
            self.process.terminate()  # SIGTERM: the file in flight leaves only hidden temporaries
            self.process.waitForFinished(5000)

    def _read(self) -> None:
        text = self._partial + bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        *lines, self._partial = text.replace("\r", "\n").split("\n")
        for line in lines:
            if line.strip():
                self.on_line(line.strip())


class LibraryDialog(QDialog):
    """Pick a folder and where its stems go; start; watch; the deck pauses it while it plays."""

    def __init__(
        self,
        parent=None,
        deck_busy: Callable[[], bool] = lambda: False,
        model: Callable[[], str | None] = lambda: None,
    ):
        super().__init__(parent)
        self.model = model  # the mixer's model when Start is pressed (None: the command's default)
        self.setWindowTitle("Separate a folder in the background")
        self.deck_busy = deck_busy
        self.folder_edit, self.out_edit = QLineEdit(), QLineEdit()
        self.format_box = QComboBox()
        self.format_box.addItems(["stem", "flac", "wav"])
        self.format_box.setToolTip("stem: one .stem.mp4 per track, for Traktor and Mixxx")
        self.pause_with_deck = QCheckBox("Pause while a deck plays")
        self.pause_with_deck.setChecked(True)
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.status = QLabel("Choose a folder")
        self.last_line = ElidedLabel("")  # a long line (a path) must not widen the dialog
        self.done_files = 0
        self.job = BackgroundSeparation(self, self._line, self._finished)
        self._layout()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.follow_deck)
        self.timer.start(POLL_MS)

    def _layout(self) -> None:
        grid = QGridLayout(self)
        for row, (label, edit) in enumerate((("Folder", self.folder_edit), ("Stems to", self.out_edit))):
            browse = QPushButton("…")
            browse.clicked.connect(lambda _=False, e=edit: self._browse(e))
            grid.addWidget(QLabel(label), row, 0)
            grid.addWidget(edit, row, 1)
            grid.addWidget(browse, row, 2)
        grid.addWidget(QLabel("Format"), 2, 0)
        grid.addWidget(self.format_box, 2, 1)
        grid.addWidget(self.pause_with_deck, 3, 1)
        grid.addWidget(self.start_button, 4, 1)
        grid.addWidget(self.status, 5, 0, 1, 3)
        grid.addWidget(self.last_line, 6, 0, 1, 3)

    def _browse(self, edit: QLineEdit) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder", edit.text() or str(Path.home()))
        if folder:
            edit.setText(folder)
            if edit is self.folder_edit and not self.out_edit.text():
                self.out_edit.setText(str(Path(folder).parent / f"{Path(folder).name} stems"))

    def start(self) -> None:
        folder, out = Path(self.folder_edit.text()), Path(self.out_edit.text())
        if not folder.is_dir() or not self.out_edit.text():
            self.status.setText("Choose a folder to separate and one for the stems")
            return
        self.done_files = 0
        self.start_button.setEnabled(False)
        self.status.setText("Separating…")
        self.job.start(separate_command(folder, out, self.format_box.currentText(), self.model()))

    def follow_deck(self) -> None:
        """Pause the separation while a deck plays (if asked), continue it when the deck stops."""
        paused = self.pause_with_deck.isChecked() and bool(self.deck_busy())
        if self.job.running and paused != self.job.paused:
            self.job.pause(paused)
            self.status.setText("Paused: a deck is playing" if paused else f"Separating… {self.done_files} done")

    def _line(self, line: str) -> None:
        if " -> " in line:
            self.done_files += 1
            self.status.setText(f"Separating… {self.done_files} done")
        self.last_line.setText(line[-120:])

    def _finished(self, code: int) -> None:
        self.start_button.setEnabled(True)
        summary = self.last_line.text()
        self.status.setText(("Finished: " if code == 0 else "Finished with errors: ") + summary)
        self.last_line.setText("")  # said once, in the status

    def shutdown(self) -> None:
        """Stop the separation (closing the dialog only hides it: the separation goes on)."""
        self.timer.stop()
        self.job.stop()


def deck_playing(session) -> bool:
    """Whether the window's deck is playing: then it needs the CPU."""
    engine = session.engine
    return engine is not None and bool(engine.mixer().playing)


def show_library_dialog(window) -> LibraryDialog:
    """The window's one background-separation dialog, made on first use, shown."""
    dialog = getattr(window, "library_dialog", None)
    if dialog is None:
        dialog = window.library_dialog = LibraryDialog(
            window, deck_busy=lambda: deck_playing(window.session), model=lambda: window.session.model_name
        )
    dialog.show()
    dialog.raise_()
    return dialog
