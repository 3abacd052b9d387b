"""File → Separate a folder in the background: the library queue runs as a child process at
nice 10, stopped while the deck plays and continued when it stops (issue 16)."""

import os

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from stemdeck.gui.library_dialog import BACKGROUND_NICENESS, LibraryDialog


def proc_stat(pid):
    """(state, nice) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return fields[0], int(fields[16])


@pytest.mark.slow
def test_the_background_separation_waits_for_the_deck_and_runs_at_low_priority(qtbot, tmp_path):
    lib, out = tmp_path / "lib", tmp_path / "stems"
    lib.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        sf.write(str(lib / f"s{index}.wav"), 0.1 * rng.standard_normal((30 * 44100, 2)), 44100, subtype="FLOAT")
    busy = [True]
    dialog = LibraryDialog(deck_busy=lambda: busy[0], model=lambda: "passthrough")
    qtbot.addWidget(dialog)
    dialog.folder_edit.setText(str(lib))
    dialog.out_edit.setText(str(out))
    dialog.format_box.setCurrentText("flac")
    dialog.start()
    qtbot.waitUntil(lambda: dialog.job.paused, timeout=5000)
    pid = int(dialog.job.process.processId())
    qtbot.wait(1500)
    assert proc_stat(pid)[0] == "T" and dialog.status.text() == "Paused: a deck is playing"
    assert not out.exists()  # stopped before it did anything

    busy[0] = False  # the deck stopped
    niceness = []

    def reniced():
        if dialog.job.running:
            niceness.append(proc_stat(pid)[1])
        return not dialog.job.running or niceness[-1] == BACKGROUND_NICENESS

    qtbot.waitUntil(reniced, timeout=120_000)
    assert niceness and niceness[-1] == BACKGROUND_NICENESS
    qtbot.waitUntil(lambda: not dialog.job.running, timeout=180_000)
    assert dialog.status.text() == "Finished: separated 2 of 2 file(s); 0 skipped"
    assert dialog.last_line.text() == ""  # the summary was said twice, on two lines
    assert sorted(p.name for p in (out / "s1").iterdir()) == ["bass.flac", "drums.flac", "other.flac", "vocals.flac"]
    dialog.shutdown()


def test_the_file_menu_opens_one_dialog_that_follows_the_deck(qtbot, tmp_path):
    from PyQt6.QtCore import QSettings
    from test_gui import make_window

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = make_window(qtbot, settings)  # its deck is playing
    try:
        file_menu = window.menuBar().actions()[0].menu()
        action = next(a for a in file_menu.actions() if a.text() == "Separate a folder in the background…")
        action.trigger()
        dialog = window.library_dialog
        assert dialog.isVisible() and dialog.deck_busy() is True
        # the mixer's model, not the command's default (htdemucs where it is cached)
        assert window.session.model_name and dialog.model() == window.session.model_name
        window.session.engine.pause()
        assert dialog.deck_busy() is False
        action.trigger()
        assert window.library_dialog is dialog  # one dialog, shown again
    finally:
        window.close()
        window.session.close()
