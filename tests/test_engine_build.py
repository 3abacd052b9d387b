"""stemdeck.engine.build: the one way the command line and the GUI make an engine (issue 18 items 1 and 4)."""

import pytest

from stemdeck.engine.build import build_engine, device_block_frames, device_rate, session_window
from stemdeck.engine.config import PRESETS, WindowConfig
from stemdeck.models.nets.passthrough import PassThrough


def test_a_target_latency_is_a_third_per_hop_two_hops_of_span_half_a_hop_ahead():
    window = WindowConfig.for_latency(1.5)
    assert (window.window_s, window.hop_s, window.lookahead_s, window.span_s) == pytest.approx((2.25, 0.5, 0.25, 1.0))
    assert session_window("quality", 1.5) == window
    assert session_window("low-latency") is PRESETS["low-latency"]
    with pytest.raises(ValueError, match="--latency must be positive"):
        WindowConfig.for_latency(0.0)


def test_build_engine_fixes_rate_block_and_plan():
    engine = build_engine(
        PassThrough(),
        session_window("balanced", 1.5),
        samplerate=48000,
        block_frames=128,
        worker="thread",
        calibrate=False,
    )
    try:
        assert engine.config.samplerate == 48000 and engine.block_frames == 128
        assert engine.window.hop_s == pytest.approx(0.5) and engine.window.span_s == pytest.approx(1.0)
        assert engine.latency_frames == 60128  # lookahead 0.25 s + span 1 s at 48 kHz, plus one block
    finally:
        engine.stop()


def test_on_jack_the_server_fixes_rate_and_block(jack_server):
    from stemdeck.engine.audio.jack_output import close_session_output

    try:
        assert device_rate(None) == 44100  # the test server's rate, whatever the sound card's
        assert device_block_frames(None, 1024) == 256  # its period, not the block asked for
    finally:
        close_session_output()
