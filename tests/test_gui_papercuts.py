"""What a user meets in the first minutes: the status bar, the model picker and what is saved,
the error banner, the window at its minimum size, the end of a track, a new track."""

import numpy as np
import pytest
from PyQt6.QtCore import QPoint, QRect, Qt
from PyQt6.QtWidgets import QApplication, QWidget
from test_gui import (  # noqa: F401 - settings, window: the fixtures
    SR,
    VOCALS,
    loader,
    output_ratio,
    settings,
    tone,
    wait_idle,
    window,
)

from stemdeck.gui.main_window import MainWindow
from stemdeck.gui.session import Session, SessionConfig
from stemdeck.models.loading import load_or_fetch

SHIFT = Qt.KeyboardModifier.ShiftModifier


def real_loader(name):
    """The app's loader (registry with the built-in pass-through, bundled tiny, downloads), said nowhere."""
    return load_or_fetch(name)


def bare_window(qtbot, settings, model_loader=real_loader, **config):
    """A shown window with no model nor track; ``config`` changes its session's (headless by default)."""
    config = {"headless": True, "worker": "thread", "calibrate": False, **config}
    session = Session(SessionConfig(**config), model_loader=model_loader)
    window = MainWindow(session, settings)
    qtbot.addWidget(window)
    window.show()
    return window


def fits(label) -> bool:
    return label.fontMetrics().horizontalAdvance(label.text()) <= label.contentsRect().width()


def window_rect(widget, window) -> QRect:
    return QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())


def overlaps(window) -> list[str]:
    """Pairs of visible widgets drawn over each other (a widget over its own parent is fine)."""
    shown = [
        w
        for w in window.findChildren(QWidget)
        if w.isVisible() and w.width() > 0 and w is not window.banner and not window.banner.isAncestorOf(w)
    ]
    found = []
    for i, a in enumerate(shown):
        for b in shown[i + 1 :]:
            if a.isAncestorOf(b) or b.isAncestorOf(a):
                continue
            if window_rect(a, window).intersects(window_rect(b, window)):
                found.append(
                    f"{type(a).__name__} {getattr(a, 'text', lambda: '')()!r} over "
                    f"{type(b).__name__} {getattr(b, 'text', lambda: '')()!r}"
                )
    return found


def test_status_bar_figures_are_shown_in_full(qtbot, window):
    from stemdeck.engine.midi import MidiConfig, MidiController, default_mapping
    from stemdeck.gui.main_window import EngineControls

    window.midi = MidiController(EngineControls(window.session), default_mapping(4), MidiConfig())
    for size in ((1280, 720), (1, 1)):  # (1, 1): as small as the window goes
        window.resize(*size)
        qtbot.wait(100)
        window.timer.stop()  # the figures as the last refresh left them, laid out
        window.refresh()
        qtbot.wait(50)
        labels = [
            window.model_status,
            window.latency_status,
            window.load_status,
            window.ahead_status,
            window.xrun_status,
        ]
        assert all(label.text() for label in labels)
        cut = [label.text() for label in labels if not fits(label)]
        assert not cut, f"cut at {window.width()} x {window.height()}: {cut}"


def test_midi_learn_prompt_and_confirmation_show_in_the_window(qtbot, window):
    from stemdeck.engine.midi import MidiConfig, MidiController, default_mapping
    from stemdeck.gui.main_window import EngineControls

    window.resize(1, 1)
    window.midi = MidiController(EngineControls(window.session), default_mapping(4), MidiConfig())
    window.midi_learn("mute", VOCALS)
    bar = window.statusBar()
    prompt = "MIDI learn: move a control or press a pad for mute vocals (Esc cancels)"
    assert window.statusBar().currentMessage() == prompt
    assert bar.fontMetrics().horizontalAdvance(prompt) + 16 <= bar.width()  # in full, at the smallest window
    assert not window.xrun_status.isVisible()  # the figures make room for it
    window.midi.handle([0x90, 60, 100])
    qtbot.wait(100)
    assert window.statusBar().currentMessage() == "MIDI learned: note 60 on channel 1 drives mute vocals"
    window.midi_learn("solo", VOCALS)
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert window.statusBar().currentMessage() == "MIDI learn cancelled" and not window.midi.learning


