"""The desktop mixer under pytest-qt (offscreen), on the real engine with a pass-through model
whose stems are known fractions of the track (drums 0.1, bass 0.2, other 0.3, vocals 0.4).
The engine's output is the audio callback's, driven block by block (no sound card)."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PyQt6.QtCore import QSettings, Qt
from PyQt6.QtGui import QImage

from stemdeck.gui.main_window import EngineControls, MainWindow
from stemdeck.gui.session import Session, SessionConfig
from stemdeck.models.loading import LoadedModel
from stemdeck.models.nets.passthrough import PassThrough

SR = 44100
VOCALS, BASS = 3, 1
SIX = ("drums", "bass", "other", "vocals", "guitar", "piano")


def tone(seconds=12.0):
    t = np.arange(int(seconds * SR)) / SR
    mono = (0.5 * np.sin(2 * np.pi * 441 * t)).astype(np.float32)
    return np.stack([mono, mono])


def loader(name):
    """The tests' own stand-ins by name (None: the pass-through), each with its name as the app's loader gives it."""
    if name == "six":
        return LoadedModel(PassThrough(SIX, (0.1, 0.1, 0.2, 0.3, 0.2, 0.1)), name)
    if name == "slow":
        time.sleep(1.0)
    if name == "low-rate":  # as the bundled tiny model: 22.05 kHz
        return LoadedModel(PassThrough(samplerate=22050), name)
    return LoadedModel(PassThrough(), name or "passthrough")


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "stemdeck.ini"), QSettings.Format.IniFormat)


def make_window(qtbot, settings, audio=None):
    session = Session(
        SessionConfig(model="passthrough", headless=True, worker="thread", calibrate=False), model_loader=loader
    )
    window = MainWindow(session, settings)
    qtbot.addWidget(window)
    window.show()
    window.choose_model("passthrough")  # as picked in the model menu
    session.open_array(tone() if audio is None else audio, SR, "tone")
    wait_idle(qtbot, session)
    engine = session.engine
    assert engine.wait_separated(6 * SR, timeout_s=60)
    engine.play()
    return window


# the first session of a fresh checkout compiles every Numba kernel of the audio path (63 s on
# 2 quiet cores, cached after that): a limit for a hang, not a timing
IDLE_TIMEOUT_MS = 300_000


def wait_idle(qtbot, session):
    qtbot.waitUntil(lambda: session.idle.is_set(), timeout=IDLE_TIMEOUT_MS)
    qtbot.wait(50)  # the signals queued to the GUI thread land


@pytest.fixture
def window(qtbot, settings):
    window = make_window(qtbot, settings)
    yield window
    window.close()
    window.session.close()


def output_ratio(window, blocks=4) -> float:
    """The engine's output over the dry track once the 10 ms ramps are done."""
    engine = window.session.engine
    out = np.zeros((256, 2), np.float32)
    for _ in range(blocks):
        start = round(engine.status().position_s * SR)
        engine.process_deck_block(out)
    dry = window.session._track_audio[0, start : start + 256]
    return float(np.dot(out[:, 0], dry) / np.dot(dry, dry))


def test_window_shows_a_strip_per_stem_with_its_colour(window):
    assert [s.name for s in window.strips] == ["drums", "bass", "other", "vocals"]
    assert window.strips[VOCALS].label.styleSheet() == "color: #e94b8a"
    assert output_ratio(window) == pytest.approx(1.0, abs=1e-5)


def test_mute_click_removes_exactly_the_vocals(qtbot, window):
    qtbot.mouseClick(window.strips[VOCALS].mute, Qt.MouseButton.LeftButton)
    assert window.session.engine.mixer().mute[VOCALS]
    assert output_ratio(window) == pytest.approx(0.6, abs=1e-5)
    qtbot.mouseClick(window.strips[VOCALS].mute, Qt.MouseButton.LeftButton)
    assert output_ratio(window) == pytest.approx(1.0, abs=1e-5)


def test_solo_on_bass_leaves_only_bass(qtbot, window):
    qtbot.mouseClick(window.strips[BASS].solo, Qt.MouseButton.LeftButton)
    assert output_ratio(window) == pytest.approx(0.2, abs=1e-5)
    qtbot.mouseClick(window.strips[VOCALS].solo, Qt.MouseButton.LeftButton)  # DJ solo: both play
    assert output_ratio(window) == pytest.approx(0.6, abs=1e-5)


