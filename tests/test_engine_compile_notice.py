"""The line a first start prints while the audio kernels compile (engine/audio/compile_notice.py)."""

from __future__ import annotations

import time

import pytest

from stemdeck.engine.audio import compile_notice
from stemdeck.engine.audio.compile_notice import KERNELS_MESSAGE, notice_if_slow


def test_a_long_wait_is_announced_once(capfd):
    with notice_if_slow("compiling ...", after_s=0.05):
        time.sleep(0.4)
    assert capfd.readouterr().err == "compiling ...\n"


def test_a_short_wait_says_nothing_even_after_the_timer_would_have_fired(capfd):
    with notice_if_slow("compiling ...", after_s=0.2):
        pass
    time.sleep(0.4)
    assert capfd.readouterr().err == ""


def test_a_notice_inside_another_adds_no_second_line(capfd):
    with notice_if_slow("outer ...", after_s=0.05):
        with notice_if_slow("inner ...", after_s=0.05):
            time.sleep(0.4)
        time.sleep(0.1)
    with notice_if_slow("next ...", after_s=0.05):  # the outer one's end lets the next speak
        time.sleep(0.4)
    assert capfd.readouterr().err == "outer ...\nnext ...\n"


def test_an_error_in_the_block_still_stops_the_timer(capfd):
    with pytest.raises(RuntimeError), notice_if_slow("compiling ...", after_s=0.2):
        raise RuntimeError("broken kernel")
    time.sleep(0.4)
    assert capfd.readouterr().err == ""


def test_an_engine_starting_its_first_session_says_it_is_compiling_while_it_is(monkeypatch, capfd):
    """Through the engine: its warm-up (made slow here, as a first compile is) is announced once;
    the same warm-up from Numba's cache, as fast as it is, says nothing."""
    from conftest import pass_through_deck

    from stemdeck.engine import engine as engine_module

    engine = pass_through_deck()
    try:
        engine._warm_kernels()  # from the cache (or compiled by this call: a first run of the suite)
        capfd.readouterr()
        engine._warm_kernels()
        assert capfd.readouterr().err == ""

        real_warm_up = engine_module.warm_up_stretched

        def compiling(*args):
            time.sleep(0.5)
            real_warm_up(*args)

        monkeypatch.setattr(engine_module, "warm_up_stretched", compiling)
        monkeypatch.setattr(compile_notice, "NOTICE_AFTER_S", 0.1)
        engine._warm_kernels()
        assert capfd.readouterr().err == KERNELS_MESSAGE + "\n"
    finally:
        engine.stop()