def test_a_model_that_fails_to_load_leaves_the_picker_on_the_running_one(qtbot, settings):
    window = bare_window(qtbot, settings)
    try:
        window.session.choose_model("passthrough")
        wait_idle(qtbot, window.session)
        window.model_box.setCurrentText("htdemucs")
        window.model_box.activated.emit(window.model_box.currentIndex())  # not downloaded, no network
        wait_idle(qtbot, window.session)
        assert window.banner.isVisible() and "955717e8-8726e21a.th" in window.errors[-1]
        assert window.session.model_name == "passthrough"
        assert window.model_box.currentText() == "passthrough"
        assert settings.value("model") == "htdemucs"  # the user's choice, tried again at the next launch
    finally:
        window.close()
        window.session.close()


def test_the_automatic_fallback_is_not_saved_as_the_users_choice(qtbot, settings):
    window = bare_window(qtbot, settings)
    try:
        window.session.choose_model(None)  # `stemdeck gui` with no --model and nothing saved
        wait_idle(qtbot, window.session)
        assert window.session.model_name == "tiny" and window.model_box.currentText() == "tiny"
        assert settings.value("model") is None  # the next launch tries the official model again
        note = window.banner_text.text()
        assert window.banner.isVisible() and window.banner.objectName() == "note"
        assert "955717e8-8726e21a.th" in note and "STEMDECK_MODEL_DIR" in note and "models fetch" not in note
        from stemdeck.models.registry import cache_dir

        assert str(cache_dir()) in note and note.removeprefix("tiny: ") in window.model_status.toolTip()
    finally:
        window.close()
        window.session.close()


def test_the_error_banner_moves_nothing(qtbot, window):
    window.resize(1000, 640)
    qtbot.wait(50)
    before = [window_rect(w, window) for w in (window.overview, window.strips[0], window.play_button)]
    window.show_error(
        "a.wav: not an audio file this build can read (RIFF header damaged); convert it to WAV "
        "or FLAC with ffmpeg and open it again — the track that was playing plays on"
    )
    qtbot.wait(50)
    after = [window_rect(w, window) for w in (window.overview, window.strips[0], window.play_button)]
    assert before == after
    banner = window.banner
    assert banner.isVisible() and QRect(QPoint(0, 0), window.size()).contains(window_rect(banner, window))
    text = window.banner_text
    assert text.height() >= text.heightForWidth(text.width())  # every line of it shows


@pytest.mark.parametrize("model", ["passthrough", "six"])
def test_nothing_overlaps_at_the_minimum_size(qtbot, settings, model):
    window = bare_window(qtbot, settings, loader)
    try:
        window.session.choose_model(model)
        window.session.open_array(tone(2.0), SR, "tone")
        wait_idle(qtbot, window.session)
        window.resize(1, 1)
        qtbot.wait(100)
        assert window.width() < 1000 and window.height() < 700  # a minimum a laptop can show
        assert not overlaps(window)
        for strip in window.strips:
            assert fits(strip.db_label)
    finally:
        window.close()
        window.session.close()


def test_the_end_of_the_track_stops_and_play_starts_it_again(qtbot, settings):
    window = bare_window(qtbot, settings, loader)
    try:
        window.session.choose_model("passthrough")
        window.session.open_array(tone(1.0), SR, "tone")
        wait_idle(qtbot, window.session)
        engine = window.session.engine
        assert engine.wait_separated(SR, timeout_s=60)
        engine.play()
        out = np.zeros((256, 2), np.float32)
        for _ in range(int(1.2 * SR / 256)):
            engine.process_deck_block(out)
        qtbot.wait(150)
        assert not engine.mixer().playing
        assert window.play_button.text() == "▶ Play"
        assert (window.elapsed_label.text(), window.remaining_label.text()) == ("0:01.0", " 0:00.0")
        qtbot.keyClick(window, Qt.Key.Key_Space)
        engine.process_deck_block(out)
        assert engine.mixer().playing and engine.status().position_s == pytest.approx(256 / SR)
        assert output_ratio(window) == pytest.approx(1.0, abs=1e-5)
    finally:
        window.close()
        window.session.close()


