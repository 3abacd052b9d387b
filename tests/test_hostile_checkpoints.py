"""Hostile and malformed model files (issue 11, items 1-3): each is refused in one line, before
memory is spent on it, and nothing is written outside the output folder.

Every file is built here, byte for byte what the probe used: checkpoints whose source names climb
out of ``-o``, ``.th`` files that build a ``Fraction('1e1000000000')`` or call ``HTDemucs(...)``
with huge sizes while unpickling, safetensors metadata asking for 4096 channels or a 1 GHz
sample rate, a 509-byte YAML "billion laughs", a bag listing one model 100 times, and a table
of malformed metadata that used to end in tracebacks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from conftest import HDEMUCS_MMI_KW, HTDEMUCS_KW, TINY_HT_KW, write_tone

from stemdeck.models import CheckpointError, HDemucs, HTDemucs, load_checkpoint, save_safetensors
from stemdeck.models.checkpoint import _encode_json
from stemdeck.models.limits import (
    BOOLEANS,
    CHOICES,
    FLOAT_LISTS,
    FLOAT_RANGES,
    INT_RANGES,
    check_hyperparameters,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["drums", "bass", "other", "vocals"]


# -- builders ------------------------------------------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)``: what a hostile file asks the unpickler to run."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def write_th(path: Path, kwargs: dict, klass=HTDemucs, state=None, args=()) -> Path:
    torch.save({"klass": klass, "args": list(args), "kwargs": kwargs, "state": state or {}, "training_args": {}}, path)
    return path


def write_safetensors(path: Path, kwargs, args="[]", klass="demucs.htdemucs.HTDemucs", state=None) -> Path:
    from safetensors.torch import save_file

    kwargs = kwargs if isinstance(kwargs, str) else json.dumps(_encode_json(kwargs))
    save_file(state or {"x": torch.zeros(1)}, str(path), metadata={"klass": klass, "args": args, "kwargs": kwargs})
    return path


def write_bag(folder: Path, text: str, name: str = "bag.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def tiny_kwargs(**changes) -> dict:
    return dict(_encode_json(HTDemucs(**TINY_HT_KW).init_kwargs), **changes)


# -- item 1: source names become file names ------------------------------------------------------

BAD_SOURCES = {
    "climbs out": ["../../escaped", "bass", "other", "vocals"],
    "absolute": ["/tmp/stemdeck-escaped", "bass"],
    "subfolder": ["a/b", "bass"],
    "dot-dot alone": ["..", "bass"],
    "empty name": ["", "bass"],
    "space and newline": ["vo cals\n", "bass"],
    "too long": ["x" * 33, "bass"],
    "repeated (case-insensitively)": ["Drums", "drums"],
    "not a list": "drums",
    "not text": [1, 2],
    "17 sources": [f"s{i}" for i in range(17)],
    "none": [],
}


@pytest.mark.parametrize("fmt", ["th", "safetensors", "bag"])
@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_checkpoints_with_unsafe_source_names_are_refused_in_every_format(tmp_path, case, fmt):
    kwargs = dict(TINY_HT_KW, sources=BAD_SOURCES[case])
    if fmt == "th":
        path = write_th(tmp_path / "m.th", kwargs)
    else:
        path = write_safetensors(tmp_path / "aaaa1111.safetensors", kwargs)
        if fmt == "bag":
            path = write_bag(tmp_path, "models: [aaaa1111]\n")
    with pytest.raises(
        CheckpointError,
        match=r"refused: (source name .* is not a short identifier|sources must be|"
        r"source names repeat)",
    ) as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_model_classes_refuse_unsafe_source_names_when_built_in_code():
    with pytest.raises(ValueError, match="not a short identifier"):
        HTDemucs(sources=["../x"], channels=4, depth=1, t_layers=0)
    with pytest.raises(ValueError, match="repeat"):
        HDemucs(sources=["a", "A"], channels=4, depth=1)


def _cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    from stemdeck.cli import main

    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_separate_with_a_climbing_source_name_writes_nothing_outside_the_output(tmp_path, capsys):
    """The probe's exact case: a safetensors whose first source climbs out with ``../``."""
    work = tmp_path / "work"
    work.mkdir()
    victim = tmp_path / "escaped.wav"
    victim.write_bytes(b"user data")
    model = HTDemucs(**dict(TINY_HT_KW, sources=["drums", "bass", "other", "vocals"]))
    path = work / "evil.safetensors"
    save_safetensors(model, path)
    metadata = tiny_kwargs(sources=["../../escaped", "bass", "other", "vocals"])
    from safetensors.torch import load_file, save_file

    save_file(
        load_file(str(path)),
        str(path),
        metadata={"klass": "demucs.htdemucs.HTDemucs", "args": "[]", "kwargs": json.dumps(metadata)},
    )
    song = work / "song.wav"
    write_tone(song, seconds=0.5)
    before = sorted(p for p in tmp_path.rglob("*"))
    code, err = _cli(["separate", str(song), "--model", str(path), "-o", str(work / "out"), "--force"], capsys)
    assert code == 1 and len(err) == 1, err
    assert "source name '../../escaped' is not a short identifier" in err[0] and "Traceback" not in err[0]
    assert sorted(p for p in tmp_path.rglob("*")) == before  # no file anywhere, inside -o or out of it
    assert victim.read_bytes() == b"user data"


