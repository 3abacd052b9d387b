"""Issue 16: the deck opens an NI STEM file and plays its stems as they are, separating nothing:
muting vocals plays the sum of the other three stems the file was written from."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from conftest import stemdeck_command

from stemdeck.engine.config import EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.models.demo import SAMPLERATE, demo_stems
from stemdeck.models.stem_file import read_stem_file, write_stem_file

BLOCK = 512
RAMP_FRAMES = 512  # the mute ramps in over 10 ms (441 frames): compare after it
ALAC_STEP = 2.0**-23  # one 24-bit step


class CountingModel(torch.nn.Module):
    """The tiny model, counting its forwards: a deck playing a stem file must not call it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner, self.calls = model, 0
        self.sources, self.samplerate, self.segment = model.sources, model.samplerate, model.segment
        self.audio_channels = model.audio_channels

    def forward(self, mix):
        self.calls += 1
        return self.inner(mix)


@pytest.fixture(scope="module")
def stem_file(tmp_path_factory):
    stems = {name: stem[:, : 2 * SAMPLERATE + 333] for name, stem in demo_stems(3.0).items()}
    path = tmp_path_factory.mktemp("deck") / "song.stem.mp4"
    write_stem_file(path, sum(stems.values()), stems, SAMPLERATE)
    return path, stems


@pytest.mark.parametrize(("worker", "by_path"), [("thread", True), ("process", False)])
def test_deck_plays_a_stem_files_stems_without_separating(tiny_model, stem_file, worker, by_path):
    """Engine.load(path) knows a stem file; Engine.load_separated takes its arrays."""
    path, written = stem_file
    master, stems, samplerate = read_stem_file(path)
    model = CountingModel(tiny_model)
    engine = Engine(model, EngineConfig(worker=worker, precision="fp32", cache_stems=False, samplerate=SAMPLERATE))
    out = np.zeros((BLOCK, 2), np.float32)
    played = []
    try:
        if by_path:
            engine.load(path)
        else:
            engine.load_separated(master, stems, samplerate)
        calls_after_load = model.calls  # the thread backend warms the model up once when a session starts
        engine.set_mute("vocals")
        engine.play()
        for _ in range(master.shape[-1] // BLOCK):
            engine.process_deck_block(out)
            played.append(out.T.copy())  # a block played dry (the master) would hold the vocals
        status = engine.status()
    finally:
        engine.stop()
    assert status.windows_done == 0 and model.calls == calls_after_load and not status.fallback
    played = np.concatenate(played, axis=1)[:, RAMP_FRAMES:]
    frames = played.shape[-1] + RAMP_FRAMES
    without_vocals = sum(written[name] for name in ("drums", "bass", "other"))[:, RAMP_FRAMES:frames]
    # three stems, each within half a 24-bit step of what was written, summed in float32
    assert np.abs(played - without_vocals).max() <= 3 * ALAC_STEP
    vocals = written["vocals"][:, RAMP_FRAMES:frames]
    assert np.sqrt(np.mean((played - master[:, RAMP_FRAMES:frames]) ** 2)) > 0.5 * np.sqrt(np.mean(vocals**2))


def test_stems_the_model_has_no_place_for_are_refused(tiny_model, stem_file):
    master, stems, samplerate = read_stem_file(stem_file[0])
    engine = Engine(tiny_model, EngineConfig(worker="thread", precision="fp32", cache_stems=False))
    try:
        with pytest.raises(ValueError, match="have no place for kazoo"):
            engine.load_separated(master, {**stems, "kazoo": stems["bass"]}, samplerate)
    finally:
        engine.stop()


def test_play_says_what_is_wrong_with_a_broken_stem_file_in_one_line(tmp_path, stem_file):
    """`stemdeck play` reads a .stem.mp4 with the stem reader, before the model or a device:
    a damaged one is one line and a non-zero exit, no traceback."""
    broken = tmp_path / "broken.stem.mp4"
    broken.write_bytes(stem_file[0].read_bytes()[:5000])
    result = subprocess.run(stemdeck_command("play", broken), capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(broken) in lines[0] and "not a readable MP4 file" in lines[0]