def test_a_new_track_clears_the_old_tracks_levels(qtbot, window):
    output_ratio(window, blocks=20)
    window.refresh()
    vocals = window.strips[VOCALS]
    assert max(vocals.activity.points) > 0 and vocals.meter.hold_db > -20 and window.master_meter.hold_db > -20
    window.session.open_array(tone(3.0), SR, "another")
    wait_idle(qtbot, window.session)
    qtbot.wait(100)
    assert window.track_label.text() == "another"
    for strip in window.strips:
        assert max(strip.activity.points) == 0 and strip.meter.hold_db == -np.inf
    assert window.master_meter.hold_db == -np.inf


def test_keys_still_work_once_a_banner_shows(qtbot, window):
    window.show_error("something went wrong; do this")
    QApplication.processEvents()
    qtbot.keyClick(QApplication.focusWidget() or window, Qt.Key.Key_4)
    assert window.session.engine.mixer().mute[VOCALS]


def test_window_size_option():
    import argparse

    from stemdeck.gui.app import window_size

    assert window_size("1600x900") == (1600, 900) and window_size("min") == (1, 1)
    for bad in ("1600", "x900", "0x900", "big"):
        with pytest.raises(argparse.ArgumentTypeError, match="write WIDTHxHEIGHT"):
            window_size(bad)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_close_the_running_window_cleanly(tmp_path, signal_name):
    """Ctrl-C in the terminal that started the mixer was ignored (the window ran on until killed),
    and SIGTERM killed it without shutting the session down: both now close it as Quit does,
    exit 0, no traceback, no leaked shared memory."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import soundfile as sf

    song = tmp_path / "song.wav"
    sf.write(str(song), tone(3.0).T, SR)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    command = [sys.executable, "-m", "stemdeck", "gui", str(song), "--model", "passthrough"]
    window = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(8.0)  # the window is up, the track loaded, its worker process started
        assert window.poll() is None, window.communicate()[1]
        window.send_signal(getattr(signal, signal_name))
        _, err = window.communicate(timeout=30)
    finally:
        window.kill()
    assert window.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "leaked" not in err


def test_with_no_track_rec_is_refused_and_no_latency_is_shown(qtbot, settings, tmp_path, monkeypatch):
    """Rec with nothing loaded wrote an empty take ("recorded 0.0 s to ..."), and the status bar
    showed a live latency while nothing ran."""
    from PyQt6.QtTest import QTest

    monkeypatch.setenv("STEMDECK_RECORDINGS_DIR", str(tmp_path / "takes"))
    window = bare_window(qtbot, settings)
    try:
        window.session.choose_model("passthrough")
        wait_idle(qtbot, window.session)
        window.activateWindow()
        qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
        QTest.keyClick(QApplication.focusWidget() or window, Qt.Key.Key_R)
        qtbot.waitUntil(lambda: bool(window.errors), timeout=5000)
        assert window.errors[-1] == (
            "cannot record: nothing is playing to record; open a track or start live input first"
        )
        assert not (tmp_path / "takes").exists() or not list((tmp_path / "takes").iterdir())
        assert not window.transport.record_button.isChecked()
        qtbot.wait(300)  # a refresh
        assert window.latency_status.text() == ""
        assert window.load_status.text() == "RTF —"  # nothing separated: no figure, not 0.00
    finally:
        window.close()
        window.session.close()


def test_a_long_track_name_is_elided_and_never_widens_the_window(qtbot, window):
    """A 200-character file name opened the window 2323 px wide (clock, BPM, strips off-screen),
    and that width was saved for the next launch."""
    before = window.width()
    long_name = "The Extremely Long Title of a Remix " * 6
    window.session.open_array(tone(1.0), SR, long_name)
    wait_idle(qtbot, window.session)
    qtbot.wait(100)
    assert window.track_label.text() == long_name and window.track_label.toolTip() == long_name
    assert window.width() == before and window.minimumSizeHint().width() < 1000
    assert window.track_label.width() < window.fontMetrics().horizontalAdvance(long_name)  # elided


def test_the_default_size_fits_the_screen(qtbot, settings):
    """1280 x 720 where the screen has room; on a smaller one (the offscreen test screen is
    800 x 800) no more than its free area, or the window's minimum. (A headless render to a
    file keeps 1280 x 720: test_screenshot_command_writes_a_real_picture.)"""
    window = bare_window(qtbot, settings, headless=False)
    try:
        free = window.screen().availableGeometry()
        assert window.width() <= max(free.width(), window.minimumSizeHint().width())
        assert window.height() <= max(free.height(), window.minimumSizeHint().height())
    finally:
        window.close()
        window.session.close()


def test_with_no_sound_device_the_model_and_track_load_and_the_banner_says_why_nothing_plays(qtbot, settings):
    """With no JACK server nor card, the model failed on the device's rate and the banner said
    "no model is loaded yet; pick one in the model menu" (and no track loaded)."""
    window = bare_window(qtbot, settings, headless=False, output_device="no-such-device-xyz")
    session = window.session
    try:
        window.choose_model("passthrough")
        session.open_array(tone(1.0), SR, "tone")
        wait_idle(qtbot, session)
        assert session.model_name == "passthrough" and session.track is not None
        assert window.track_label.text() == "tone"
        assert window.errors and all("no model is loaded" not in error for error in window.errors)
        assert "no-such-device-xyz" in window.errors[-1]
    finally:
        window.close()
        session.close()


def test_the_open_dialog_starts_in_the_tracks_folder(qtbot, window, tmp_path):
    """It always started in the home folder."""
    from pathlib import Path

    from conftest import write_tone

    assert window._open_folder() == Path.home()  # the fixture's track has no file
    song = tmp_path / "music" / "song.wav"
    song.parent.mkdir()
    write_tone(song, seconds=1.0)
    window.open_path(song)
    wait_idle(qtbot, window.session)
    assert window._open_folder() == song.parent


def test_a_lost_stream_pauses_the_deck_and_play_reopens_the_output(qtbot, window, monkeypatch):
    """JACK killed mid-play: the button still said Pause and the clock froze; after the server
    came back the first Play only paused, the second played nothing until the device was picked
    again. Now the deck pauses (Play shows) and Play opens the output anew, then plays."""
    from PyQt6.QtTest import QTest

    from stemdeck.engine.config import STREAM_LOST

    engine = window.session.engine
    assert engine.mixer().playing
    engine._stream_error = STREAM_LOST  # what the engine sets when its stream ends under it
    qtbot.waitUntil(lambda: not engine.mixer().playing, timeout=5000)
    assert window.errors[-1].endswith("; press play to go on (or pick another output device)")
    qtbot.waitUntil(lambda: window.play_button.text().startswith("▶"), timeout=5000)
    reopened = []

    def reopen(device):
        reopened.append(device)
        engine._stream_error = None

    monkeypatch.setattr(window.session, "set_output", reopen)
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
    QTest.keyClick(QApplication.focusWidget() or window, Qt.Key.Key_Space)
    assert reopened == [window.session.config.output_device] and engine.mixer().playing
    assert not window.banner.isVisible()


def test_fader_readouts_read_zero_the_same_way_always():
    """A scene recall turned the faders' "0.0 dB" into "+0.0 dB"."""
    import math

    from stemdeck.gui.widgets import db_text

    assert [db_text(db) for db in (0.0, -0.0, 0.04, -0.04, 3.5, -6.0, -math.inf)] == [
        "0.0 dB",
        "0.0 dB",
        "0.0 dB",
        "0.0 dB",
        "+3.5 dB",
        "−6.0 dB",
        "−∞ dB",
    ]