def test_fader_at_minus_6_db_halves_the_stem(qtbot, window):
    fader = window.strips[VOCALS].fader
    fader.set_db(-6.0)
    assert window.strips[VOCALS].db_label.text() == "−6.0 dB"
    assert output_ratio(window) == pytest.approx(0.6 + 0.4 * 10 ** (-6 / 20), abs=1e-5)  # 0.4 → 0.2005
    qtbot.mouseDClick(fader, Qt.MouseButton.LeftButton)  # double-click: back to unity
    assert fader.db == 0.0 and output_ratio(window) == pytest.approx(1.0, abs=1e-5)


def test_keyboard_shortcuts(qtbot, window):
    qtbot.keyClick(window, Qt.Key.Key_4)  # mute vocals
    assert window.strips[VOCALS].mute.isChecked() and output_ratio(window) == pytest.approx(0.6, abs=1e-5)
    qtbot.keyClick(window, Qt.Key.Key_4)
    qtbot.keyClick(window, Qt.Key.Key_2, Qt.KeyboardModifier.ShiftModifier)  # solo bass
    assert output_ratio(window) == pytest.approx(0.2, abs=1e-5)
    qtbot.keyClick(window, Qt.Key.Key_At, Qt.KeyboardModifier.ShiftModifier)  # Shift+2 on a US layout
    assert not window.strips[BASS].solo.isChecked()
    engine = window.session.engine
    qtbot.keyClick(window, Qt.Key.Key_Space)
    assert not engine.mixer().playing
    qtbot.keyClick(window, Qt.Key.Key_Space)
    assert engine.mixer().playing
    before = engine.status().position_s
    qtbot.keyClick(window, Qt.Key.Key_Right)
    output_ratio(window, blocks=1)  # the seek lands in the next block
    assert engine.status().position_s == pytest.approx(before + 5.0 + 256 / SR, abs=1e-3)
    qtbot.keyClick(window, Qt.Key.Key_Left)
    output_ratio(window, blocks=1)
    assert engine.status().position_s == pytest.approx(before + 2 * 256 / SR, abs=1e-3)


def test_tooltips_name_the_shortcuts(window):
    assert window.strips[VOCALS].mute.toolTip() == "Mute vocals (4)"
    assert window.strips[BASS].solo.toolTip() == "Solo bass (Shift+2)"
    assert "Space" in window.play_button.toolTip() and "Ctrl+O" in window.open_button.toolTip()


def test_unreadable_file_shows_the_error_and_the_track_plays_on(qtbot, window, tmp_path):
    qtbot.mouseClick(window.strips[VOCALS].mute, Qt.MouseButton.LeftButton)
    garbage = tmp_path / "broken.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    window.open_path(garbage)
    wait_idle(qtbot, window.session)
    assert window.banner.isVisible()
    assert "broken.wav" in window.banner_text.text() and "\n" not in window.errors[-1]
    assert window.session.track.name == "tone" and window.track_label.text() == "tone"
    assert window.session.engine.mixer().playing
    assert output_ratio(window) == pytest.approx(0.6, abs=1e-5)  # same track, same mute


def test_opening_a_real_file_adds_it_to_recent(qtbot, window, tmp_path):
    from conftest import write_tone

    path = tmp_path / "song.flac"
    write_tone(path, seconds=2.0, samplerate=48000)
    window.open_path(path)
    wait_idle(qtbot, window.session)
    assert window.track_label.text() == "song.flac"
    assert window.session.track.seconds == pytest.approx(2.0, abs=1e-3)
    assert window._recent()[0] == str(path)
    assert [a.text() for a in window.recent_menu.actions()] == ["song.flac"]


def test_switching_model_keeps_the_gui_responsive_and_the_mixer(qtbot, window):
    qtbot.mouseClick(window.strips[VOCALS].mute, Qt.MouseButton.LeftButton)
    window.session.choose_model("slow")
    ticks = []
    window.timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    qtbot.waitUntil(lambda: window.busy_bar.isVisible(), timeout=5000)
    wait_idle(qtbot, window.session)
    assert len(ticks) >= 15  # the 30 fps refresh ran on while the model loaded for a second
    assert max(np.diff(ticks)) < 0.25
    output_ratio(window, blocks=40)  # play on to about 0.23 s
    before = window.session.engine.status().position_s
    window.session.choose_model("six")
    wait_idle(qtbot, window.session)
    assert [s.name for s in window.strips] == list(SIX)
    assert window.strips[VOCALS].mute.isChecked()  # carried over to the new model
    assert window.session.track.name == "tone"
    engine = window.session.engine
    assert engine.mixer().playing and engine.cue_s == pytest.approx(before, abs=1 / SR)  # where it was


