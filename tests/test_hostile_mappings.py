"""Hostile and malformed MIDI mapping files (issue 11, items 2-4): refused in one line, in bounded
memory, and never a non-finite gain for the mixer."""

from __future__ import annotations

import math
import time
import tracemalloc
from pathlib import Path

import pytest

from stemdeck.engine.midi.bindings import Binding, Mapping
from stemdeck.engine.midi.mapping_file import MAX_BINDINGS, MappingError, load_mapping


def _bindings_toml(count: int, distinct: bool) -> str:
    """``count`` bindings: all on note 60 (each conflicting with all the others) or all different."""
    tables = []
    for index in range(count):
        number, channel = (index % 128, index // 128 % 16 + 1) if distinct else (60, "any")
        channel = f'"{channel}"' if isinstance(channel, str) else channel
        tables.append(f'[[binding]]\nmessage = "note"\nnumber = {number}\nchannel = {channel}\ncontrol = "play"\n')
    return "\n".join(tables)


def _load_measured(path: Path) -> tuple[Exception | None, float, float]:
    """(error, peak MB allocated by Python, seconds) of loading ``path``; timed without tracemalloc,
    which slows allocation-heavy code several times."""
    start = time.perf_counter()
    error = _load_error(path)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    try:
        _load_error(path)
        peak = tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()
    return error, peak, seconds


def _load_error(path: Path) -> Exception | None:
    try:
        load_mapping(path)
    except MappingError as exc:
        return exc
    return None


def test_8000_bindings_are_refused_before_they_are_checked(tmp_path):
    """The probe's file: 8000 bindings on one note took 2.57 GB in the pairwise conflict check."""
    path = tmp_path / "many.toml"
    path.write_text(_bindings_toml(8000, distinct=False))
    error, peak_mb, seconds = _load_measured(path)
    assert error is not None and f"has 8000 [[binding]] tables; at most {MAX_BINDINGS} are allowed" in str(error)
    assert "\n" not in str(error)
    assert peak_mb < 100 and seconds < 5, (peak_mb, seconds)  # the TOML parse itself, nothing more


def test_the_conflict_check_is_linear_at_the_cap(tmp_path):
    """The most bindings allowed, all on one note: one clean conflict line, in a few MB (pairwise it
    was 523 776 pairs)."""
    path = tmp_path / "conflicting.toml"
    path.write_text(_bindings_toml(MAX_BINDINGS, distinct=False))
    error, peak_mb, seconds = _load_measured(path)
    assert error is not None and "note 60 on any channel drives both play and play (lines 1 and 7); keep one" in str(
        error
    )
    assert peak_mb < 20 and seconds < 5, (peak_mb, seconds)
    same = Mapping([Binding("note", 60, "play")] * 4096)
    assert len(same.conflicts()) == 4095  # each binding once, paired with the first it overlaps


def test_many_distinct_bindings_load(tmp_path):
    path = tmp_path / "distinct.toml"
    path.write_text(_bindings_toml(MAX_BINDINGS, distinct=True))
    assert len(load_mapping(path).bindings) == MAX_BINDINGS


def test_conflicts_match_the_pairwise_definition():
    bindings = [
        Binding("cc", 1, "gain", 1, 0),
        Binding("cc", 1, "gain", 2, 1),
        Binding("cc", 1, "dry", None),
        Binding("cc", 2, "dry", 3),
        Binding("note", 1, "play", 1),
        Binding("cc", 2, "cue", 3),
    ]
    found = Mapping(bindings).conflicts()
    assert [(bindings.index(a), bindings.index(b)) for a, b in found] == [(0, 2), (3, 5)]
    assert all(a.overlaps(b) for a, b in found)


SCENE = "[[scene]]\nprogram = 5\n"
MALFORMED = {
    "NaN scene gain": SCENE + "gain_db = { vocals = nan }\n",
    "infinite scene gain": SCENE + "gain_db = { vocals = inf }\n",
    "minus infinite scene gain": SCENE + "gain_db = { drums = -inf }\n",
    "huge scene gain": SCENE + "gain_db = { drums = 1e308 }\n",
    "scene gain text": SCENE + 'gain_db = { drums = "loud" }\n',
    "scene gain a list ('list' has no .items)": SCENE + "gain_db = [1, 2]\n",
    "scene mute text": SCENE + 'mute = "vocals"\n',
    "scene name a table": SCENE + "name = { a = 1 }\n",
    "scene a table, not a list": "[scene]\nprogram = 1\n",
    "binding a number": "binding = 3\n",
    "midi a number": "midi = 3\n",
    "1 MB of comments": "#" + "x" * (1 << 20) + "\n",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_mappings_are_one_line_through_the_command(tmp_path, capsys, case):
    from stemdeck.cli import main

    path = tmp_path / "map.toml"
    path.write_text(MALFORMED[case])
    code = main(["midi", "show", "--midi-map", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("stemdeck: error: "), err
    assert "Traceback" not in err[0] and str(path) in err[0]


def test_finite_scene_gains_load(tmp_path):
    path = tmp_path / "map.toml"
    path.write_text(SCENE + 'name = "quiet"\ngain_db = { drums = -120, vocals = 12, bass = -6.5 }\n')
    scene = load_mapping(path).scenes[0]
    assert scene.gain_db == {0: -120.0, 3: 12.0, 1: -6.5} and all(map(math.isfinite, scene.gain_db.values()))