def test_the_output_list_shows_a_jack_server_started_after_the_window(qtbot, settings):
    """The Output and Input lists were made once, from what PortAudio saw when it started: a
    JACK server started after the window never showed up in them. Now opening a list looks again."""
    import os

    from conftest import start_jack_server, stop_jack_server
    from PyQt6.QtTest import QTest

    from stemdeck.engine.device import rescan_devices

    name, previous = f"stemdeck-late-{os.getpid()}", os.environ.get("JACK_DEFAULT_SERVER")
    os.environ["JACK_DEFAULT_SERVER"] = name
    server = None
    try:
        assert rescan_devices()  # PortAudio as a window started with no server sees it
        window = bare_window(qtbot, settings, headless=False)
        box = window.output_box
        assert not [box.itemText(i) for i in range(box.count()) if "JACK" in box.itemText(i)]
        server = start_jack_server(name, playback_channels=2)
        QTest.mouseClick(box, Qt.MouseButton.LeftButton)  # opens the list
        jack = [i for i in range(box.count()) if box.itemText(i).endswith("[JACK Audio Connection Kit]")]
        assert jack, [box.itemText(i) for i in range(box.count())]
        view = box.view()
        qtbot.waitUntil(view.isVisible, timeout=5000)
        view.setCurrentIndex(box.model().index(jack[0], 0))  # arrowed down to it
        QTest.keyClick(view, Qt.Key.Key_Return)
        assert window.session.config.output_device == box.itemText(jack[0]).rsplit(" [", 1)[0]
        window.close()
        window.session.close()
    finally:
        if previous is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = previous
        assert rescan_devices()  # PortAudio leaves our server while it lives, back to the suite's
        if server is not None:
            stop_jack_server(server)


