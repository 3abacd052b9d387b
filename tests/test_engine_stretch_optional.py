"""The time-stretcher is an optional extra (Rubber Band is GPL): without it tempo and key say in
one line how to add it, and everything else, tempo 1 and key 0 included, plays as before."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from stemdeck.engine.config import EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.stretch.stretcher import STRETCH_EXTRA, StretchUnavailable, stretch_available
from stemdeck.models.nets.passthrough import PassThrough

SR = 44100


@pytest.fixture
def without_stretcher(monkeypatch):
    monkeypatch.setitem(sys.modules, "pylibrb", None)  # `import pylibrb` now raises ImportError
    assert not stretch_available()


def test_the_stretcher_is_installed_for_the_tests():
    assert stretch_available()


def test_without_the_extra_tempo_and_key_say_how_to_add_it(without_stretcher):
    engine = Engine(PassThrough(), EngineConfig(precision="fp32", worker="thread", beat_tracking=False))
    try:
        engine.load_array(np.full((2, SR), 0.25, np.float32))
        for change in (lambda: engine.set_tempo(0.8), lambda: engine.set_key(-2)):
            with pytest.raises(StretchUnavailable, match=r"^tempo and key need Rubber Band \(GPL-2\.0\)") as caught:
                change()
            assert "pip install 'stemdeck[stretch]'" in str(caught.value) and "\n" not in str(caught.value)
        engine.set_tempo(1.0)  # as recorded: no stretcher needed
        engine.set_key(0)
        assert (engine.tempo, engine.key) == (1.0, 0.0)
        engine.play()
        out = np.zeros((256, 2), np.float32)
        engine.process_deck_block(out)
        assert np.any(out != 0)  # the deck plays on
    finally:
        engine.stop()


@pytest.mark.parametrize("option,value", [("--tempo", "0.8"), ("--key", "-2")])
def test_play_without_the_extra_refuses_tempo_and_key_before_loading_the_model(
    without_stretcher, tmp_path, monkeypatch, capsys, option, value
):
    from conftest import write_tone

    import stemdeck.models.cli
    import stemdeck.models.loading
    from stemdeck.cli import main

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(stemdeck.models.cli, "load_for_command", loaded)
    monkeypatch.setattr(stemdeck.models.loading, "load_or_fetch", loaded)
    write_tone(tmp_path / "song.wav", seconds=2.0)
    monkeypatch.chdir(tmp_path)
    assert main(["play", "song.wav", "--model", "passthrough", option, value]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"stemdeck: error: {option} {float(value):g}: {STRETCH_EXTRA}"]
