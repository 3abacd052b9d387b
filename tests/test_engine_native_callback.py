"""The JACK process callback as machine code (engine/audio/native.py): it plays while Python's
interpreter lock is held elsewhere, renders what the Python callback renders, and follows a
track loaded while the output is open."""

import ctypes
import os
import sys
import time

import numpy as np
import pytest
from conftest import JACK_PERIOD, JACK_RATE, pass_through_deck, sine_track
from numba import njit

from stemdeck.engine.audio.jack_output import session_output
from stemdeck.engine.audio.native import (
    COMPILING_MESSAGE,
    NativeUnavailable,
    _compile_render,
    flatten,
    render_cached,
    render_function,
    structure,
)
from stemdeck.engine.audio.state import PLAYHEAD
from stemdeck.engine.audio.stretched import stretched_deck_block
from stemdeck.engine.engine import Engine

HOLD_S = 0.5


def loaded(engine: Engine, track: np.ndarray) -> Engine:
    engine.load_array(track)
    assert engine.wait_separated(track.shape[-1] - 1, timeout_s=60)
    return engine


def hold_the_interpreter_lock(seconds: float) -> None:
    """Keep Python busy in this thread, never letting another Python thread run meanwhile."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(seconds * 4)
    try:
        end, spins = time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            spins += 1
    finally:
        sys.setswitchinterval(interval)


def cycles_and_frames_while_held(engine: Engine) -> tuple[int, int]:
    output = session_output()
    cycles, playhead = output.cycles, int(engine.shared.audio[PLAYHEAD])
    hold_the_interpreter_lock(HOLD_S)
    return output.cycles - cycles, int(engine.shared.audio[PLAYHEAD]) - playhead


def test_the_deck_plays_on_while_python_holds_the_interpreter_lock(jack_server, monkeypatch):
    engine = loaded(pass_through_deck(), sine_track(441, 20.0, 0.3))
    try:
        engine.start_output()
        engine.play()
        time.sleep(0.3)
        assert session_output().native is True
        cycles, frames = cycles_and_frames_while_held(engine)
        expected_cycles = HOLD_S * JACK_RATE / JACK_PERIOD  # 86
        # on a loaded 2-core machine some cycles come late, none wait for the interpreter
        assert cycles >= 0.5 * expected_cycles, cycles
        assert frames >= 0.5 * HOLD_S * JACK_RATE, frames  # the deck's kernel ran: the playhead moved

        # the same deck through the Python callback stops while the lock is held: what the test
        # above would see without the native path
        engine.stop_output()
        monkeypatch.setenv("STEMDECK_PYTHON_CALLBACK", "1")
        engine.start_output()
        time.sleep(0.3)
        assert session_output().native is False
        cycles, frames = cycles_and_frames_while_held(engine)
        assert cycles <= 0.2 * expected_cycles, cycles
    finally:
        engine.stop()


def render_with(engine: Engine, blocks: int, native: bool) -> np.ndarray:
    """``blocks`` deck blocks from the start, through the kernel called from Python or the cfunc."""
    out = np.zeros((JACK_PERIOD, engine.config.channels), np.float32)
    rendered = []
    arguments = (engine._deck_buffers, engine.practice.buffers)
    if native:
        cfunc = render_function(stretched_deck_block, arguments, live=False)
        call = ctypes.CFUNCTYPE(ctypes.c_int32, *[ctypes.c_int64] * 7)(cfunc.address)
        words = []
        for argument in arguments:
            flatten(argument, words)
        table = np.array(words, np.int64)
    engine.play()
    for _ in range(blocks):
        if native:
            call(JACK_PERIOD, table.ctypes.data, out.ctypes.data, out.shape[1], 0, 0, 0)
        else:
            stretched_deck_block(out, *arguments, False)
        rendered.append(out.copy())
    return np.concatenate(rendered)


def test_the_compiled_render_plays_what_the_kernel_plays():
    track = sine_track(220, 3.0, 0.4) * np.linspace(0.2, 1.0, int(3.0 * JACK_RATE), dtype=np.float32)
    from_python, from_cfunc = (loaded(pass_through_deck(), track) for _ in range(2))
    try:
        for engine in (from_python, from_cfunc):
            engine.set_gain("bass", -6.0)
            engine.set_mute("vocals")
        expected = render_with(from_python, 100, native=False)
        played = render_with(from_cfunc, 100, native=True)
    finally:
        from_python.stop()
        from_cfunc.stop()
    assert np.abs(expected).max() > 0.05  # music (0.075 here), not silence
    # the same kernel compiled into the render function: equal but for float32 rounding where
    # LLVM orders a sum differently (measured: 7.5e-9 at most, on 7 % of the samples)
    np.testing.assert_allclose(played, expected, rtol=0, atol=1e-6)


def test_a_track_loaded_while_the_output_is_open_is_played_from_its_own_arrays(jack_server):
    engine = loaded(pass_through_deck(), sine_track(441, 20.0, 0.5))
    try:
        engine.start_output()
        engine.play()
        time.sleep(0.3)
        route = session_output().route
        loaded(engine, sine_track(441, 20.0, 0.2))  # the GUI's load: the output stays open
        engine.play()
        time.sleep(0.4)
        assert session_output().route is not route  # a new route, from the new track's arrays
        master_peak = float(engine.shared.levels[0, -1])
        assert master_peak == pytest.approx(0.2, abs=0.02)
    finally:
        engine.stop()


def test_what_cannot_be_handed_to_machine_code_is_named():
    with pytest.raises(NativeUnavailable, match="not contiguous"):
        flatten(np.zeros((4, 4), np.float32)[:, ::2])
    with pytest.raises(NativeUnavailable, match="float"):
        structure(0.5)
    assert os.environ.get("STEMDECK_PYTHON_CALLBACK", "") in ("", "0")  # the suite runs the native path


def test_through_portaudio_too_the_deck_plays_on_while_python_holds_the_lock(jack_server, monkeypatch):
    """Without stemdeck's own JACK client (a sound card through PortAudio), PortAudio calls the
    compiled callback: here PortAudio's JACK host API stands in for the sound card."""
    import stemdeck.engine.engine as engine_module

    monkeypatch.setattr(engine_module, "jack_serves", lambda *devices: None)
    engine = loaded(pass_through_deck(), sine_track(441, 20.0, 0.3))
    try:
        for native in (True, False):
            monkeypatch.setenv("STEMDECK_PYTHON_CALLBACK", "0" if native else "1")
            engine.start_output()
            assert hasattr(engine._stream, "native_slots") is native
            engine.play()
            time.sleep(0.3)
            playhead = int(engine.shared.audio[PLAYHEAD])
            hold_the_interpreter_lock(HOLD_S)
            frames = int(engine.shared.audio[PLAYHEAD]) - playhead
            if native:
                assert frames >= 0.5 * HOLD_S * JACK_RATE, frames
                loaded(engine, sine_track(441, 20.0, 0.2))  # a new track while the stream is open
                engine.play()
                time.sleep(0.3)
                assert float(engine.shared.levels[0, -1]) == pytest.approx(0.2, abs=0.02)
            else:
                assert frames <= 0.2 * HOLD_S * JACK_RATE, frames
            engine.stop_output()
    finally:
        engine.stop()


@njit
def _silent_block(outdata, xrun):
    outdata[:] = 0.0


def test_a_first_session_says_it_compiles_the_callback_and_a_cached_one_does_not(tmp_path, monkeypatch, capfd):
    """The first session after an install compiles the render (20 s on a busy machine): one line
    says so before; once Numba's cache holds it, nothing is said. A one-line kernel keeps it quick."""
    monkeypatch.setenv("STEMDECK_NATIVE_DIR", str(tmp_path))
    assert _compile_render(_silent_block, (), False).address
    assert capfd.readouterr().err == COMPILING_MESSAGE + "\n"
    (module,) = tmp_path.glob("stemdeck_render_*.py")
    assert render_cached(module)
    assert _compile_render(_silent_block, (), False).address  # a later session: loaded from the cache
    assert capfd.readouterr().err == ""
    for cached in (tmp_path / "__pycache__").glob("*.nbc"):
        cached.unlink()
    assert not render_cached(module)  # the decision follows the machine code, not the module