@pytest.mark.parametrize("restarted", [False, True])
def test_the_mixer_quits_cleanly_after_its_jack_server_died(tmp_path, restarted):
    """With JACK stopped mid-session (killed, or restarted), quitting the mixer aborted it:
    "pa_jack.c: Terminate: Assertion `err == 0' failed", exit status 134. PortAudio's teardown
    closes its JACK client and asserts that worked; it is now skipped once that server is gone,
    even when a new one runs under the same name."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import soundfile as sf
    from conftest import start_jack_server, stop_jack_server

    song = tmp_path / "song.wav"
    sf.write(str(song), tone(3.0).T, SR)
    name = f"stemdeck-dies-{os.getpid()}"
    server = start_jack_server(name, playback_channels=2)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "JACK_DEFAULT_SERVER": name}
    command = [sys.executable, "-m", "stemdeck", "gui", str(song), "--model", "passthrough"]
    window = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(8.0)  # the window is up, playing into the server
        assert window.poll() is None, window.communicate()[1]
        stop_jack_server(server)
        if restarted:
            server = start_jack_server(name, playback_channels=2)
        time.sleep(1.0)
        window.send_signal(signal.SIGTERM)
        _, err = window.communicate(timeout=30)
    finally:
        window.kill()
        stop_jack_server(server)
    assert window.returncode == 0, err
    assert "Assertion" not in err and "Traceback" not in err


def test_live_input_stops_from_its_button_and_a_take_is_finished(qtbot, settings, jack_server, tmp_path, monkeypatch):
    """Live input had a Start button and no way to stop but quitting: the worker went on
    separating the input and the output played it. The button now says Stop live while it runs; a take
    recorded meanwhile is finished as the input stops."""
    import soundfile as sf
    from PyQt6.QtTest import QTest

    monkeypatch.setenv("STEMDECK_RECORDINGS_DIR", str(tmp_path / "takes"))
    window = bare_window(qtbot, settings, headless=False)
    try:
        window.session.choose_model("passthrough")
        wait_idle(qtbot, window.session)
        window.tabs.setCurrentIndex(1)
        QTest.mouseClick(window.live_button, Qt.MouseButton.LeftButton)
        engine = window.session.engine
        qtbot.waitUntil(lambda: engine.live_running and window.live_button.text() == "Stop live", timeout=20000)
        assert window.track_label.text() == "live input"
        window.toggle_recording()
        qtbot.waitUntil(lambda: engine.recorder.recording, timeout=5000)
        qtbot.wait(500)  # half a second of input, recorded
        QTest.mouseClick(window.live_button, Qt.MouseButton.LeftButton)
        # the label follows the session's signal, the button the engine at the next refresh
        qtbot.waitUntil(
            lambda: window.track_label.text() == "no track" and window.live_button.text() == "Start live",
            timeout=20000,
        )
        assert not engine.live_running and not engine.recorder.recording
        takes = list((tmp_path / "takes").iterdir())
        assert len(takes) == 1 and sf.info(str(takes[0])).frames > 0.3 * sf.info(str(takes[0])).samplerate
        QTest.mouseClick(window.live_button, Qt.MouseButton.LeftButton)  # and again, as often as wanted
        qtbot.waitUntil(lambda: engine.live_running and window.live_button.text() == "Stop live", timeout=20000)
    finally:
        window.close()
        window.session.close()