def test_a_model_at_a_lower_rate_leaves_the_deck_at_the_engine_rate(qtbot, window):
    window.session.choose_model("low-rate")
    wait_idle(qtbot, window.session)
    assert window.session.engine.config.samplerate == SR
    assert window.session.track.seconds == pytest.approx(12.0, abs=1e-3)
    window.session.open_array(tone(4.0), SR, "short")
    wait_idle(qtbot, window.session)
    assert window.session.track.seconds == pytest.approx(4.0, abs=1e-3)  # not twice as long
    engine = window.session.engine
    assert engine.wait_separated(3 * SR, timeout_s=60)
    engine.play()
    qtbot.mouseClick(window.strips[VOCALS].mute, Qt.MouseButton.LeftButton)
    output_ratio(window)
    assert output_ratio(window) == pytest.approx(0.6, abs=1e-3)


def test_latency_in_seconds_instead_of_a_preset(qtbot, window):
    window.latency_box.setCurrentText("1.5 s")
    window.latency_box.activated.emit(window.latency_box.currentIndex())  # picked from the list
    wait_idle(qtbot, window.session)
    assert window.session.engine.window.hop_s == pytest.approx(0.5)  # a third of the latency per hop
    assert window.session.track.name == "tone"  # the track was carried to the new plan
    window.preset_box.setCurrentText("low-latency")
    window._preset_chosen()
    wait_idle(qtbot, window.session)
    assert window.session.config.latency_s is None and window.latency_box.currentText() == "preset"


def test_a_missing_model_is_a_banner_and_the_deck_still_plays(qtbot, settings):
    session = Session(SessionConfig(headless=True, worker="thread", calibrate=False))
    window = MainWindow(session, settings)
    qtbot.addWidget(window)
    window.show()
    session.choose_model("/nowhere/model.th")
    wait_idle(qtbot, session)
    try:
        assert window.banner.isVisible()
        assert window.errors[-1] == "/nowhere/model.th does not exist — the bundled tiny model separates meanwhile"
        assert session.model_name == "tiny" and window.model_box.currentText() == "tiny"
        assert window.model_status.text() == "tiny (bundled)"
        assert "bundled small model" in window.model_status.toolTip()
    finally:
        window.close()
        session.close()


def test_settings_persist_between_launches(qtbot, settings, window):
    size = (max(790, window.minimumSizeHint().width()), 560)  # inside the offscreen platform's 800 x 600 screen
    window.resize(*size)
    window.close()
    window.session.close()
    again = make_window(qtbot, settings)
    try:
        assert size[0] <= 800 and (again.width(), again.height()) == size
        assert settings.value("model") == "passthrough" and settings.value("preset") == "balanced"
        assert settings.value("colours/vocals") == "#e94b8a"
    finally:
        again.close()
        again.session.close()


def test_midi_learn_from_the_gui_and_midi_changes_show(qtbot, window):
    from stemdeck.engine.midi import MidiConfig, MidiController, default_mapping

    window.midi = MidiController(EngineControls(window.session), default_mapping(4), MidiConfig())
    window.midi_learn("mute", VOCALS)
    assert "Esc cancels" in window.statusBar().currentMessage()
    window.midi.handle([0x90, 60, 100])
    window.midi.handle([0x90, 60, 0])
    window.midi.handle([0x90, 60, 100])  # the learned pad toggles the vocals' mute
    window.refresh()
    assert window.strips[VOCALS].mute.isChecked()
    assert output_ratio(window) == pytest.approx(0.6, abs=1e-5)
    window.midi_learn("solo", BASS)
    qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert not window.midi.learning
    window.midi.handle([0xB0, 7, 127])  # the default crossfader CC: all dry
    window.refresh()
    assert window.crossfader.value() == 100


def test_midi_before_any_model_is_loaded_does_not_break(qtbot, settings):
    from stemdeck.engine.midi import MidiConfig, MidiController, default_mapping

    session = Session(SessionConfig(headless=True, worker="thread", calibrate=False), model_loader=loader)
    midi = MidiController(EngineControls(session), default_mapping(4), MidiConfig())
    try:
        midi.handle([0x90, 36, 100])  # no engine, no stems yet: ignored, not an error
        assert midi.ignored == 1
        session.choose_model("passthrough")
        assert session.wait_idle(30)
        midi.handle([0x90, 36, 100])
        assert session.engine.mixer().mute[0]
    finally:
        session.close()