# -- item 2: bounded loading ---------------------------------------------------------------------


def _hostile_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, the one-line message expected); every one of them small."""
    files = {}

    def add(name, path, message):
        files[name] = (path, message)

    add(
        "Fraction('1e1000000000') in a .th",
        write_th(folder / "fraction.th", dict(TINY_HT_KW, segment=_Reduce(Fraction, "1e1000000000"))),
        r"refused to load: a fraction must be short 'p/q' text",
    )
    add(
        "Fraction(10**40, 3) in a .th",
        write_th(folder / "fraction2.th", dict(TINY_HT_KW, segment=_Reduce(Fraction, 10**40, 3))),
        r"refused to load: a fraction needs integers below 10\^12",
    )
    add(
        "HTDemucs(channels=4096) called while unpickling",
        write_th(folder / "ctor.th", {}, klass=_Reduce(HTDemucs, SOURCES, 2, 4096)),
        r"refused to load: the file calls stemdeck\.models\.nets\.htdemucs\.HTDemucs\(\.\.\.\) while it is read",
    )
    add(
        "bytearray(10**10) (allowed by torch, not by us)",
        write_th(folder / "bytes.th", dict(TINY_HT_KW, segment=_Reduce(bytearray, 10**10))),
        r"refused to load: the file asks to run (__builtin__|builtins)\.bytearray",
    )
    add(
        ".th kwargs channels=4096",
        write_th(folder / "wide.th", dict(TINY_HT_KW, channels=4096)),
        r"refused: channels must be a whole number from 1 to 512, not 4096",
    )
    add(
        "safetensors channels=4096",
        write_safetensors(folder / "wide.safetensors", tiny_kwargs(channels=4096)),
        r"refused: channels must be a whole number from 1 to 512, not 4096",
    )
    add(
        "safetensors samplerate=1e9",
        write_safetensors(folder / "rate.safetensors", tiny_kwargs(samplerate=10**9)),
        r"refused: samplerate must be a whole number from 8000 to 384000, not 1000000000",
    )
    add(
        "safetensors segment 1e9 s",
        write_safetensors(folder / "seg.safetensors", tiny_kwargs(segment=1e9)),
        r"refused: segment must be a number from 1 to 120",
    )
    add(
        "safetensors 1000 transformer layers",
        write_safetensors(folder / "deep.safetensors", tiny_kwargs(t_layers=1000)),
        r"refused: t_layers must be a whole number",
    )
    add(
        "in-range sizes adding up to trillions of parameters",
        write_safetensors(
            folder / "fat.safetensors",
            tiny_kwargs(channels=512, growth=4.0, depth=5, bottom_channels=2048, t_layers=16, t_hidden_scale=16.0),
        ),
        r"refused: the model would have \d+ M parameters \(at most 200 M\)",
    )
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    laughs += "models: *i\n"  # 9**9 = 387 M strings once expanded (printed, or turned into names)
    assert len(laughs) < 600
    add(
        "YAML billion laughs (nested aliases)",
        write_bag(folder, laughs, "laughs.yaml"),
        r"not a valid bag file \(YAML aliases \(\*name\) are not allowed",
    )
    add(
        "bag listing one model 100 times",
        write_bag(folder, "models: [" + ", ".join(["tiny"] * 100) + "]\n", "hundred.yaml"),
        r"a bag file needs a 'models' list of 1 to 16 signatures",
    )
    return files


BOUNDED_LOADER = textwrap.dedent("""
    import json, resource, sys, time
    from pathlib import Path
    from stemdeck.models import load_checkpoint
    from stemdeck.models.registry import bundled_path

    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    load_checkpoint(bundled_path("tiny"))  # warm-up: lazy imports and thread pools before the cap
    limit = vm_bytes() + int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    control = time.perf_counter()
    load_checkpoint(bundled_path("tiny"))  # a real model still loads under the cap
    print(json.dumps({"name": "control", "error": None, "seconds": time.perf_counter() - control}), flush=True)
    for name, path in json.loads(sys.argv[2]).items():
        start = time.perf_counter()
        try:
            load_checkpoint(path)
            result = {"error": None}
        except BaseException as exc:
            result = {"error": type(exc).__name__, "message": str(exc)}
        result.update(name=name, seconds=time.perf_counter() - start)
        print(json.dumps(result), flush=True)
