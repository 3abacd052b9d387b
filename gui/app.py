"""``stemdeck`` / ``stemdeck gui``: the desktop mixer, and ``--screenshot`` to render it without a screen."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

SCREENSHOT_BLOCKS = 400  # ≈ 2.3 s of audio at 256 frames: the meters have moved
BLOCK_FRAMES = 256
# The audio callback runs Python and needs the GIL every block (5.8 ms at 256 frames at 44.1 kHz);
# with Python's default 5 ms switch interval a busy GUI thread can keep it waiting a whole block.
GIL_SWITCH_S = 0.0005
SIGNAL_POLL_MS = 200  # how soon Ctrl-C or SIGTERM closes the window


def add_gui_command(commands, add_model_options, add_midi_options) -> None:
    from stemdeck.engine.config import PRESETS
    from stemdeck.models.cli import add_live_backend_option

    gui = commands.add_parser("gui", help="the desktop mixer (also what `stemdeck` alone opens)")
    gui.add_argument("file", type=Path, nargs="?", help="a track to load at start")
    gui.add_argument("second", type=Path, nargs="?", help="a second track: two decks, A and B (README: Two decks)")
    gui.add_argument("--demo", action="store_true", help="load a generated demo song")
    gui.add_argument("--screenshot", type=Path, metavar="PNG", help="render the window to PNG and exit")
    gui.add_argument(
        "--size",
        type=window_size,
        metavar="WxH",
        help="window size, e.g. 1600x900, or 'min': the smallest the window goes (default: as it was last time)",
    )
    gui.add_argument("--preset", choices=sorted(PRESETS), default=None)
    gui.add_argument("--output", help="output device (index, name or part of it)")
    gui.add_argument("--exit-when-shown", action="store_true", help=argparse.SUPPRESS)  # startup benchmark
    add_model_options(gui)
    add_live_backend_option(gui)
    add_midi_options(gui)
    gui.set_defaults(func=run_gui)


def window_size(text: str) -> tuple[int, int]:
    """``1600x900`` → (1600, 900); ``min`` → (1, 1), which the window raises to its minimum."""
    if text == "min":
        return (1, 1)
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or int(width) < 1 or int(height) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write WIDTHxHEIGHT (1600x900) or min")
    return int(width), int(height)


def run_gui(args: argparse.Namespace) -> int:
    headless = args.screenshot is not None
    if headless and not os.environ.get("QT_QPA_PLATFORM"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # renders with no display at all
    if not headless and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM")
    ):
        raise ValueError(
            "no display to open the mixer on; run it on a desktop, or render it with "
            "`stemdeck gui --demo --screenshot mixer.png`"
        )
    sys.setswitchinterval(GIL_SWITCH_S)
    if getattr(args, "second", None) is not None:
        return run_decks_gui(args, headless)
    from PyQt6.QtCore import QSettings, QTimer
    from PyQt6.QtWidgets import QApplication

    from stemdeck.gui.main_window import MainWindow
    from stemdeck.gui.session import Session, SessionConfig
    from stemdeck.gui.theme import apply_theme

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("stemdeck")
    apply_theme(app)
    settings = QSettings("stemdeck", "stemdeck")
    model = args.model or settings.value("model") or None  # None: htdemucs if it can be had, else tiny
    preset = args.preset or str(settings.value("preset", "balanced"))
    config = SessionConfig(
        model=model,
        preset=preset,
        output_device=args.output,
        headless=headless,
        worker="thread" if headless else "process",
        precision=args.precision,
        network_backend=args.backend,
        calibrate=not headless,
    )
    session = Session(config)
    window = MainWindow(session, settings)
    _remember_midi_ports(args, settings)
    midi = _start_midi(window, session, args)
    if args.size is not None:
        window.resize(*args.size)
    window.show()
    if args.exit_when_shown:
        QTimer.singleShot(0, lambda: (print(f"STEMDECK_SHOWN {time.perf_counter():.3f}", flush=True), app.quit()))
        app.exec()
        session.close()
        return 0
    stopper = _quit_on_signals(app)  # noqa: F841 (kept alive while the window runs)
    window.choose_model(model, remember=args.model is not None)  # a fallback is not the user's choice
    if args.demo:
        from stemdeck.models.demo import SAMPLERATE as DEMO_RATE
        from stemdeck.models.demo import demo_stems

        session.open_array(sum(demo_stems(20.0).values()), DEMO_RATE, "demo song")
    elif args.file is not None:
        session.open_file(args.file)
    try:
        if headless:
            return _screenshot(app, window, session, args.screenshot)
        app.exec()
        return 0
    finally:
        _shut_down(session, midi)


def run_decks_gui(args: argparse.Namespace, headless: bool) -> int:
    """``stemdeck gui A B``: the two-deck window, A and B loaded (both paused, the crossfader on A)."""
    from PyQt6.QtCore import QSettings
    from PyQt6.QtWidgets import QApplication

    from stemdeck.gui.decks_session import DecksSession
    from stemdeck.gui.decks_window import DecksWindow
    from stemdeck.gui.session import SessionConfig
    from stemdeck.gui.theme import apply_theme

    for path in (args.file, args.second):
        if not path.is_file():
            raise ValueError(f"{path}: no such file; give two audio files, deck A's then deck B's")
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("stemdeck")
    apply_theme(app)
    settings = QSettings("stemdeck", "stemdeck")
    config = SessionConfig(
        model=args.model or settings.value("model") or None,
        output_device=args.output,
        headless=headless,
        worker="thread" if headless else "process",
        precision=args.precision,
        network_backend=args.backend,
        calibrate=False,
    )
    session = DecksSession(config)
    window = DecksWindow(session, settings)
    _remember_midi_ports(args, settings)
    midi = _start_decks_midi(window, session, args)
    if args.size is not None:
        window.resize(*args.size)
    window.show()
    stopper = _quit_on_signals(app)  # noqa: F841 (kept alive while the window runs)
    session.start(config.model)
    session.open_file(0, args.file)
    session.open_file(1, args.second)
    try:
        if headless:
            return _decks_screenshot(app, window, session, args.screenshot)
        app.exec()
        return 0
    finally:
        _shut_down(session, midi)


def _start_decks_midi(window, session, args):
    """MIDI for two decks (README: Two decks, MIDI): deck A on channel 1, deck B on channel 2."""
    from stemdeck.engine.midi.cli import start_midi
    from stemdeck.gui.decks_session import DecksControls

    try:
        return start_midi(DecksControls(session), args)
    except Exception as exc:  # noqa: BLE001 - a missing controller must not stop the mixer
        window.show_error(f"MIDI: {str(exc).splitlines()[0]}")
        return None


def _decks_screenshot(app, window, session, path: Path) -> int:
    """Both decks loaded, A playing a few seconds on the master, B cued in the headphones."""
    deadline = time.monotonic() + 120
    while not session.idle.is_set() or None in session.tracks:
        app.processEvents()
        if time.monotonic() > deadline or (session.idle.is_set() and session.decks is None):
            raise ValueError("the model or the tracks did not load within 120 s; nothing rendered")
        time.sleep(0.01)
    import numpy as np

    decks = session.decks
    decks.deck("A").wait_separated(int(3 * decks.samplerate), timeout_s=60)
    decks.deck("A").play()
    decks.set_cue("B")
    out = np.zeros((BLOCK_FRAMES, 2 * decks.channels), np.float32)
    return _play_and_grab(app, window, path, functools.partial(decks.process_block, out))


def _quit_on_signals(app):
    """Ctrl-C and SIGTERM close the window as Quit does, the session shut down in order: no
    KeyboardInterrupt traceback from whatever slot ran, no leaked shared memory. Python runs its
    signal handlers only between bytecodes, so a timer wakes it while Qt waits for events."""
    import signal

    from PyQt6.QtCore import QTimer

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: app.quit())
    timer = QTimer()
    timer.timeout.connect(lambda: None)
    timer.start(SIGNAL_POLL_MS)
    return timer


def _shut_down(session, midi) -> None:
    """Audio first, then MIDI: rtmidi holds the GIL through its JACK port calls, and this process's
    JACK audio client needs the GIL every cycle (in one process with another rtmidi client, a
    port closed while that audio client ran has hung the tests)."""
    session.close()
    try:
        from stemdeck.engine.audio.jack_output import close_session_output
    except ImportError:  # an engine without its own JACK client
        pass
    else:
        close_session_output()
    if midi is not None:
        midi.close()


def _remember_midi_ports(args, settings) -> None:
    """Ports given on the command line are remembered; without any, the last ones are used."""
    keys = (("midi_in", "midi/in"), ("midi_out", "midi/out"))
    if args.midi_in or args.midi_virtual:
        for attribute, key in keys:
            settings.setValue(key, getattr(args, attribute) or "")
        settings.setValue("midi/virtual", bool(args.midi_virtual))
        return
    for attribute, key in keys:
        setattr(args, attribute, settings.value(key) or None)
    args.midi_virtual = str(settings.value("midi/virtual", "false")).lower() == "true"


def _start_midi(window, session, args):
    from stemdeck.engine.midi.cli import start_midi
    from stemdeck.gui.main_window import EngineControls

    try:
        controller = start_midi(EngineControls(session), args)
    except Exception as exc:  # noqa: BLE001 - a missing controller must not stop the mixer
        window.show_error(f"MIDI: {str(exc).splitlines()[0]}")
        return None
    window.midi = controller
    return controller


def _screenshot(app, window, session, path: Path) -> int:
    """Wait for the model and track, play a few seconds through the engine, grab the window."""
    deadline = time.monotonic() + 120
    while not session.idle.is_set() or session.engine is None:
        app.processEvents()
        if time.monotonic() > deadline:
            raise ValueError("the model or track did not load within 120 s; nothing rendered")
        time.sleep(0.01)
    app.processEvents()
    engine = session.engine
    import numpy as np

    out = np.zeros((BLOCK_FRAMES, engine.config.channels), np.float32)
    render = None
    if session.track is not None:
        engine.wait_separated(int(3 * engine.config.samplerate), timeout_s=60)
        engine.play()
        render = functools.partial(engine.process_deck_block, out)
    return _play_and_grab(app, window, path, render)


def _play_and_grab(app, window, path: Path, render_block) -> int:
    """``render_block`` run for the screenshot's blocks (None: nothing plays) with the window
    redrawn as it goes, then the window saved to ``path``."""
    if render_block is not None:
        for block in range(SCREENSHOT_BLOCKS):
            render_block()
            if block % 6 == 0:
                window.refresh()
                app.processEvents()
    window.refresh()
    app.processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(path), "PNG"):
        raise ValueError(f"could not write {path}")
    print(path)
    return 0