def test_screenshot_command_writes_a_real_picture(tmp_path):
    path = tmp_path / "mixer.png"
    result = subprocess.run(
        [sys.executable, "-m", "stemdeck", "gui", "--demo", "--model", "passthrough", "--screenshot", str(path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    image = QImage(str(path))
    assert (image.width(), image.height()) == (1280, 720)
    pixels = np.frombuffer(
        image.convertToFormat(QImage.Format.Format_RGB32).constBits().asstring(image.width() * image.height() * 4),
        np.uint8,
    ).reshape(-1, 4)
    assert len(np.unique(pixels[:, :3], axis=0)) > 200  # text, strips, meters: far from blank
    vocals_pink = np.all(np.abs(pixels[:, :3].astype(int) - [0x8A, 0x4B, 0xE9]) < 8, axis=1)  # BGRA
    assert vocals_pink.sum() > 500  # the vocals' meter and activity view moved


def test_no_display_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run(
        [sys.executable, "-m", "stemdeck"], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "stemdeck: error: no display to open the mixer on; run it on a desktop, "
        "or render it with `stemdeck gui --demo --screenshot mixer.png`"
    )


def test_the_deck_plays_through_a_real_jack_output(qtbot, settings, jack_server):
    session = Session(SessionConfig(model="passthrough", worker="thread", calibrate=False), model_loader=loader)
    window = MainWindow(session, settings)
    qtbot.addWidget(window)
    window.show()
    try:
        session.choose_model("passthrough")
        session.open_array(tone(4.0), SR, "tone")
        wait_idle(qtbot, session)
        assert not window.errors, window.errors
        assert session.engine.stream_active
        qtbot.keyClick(window, Qt.Key.Key_Space)
        qtbot.waitUntil(lambda: session.engine.status().position_s > 1.0, timeout=10000)
        window.refresh()
        assert window.play_button.text() == "❚❚ Pause"
        assert window.master_meter.rms_db > -20  # the tone (0.5 peak) reached the output meter
    finally:
        window.close()
        session.close()


def test_midi_ports_are_remembered_between_launches(settings):
    import argparse

    from stemdeck.gui.app import _remember_midi_ports

    given = argparse.Namespace(midi_in="nanoKONTROL", midi_out=None, midi_virtual=False)
    _remember_midi_ports(given, settings)
    later = argparse.Namespace(midi_in=None, midi_out=None, midi_virtual=False)
    _remember_midi_ports(later, settings)
    assert (later.midi_in, later.midi_out, later.midi_virtual) == ("nanoKONTROL", None, False)


def test_opening_an_ni_stem_file_plays_its_stems_without_separating(qtbot, window, tmp_path):
    """Opened as a user does (the path the Open dialog returns): the file's own stems play, muting
    vocals leaves exactly the other three, and the model separates nothing."""
    from stemdeck.models.stem_file import write_stem_file

    t = np.arange(3 * SR) / SR
    stems = {
        name: np.stack([amplitude * np.sin(2 * np.pi * hz * t)] * 2).astype(np.float32)
        for name, hz, amplitude in (("drums", 110, 0.2), ("bass", 55, 0.3), ("other", 330, 0.1), ("vocals", 660, 0.25))
    }
    path = tmp_path / "song.stem.mp4"
    write_stem_file(path, sum(stems.values()), stems, SR)
    window.open_path(path)
    wait_idle(qtbot, window.session)
    assert window.track_label.text() == "song.stem.mp4"
    engine = window.session.engine
    windows_before = engine.status().windows_done
    qtbot.mouseClick(window.strips[VOCALS].mute, Qt.MouseButton.LeftButton)
    engine.play()
    out = np.zeros((256, 2), np.float32)
    for _ in range(8):  # past the 10 ms ramp
        start = round(engine.status().position_s * SR)
        engine.process_deck_block(out)
    expected = (stems["drums"] + stems["bass"] + stems["other"])[0, start : start + 256]
    assert np.abs(out[:, 0] - expected).max() < 1e-5  # 24-bit ALAC: about 1e-7
    assert np.abs(expected).max() > 0.1
    assert engine.status().windows_done == windows_before  # nothing separated