""")
ADDRESS_SPACE_MIB = 400  # above what loading the bundled model takes, far below what the bombs ask


def test_hostile_files_fail_fast_in_one_line_under_a_memory_cap(tmp_path):
    """Each file is loaded in a child process whose address space is capped a few hundred MB above
    what it uses after loading a real model: a bomb that allocated would die of MemoryError, one
    that spun (the Fraction) would hit the timeout; each must instead end in its own clean line."""
    files = _hostile_files(tmp_path)
    save_safetensors(HTDemucs(**TINY_HT_KW), tmp_path / "tiny.safetensors")  # the bag's one model, exists
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    paths = {name: str(path) for name, (path, _) in files.items()}
    child = subprocess.run(
        [sys.executable, "-c", BOUNDED_LOADER, str(ADDRESS_SPACE_MIB), json.dumps(paths)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )
    results = {r["name"]: r for r in map(json.loads, child.stdout.splitlines())}
    assert child.returncode == 0, child.stderr[-2000:]
    assert results["control"]["error"] is None
    for name, (_, message) in files.items():
        result = results[name]
        assert result["error"] == "CheckpointError", (name, result)
        assert "\n" not in result["message"], (name, result["message"])
        assert re.search(message, result["message"]), (name, result["message"])
        assert result["seconds"] < 5, (name, result["seconds"])


def test_compressed_th_records_are_refused_before_any_is_inflated(tmp_path):
    """torch never compresses; a deflated record is how a small file inflates to gigabytes."""
    plain = write_th(tmp_path / "plain.th", dict(TINY_HT_KW))
    packed = tmp_path / "packed.th"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as target:
        for record in source.infolist():
            target.writestr(record.filename, source.read(record))
        target.writestr("archive/data/999", b"\0" * (64 << 20))  # 64 MB of zeros in 64 kB
    assert packed.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="refused to load: compressed records"):
        load_checkpoint(packed)


def test_every_constructor_argument_has_a_limit_and_official_models_pass():
    ruled = set(INT_RANGES) | set(FLOAT_RANGES) | BOOLEANS | set(CHOICES) | set(FLOAT_LISTS) | {"sources"}
    import inspect

    for cls in (HTDemucs, HDemucs):
        assert set(inspect.signature(cls).parameters) <= ruled, cls
    for cls, kwargs in ((HTDemucs, HTDEMUCS_KW), (HDemucs, HDEMUCS_MMI_KW), (HTDemucs, TINY_HT_KW)):
        bound = inspect.signature(cls).bind(**kwargs)
        bound.apply_defaults()
        check_hyperparameters(bound.arguments)  # raises if an official configuration were refused


# -- item 3: malformed metadata, through the real command ---------------------------------------


def _malformed(folder: Path) -> dict[str, str]:
    """name -> the --model argument; each must end in one line, exit code 1."""
    tiny_state = {k: v.contiguous() for k, v in HTDemucs(**TINY_HT_KW).state_dict().items()}

    def st(name: str, **kw) -> str:
        return str(write_safetensors(folder / f"{name}.safetensors", **kw))

    cases = {
        "kwargs a list ('list' has no .get)": st("k1", kwargs="[1, 2]"),
        "args a table": st("k2", kwargs=tiny_kwargs(), args='{"a": 1}'),
        "sources missing": st("k3", kwargs={"channels": 8}),
        "zero denominator (ZeroDivisionError)": st(
            "k4", kwargs=tiny_kwargs(segment={"_type": "fraction", "numerator": 1, "denominator": 0})
        ),
        "fraction of text": st("k5", kwargs=tiny_kwargs(segment={"_type": "fraction", "numerator": "1e9999"})),
        "nesting 30000 deep (RecursionError)": st("k6", kwargs="[" * 30000 + "]" * 30000),
        "metadata of 200 kB": st("k6b", kwargs="[" + "0," * 100000 + "0]"),
        "metadata not JSON": st("k7", kwargs="{nope"),
        "huge number": st("k8", kwargs='{"sources": ["a"], "channels": ' + "9" * 5000 + "}"),
        "unknown class": st("k9", kwargs=tiny_kwargs(), klass="os.system"),
        "samplerate 44100.5": st("k10", kwargs=tiny_kwargs(samplerate=44100.5)),
        "channels true": st("k11", kwargs=tiny_kwargs(channels=True)),
        "nfft not a power of two": st("k12", kwargs=tiny_kwargs(nfft=3000)),
        "heads do not split the width": st("k13", kwargs=tiny_kwargs(t_heads=7)),
        "norm groups do not split the channels": st("k14", kwargs=tiny_kwargs(norm_groups=3, norm_starts=0)),
        "NaN growth": st("k15", kwargs=tiny_kwargs(growth=float("nan"))),
        "HT Demucs 6 deep (fails on the first chunk)": st("k15b", kwargs=tiny_kwargs(depth=6)),
        "Hybrid Demucs 4 deep (fails on the first chunk)": st(
            "k15c", klass="demucs.hdemucs.HDemucs", kwargs={"sources": SOURCES, "depth": 4}
        ),
        "kernel size 7": st("k15d", kwargs=tiny_kwargs(kernel_size=7)),
        "HT Demucs with a narrower time branch": st("k15f", kwargs=tiny_kwargs(channels_time=4)),
        "HT Demucs growing by 1.5 (widths that do not meet)": st("k15g", kwargs=tiny_kwargs(growth=1.5)),
        "a 0.2 s segment (no frame left at the bottom)": st("k15h", kwargs=tiny_kwargs(segment=0.2)),
        "residual branches of no channel": st("k15e", kwargs=tiny_kwargs(dconv_comp=32)),
        "t_emb unknown": st("k16", kwargs=tiny_kwargs(t_emb="rope")),
        "weights of another model": st("k17", kwargs=tiny_kwargs(channels=12), state=tiny_state),
        "weights missing": st("k18", kwargs=tiny_kwargs()),
        "safetensors of junk": str(_write(folder / "junk.safetensors", os.urandom(300))),
        ".th that is a list": str(_torch_save(folder / "list.th", [1, 2, 3])),
        ".th state a list": str(write_th(folder / "state.th", dict(TINY_HT_KW), state=[1, 2])),
        ".th klass unknown text": str(write_th(folder / "klass.th", dict(TINY_HT_KW), klass="evil.Model")),
        ".th of junk": str(_write(folder / "junk.th", os.urandom(300))),
        "bag: top level a list": str(write_bag(folder, "- a\n- b\n", "b1.yaml")),
        "bag: models a table": str(write_bag(folder, "models: {a: 1}\n", "b2.yaml")),
        "bag: absolute signature (Non-relative patterns)": str(write_bag(folder, "models: [/etc/passwd]\n", "b3.yaml")),
        "bag: climbing signature": str(write_bag(folder, "models: ['../aaaa']\n", "b4.yaml")),
        "bag: glob signature": str(write_bag(folder, "models: ['*']\n", "b5.yaml")),
        "bag: missing model": str(write_bag(folder, "models: [abcd]\n", "b6.yaml")),
        "bag: a model twice": str(write_bag(folder, "models: [tiny, tiny]\n", "b7.yaml")),
        "bag: weights wrong shape": str(write_bag(folder, "models: [tiny]\nweights: [[1, 1]]\n", "b8.yaml")),
        "bag: NaN weight": str(write_bag(folder, "models: [tiny]\nweights: [[.nan, 1, 1, 1]]\n", "b9.yaml")),
        "bag: a source weighted 0": str(write_bag(folder, "models: [tiny]\nweights: [[0, 1, 1, 1]]\n", "b10.yaml")),
        "bag: segment text": str(write_bag(folder, "models: [tiny]\nsegment: long\n", "b11.yaml")),
        "bag: segment negative": str(write_bag(folder, "models: [tiny]\nsegment: -1\n", "b12.yaml")),
        "bag: not YAML": str(write_bag(folder, "models: [a\n  - : :\n", "b13.yaml")),
        "bag: nested 1500 deep": str(write_bag(folder, "models: " + "[" * 1500 + "]" * 1500 + "\n", "b14.yaml")),
        "bag: 100 kB": str(write_bag(folder, "models: [tiny]\n#" + "x" * 100_000 + "\n", "b15.yaml")),
        "bag: binary": str(_write(folder / "b16.yaml", b"\xff\xfe\x00models")),
        "name of 5000 characters (File name too long)": "m" * 5000,
        "long name with a slash": "a/" + "m" * 5000,
        "name with path separators": "../../etc/passwd",
        "name with glob characters": "htdemucs*",
        "name with a NUL byte": "htdemucs\0",
        "a directory": str(folder),
        "a FIFO": _fifo(folder / "pipe.th"),
    }
    save_safetensors(HTDemucs(**TINY_HT_KW), folder / "tiny.safetensors")
    return cases


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _torch_save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


def test_malformed_models_end_the_command_in_one_line(tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    cases = _malformed(folder)
    song = tmp_path / "song.wav"
    write_tone(song, seconds=0.5)
    out = tmp_path / "out"
    for name, model in cases.items():
        code, err = _cli(["separate", str(song), "--model", model, "-o", str(out)], capsys)
        assert code == 1, (name, err)
        assert len(err) == 1 and err[0].startswith("stemdeck: error: "), (name, err)
        assert "Traceback" not in err[0] and len(err[0]) < 600, (name, err[0][:600])
        assert not out.exists() or not any(out.rglob("*.wav")), name
    capsys.readouterr()


def test_unknown_names_list_the_known_models_and_are_shortened(tmp_path, capsys):
    song = tmp_path / "song.wav"
    write_tone(song, seconds=0.5)
    for name in ("m" * 5000, "htdemucs*", "no/such/model", "a/" + "b" * 5000):
        code, err = _cli(["separate", str(song), "--model", name, "-o", str(tmp_path / "out")], capsys)
        assert code == 1 and len(err) == 1, err
        assert "known models: htdemucs, htdemucs_ft" in err[0] and len(err[0]) < 400, err[0][:500]


def test_real_command_refuses_a_hostile_checkpoint_in_one_line(tmp_path):
    """The installed ``stemdeck`` executable, in its own process: exit 1, one line, no traceback."""
    path = write_th(tmp_path / "evil.th", {}, klass=_Reduce(HTDemucs, SOURCES, 2, 4096))
    song = tmp_path / "song.wav"
    write_tone(song, seconds=0.5)
    exe = Path(sys.executable).parent / "stemdeck"
    child = subprocess.run(
        [str(exe), "separate", str(song), "--model", str(path), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = child.stderr.strip().splitlines()
    assert child.returncode == 1 and len(lines) == 1, child.stderr
    assert "calls stemdeck.models.nets.htdemucs.HTDemucs(...) while it is read" in lines[0]
    assert not (tmp_path / "out").exists()


# -- item 6: save_safetensors leaves no temporaries --------------------------------------------


def test_save_safetensors_refuses_a_directory_and_leaves_nothing(tmp_path):
    model = HTDemucs(**TINY_HT_KW)
    target = tmp_path / "audio"
    target.mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save_safetensors(model, target)
    assert [p.name for p in tmp_path.iterdir()] == ["audio"] and not any(target.iterdir())


def test_save_safetensors_cleans_its_temporary_on_failure_and_keeps_the_old_file(tmp_path, monkeypatch):
    import safetensors.torch

    model = HTDemucs(**TINY_HT_KW)
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"previous")
    written = []

    def failing_save(state, filename, metadata=None):
        written.append(Path(filename))
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_safetensors(model, target)
    assert written[0].parent == tmp_path  # next to the target, where a later run would see it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert target.read_bytes() == b"previous"
    monkeypatch.undo()
    save_safetensors(model, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert load_checkpoint(target).sources == SOURCES


def test_save_safetensors_removes_temporaries_of_a_killed_writer(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale = tmp_path / f".m.safetensors.{int(dead.stdout)}.tmp"  # left by a writer killed mid-save
    stale.write_bytes(b"half")
    alive = tmp_path / f".m.safetensors.{os.getppid()}.tmp"  # a save in progress elsewhere: kept
    alive.write_bytes(b"in progress")
    save_safetensors(HTDemucs(**TINY_HT_KW), tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "m.safetensors"]


def test_th_fractions_in_either_pickled_form_still_load(tmp_path):
    """Control for the bounded Fraction: Python < 3.12 pickles ``Fraction('39/5')``, later ones
    ``Fraction(39, 5)``; both are what official packages hold."""
    model = HTDemucs(**TINY_HT_KW)
    for name, segment in (("text", _Reduce(Fraction, "2/1")), ("pair", _Reduce(Fraction, 2, 1))):
        path = write_th(tmp_path / f"{name}.th", dict(TINY_HT_KW, segment=segment), state=model.state_dict())
        loaded = load_checkpoint(path)
        assert loaded.segment == Fraction(2, 1) and isinstance(loaded.segment, Fraction)
        assert all(
            torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
        )


@pytest.mark.parametrize(("cls", "depth"), [(HTDemucs, 1), (HTDemucs, 5), (HDemucs, 5), (HDemucs, 8)])
def test_the_extremes_of_the_accepted_layout_run(cls, depth):
    """Control for the layout limits: what they accept separates a chunk (and what they refuse,
    HT Demucs at depth 6 or Hybrid Demucs at depth 4, raised mid-song before)."""
    import inspect

    kwargs = {"sources": ["a", "b"], "channels": 8, "depth": depth, "samplerate": 8000, "segment": 1}
    if cls is HTDemucs:
        kwargs.update(t_layers=1, t_heads=2)
    bound = inspect.signature(cls).bind(**kwargs)
    bound.apply_defaults()
    check_hyperparameters(bound.arguments)
    model = cls(**kwargs).eval()
    for length in (8000, 5001):  # a whole segment, and the shorter last chunk of a song
        with torch.no_grad():
            out = model(torch.randn(1, 2, length))
        assert out.shape == (1, 2, 2, length) and torch.isfinite(out).all()
