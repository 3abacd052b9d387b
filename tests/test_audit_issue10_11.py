"""Gaps the issue 10/11 audit found between an issue item and a test that asserts it.

Issue 10 item 7: `stemdeck separate` on a terminal shows a progress bar per file and one for the
batch. The bars were tested on the SeparationBars class alone; here the real command runs with
its stderr on a pseudo-terminal, as in a person's shell, and the bars must be drawn there.
Issue 10 item 6 (file modes) through the command's own writer, and item 2 on a six-stem window.
"""

import fcntl
import os
import struct
import subprocess
import termios
import threading

import pytest
from conftest import stemdeck_command, write_tone
from test_gui import SR, loader, output_ratio, tone, wait_idle  # sets the offscreen Qt platform


def _read_all(fd: int, chunks: list[bytes]) -> None:
    """Drain the terminal's master side until the child closes it (EIO on Linux)."""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            return
        if not data:
            return
        chunks.append(data)


@pytest.mark.parametrize("rows,columns", [(24, 100), (0, 0)])  # a person's terminal; `script`'s, as CI's
def test_separate_on_a_terminal_draws_a_bar_per_file_and_for_the_batch(tmp_path, rows, columns):
    """A pseudo-terminal that reports no size (0 x 0: `script`, some CI runners) made tqdm hide
    every bar (it took -1 rows and drew nothing): the bars must show there too."""
    songs = [tmp_path / "first.wav", tmp_path / "second.wav"]
    for song in songs:
        write_tone(song, seconds=1.0)
    out = tmp_path / "out"
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, chunks), daemon=True)
    reader.start()
    try:
        child = subprocess.run(
            stemdeck_command("separate", *songs, "-o", out, "--model", "passthrough"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            timeout=180,
            check=False,
        )
    finally:
        os.close(slave)
        reader.join(10)
        os.close(master)
    terminal = b"".join(chunks).decode("utf-8", "replace")
    assert child.returncode == 0, terminal
    assert "%|" in terminal, terminal  # tqdm's bar: "desc: NN%|████| ..."
    assert "s of audio" in terminal and "first.wav" in terminal and "second.wav" in terminal, terminal
    assert "all files" in terminal and "2.0/2" in terminal, terminal  # the batch bar, to its end
    assert "separated 2 of 2 file(s)" in terminal
    assert "Traceback" not in terminal
    assert sorted(p.name for p in (out / "first").iterdir()) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]


def test_separate_off_a_terminal_draws_no_bar(tmp_path):
    """The counterpart, through the same real command: piped stderr has no bar codes in it."""
    song = tmp_path / "song.wav"
    write_tone(song, seconds=1.0)
    child = subprocess.run(
        stemdeck_command("separate", song, "-o", tmp_path / "out", "--model", "passthrough"),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert "%|" not in child.stderr and "\r" not in child.stderr
    assert child.stderr.splitlines()[-1] == "separated 1 of 1 file(s)"


def test_stems_written_by_the_command_follow_the_umask(tmp_path):
    """Issue 10 item 6 (last papercut): finished stems had mkstemp's 0600 whatever the umask. The
    umask was tested on write_stems_atomically; `separate` writes through StemWriter (block by
    block) since issue 13, so the command's own files are checked here."""
    from stemdeck.cli import main

    song = tmp_path / "song.wav"
    write_tone(song, seconds=0.5)
    for umask, mode in ((0o022, 0o644), (0o002, 0o664)):
        out = tmp_path / f"out-{umask:o}"
        old = os.umask(umask)
        try:
            assert main(["separate", str(song), "-o", str(out), "--model", "passthrough"]) == 0
        finally:
            os.umask(old)
        stems = sorted((out / "song").iterdir())
        assert [p.name for p in stems] == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
        assert {oct(p.stat().st_mode & 0o777) for p in stems} == {oct(mode)}


def test_keys_1_to_6_and_shift_1_to_6_reach_a_six_stem_mix_through_the_focused_widget(qtbot, tmp_path):
    """Issue 10 item 2 names 1-6 and Shift+1-6; tests/test_gui_keys.py drives a 4-stem window.
    Here a six-stem window, the key sent where the keyboard goes (the focused widget), and the
    mix asserted on the output audio: muting stem k leaves 1 - fraction, soloing it the fraction."""
    from PyQt6.QtCore import QSettings, Qt
    from PyQt6.QtTest import QTest
    from PyQt6.QtWidgets import QApplication

    from stemdeck.gui.main_window import MainWindow
    from stemdeck.gui.session import Session, SessionConfig

    fractions = (0.1, 0.1, 0.2, 0.3, 0.2, 0.1)  # tests/test_gui.py's "six" pass-through
    settings = QSettings(str(tmp_path / "stemdeck.ini"), QSettings.Format.IniFormat)
    session = Session(SessionConfig(model="six", headless=True, worker="thread", calibrate=False), model_loader=loader)
    window = MainWindow(session, settings)
    qtbot.addWidget(window)
    window.show()
    try:
        session.choose_model("six")
        session.open_array(tone(), SR, "tone")
        wait_idle(qtbot, session)
        assert session.engine.wait_separated(6 * SR, timeout_s=60)
        session.engine.play()
        window.activateWindow()
        qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
        window.latency_box.setFocus()  # the control that used to swallow the digits
        mixer = session.engine.mixer

        def key(code, modifier=Qt.KeyboardModifier.NoModifier):
            QTest.keyClick(QApplication.focusWidget() or window, code, modifier)

        for stem, fraction in enumerate(fractions):
            digit = getattr(Qt.Key, f"Key_{stem + 1}")
            key(digit)
            assert mixer().mute[stem], f"key {stem + 1} did not mute"
            assert output_ratio(window) == pytest.approx(1 - fraction, abs=1e-5)
            key(digit)
            assert not mixer().mute[stem]
            key(digit, Qt.KeyboardModifier.ShiftModifier)
            assert mixer().solo[stem], f"Shift+{stem + 1} did not solo"
            assert output_ratio(window) == pytest.approx(fraction, abs=1e-5)
            key(digit, Qt.KeyboardModifier.ShiftModifier)
            assert not mixer().solo[stem]
        assert output_ratio(window) == pytest.approx(1.0, abs=1e-5)
        assert window.isVisible()
    finally:
        window.close()
        session.close()
