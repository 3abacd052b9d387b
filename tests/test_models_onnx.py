"""The ONNX Runtime backend (issue 13): stems within the SNR bar of torch's, the export cached and
checked, the choice reported, and torch without a word where ONNX Runtime is not installed.

One small random-weights HT Demucs (its Transformer's LayerScales at 1, so that its error shows)
is exported once for the module into a temporary cache folder; the damage test exports again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_HT_KW, exported_cache, run_stemdeck, snr_db, tiny_ht_transformer_on

from stemdeck.cli import main
from stemdeck.models import HTDemucs, apply_model, load_checkpoint, save_safetensors
from stemdeck.models import onnx_backend as ob
from stemdeck.models.demo import demo_stems
from stemdeck.models.nets.spec import hybrid_spectrogram
from stemdeck.models.nets.unet import complex_as_channels
from stemdeck.models.precision import TorchNetwork, prepare_network, resolve_precision
from stemdeck.models.sharing import copy_sharing_weights
from stemdeck.models.track_job import commit_backend

pytest.importorskip("onnxruntime")  # in the test extras; the last test hides it

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx-ckpt") / "tiny-ls1.safetensors"
    save_safetensors(tiny_ht_transformer_on(seed=3), path)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    yield from exported_cache(tmp_path_factory, "onnx-cache")


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_checkpoint(checkpoint).eval()  # as the command line loads it: the same digest


@pytest.fixture(scope="module")
def song() -> torch.Tensor:
    mix = torch.from_numpy(sum(demo_stems(3.0).values()))[None]
    return (mix - mix.mean()) / mix.std()


@pytest.fixture(scope="module")
def exported(model, cache):
    """The model's export, made once (explicit ``onnx`` exports whatever the job's length)."""
    notes = []
    network = prepare_network(model, "fp32", CPU, backend="onnx", note=notes.append)
    assert len(notes) == 1 and "exporting the network to ONNX" in notes[0]
    return network


@pytest.fixture
def fresh_process(monkeypatch):
    """Forget the sessions this process loaded, as a new run would."""
    monkeypatch.setattr(ob, "_loaded", {})


def test_onnx_stems_keep_the_snr_bar_against_torch(model, song, exported):
    expected = apply_model(model, song, precision="fp32", backend="torch")
    stems = apply_model(model, song, precision="fp32", backend="onnx")
    assert isinstance(exported, ob.OnnxNetwork)
    assert stems.shape == expected.shape == (1, 4, 2, song.shape[-1])
    assert not torch.equal(stems, expected)  # ONNX Runtime's own arithmetic ran
    assert snr_db(expected, stems) >= ob.SNR_BAR_DB
    assert exported.measured.snr_db >= ob.SNR_BAR_DB  # checked at export, on the probe


def test_export_is_cached_by_content_and_reused(model, cache, exported, fresh_process):
    files = sorted(p.name for p in cache.iterdir())
    digest = ob.model_digest(model, exported.length)
    assert files == [f"{digest}.json", f"{digest}.onnx"]  # no temporaries left
    record = json.loads((cache / f"{digest}.json").read_text())
    assert record["sha256"] == ob.file_sha256(cache / f"{digest}.onnx")
    notes = []
    again = prepare_network(model, "fp32", CPU, backend="onnx", note=notes.append)
    assert notes == [] and again.path == exported.path  # loaded, not exported
    changed = HTDemucs(**TINY_HT_KW)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.decoder[0].conv_tr.bias.add_(1e-3)
    assert ob.model_digest(changed, exported.length) != digest  # other weights, another file


def test_the_export_copies_the_model_but_not_its_weights(model, song, tmp_path):
    """The exporter traces a copy (its caches may keep traced tensors), which shares the model's
    weights rather than holding 168 MB more of them for htdemucs; the model is left as it was."""
    copied = copy_sharing_weights(model)
    assert copied is not model and copied.decoder[0] is not model.decoder[0]
    pairs = list(zip([*copied.parameters(), *copied.buffers()], [*model.parameters(), *model.buffers()], strict=True))
    assert len(pairs) > 20 and all(mine is theirs for mine, theirs in pairs)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    length = ob.network_length(model, None)
    mix = ob.probe(model, length)
    spec = complex_as_channels(hybrid_spectrogram(mix, model.nfft)).contiguous()
    ob.write_onnx(model, spec, mix, tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").stat().st_size > 4 * sum(t.numel() for t in before.values()) * 0.9
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[name], after[name]) for name in before)


def test_damaged_cache_file_is_exported_again(model, song, cache, exported, fresh_process):
    path = exported.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zeroed weights: still loads, wrong numbers
    path.write_bytes(bytes(data))
    notes = []
    rebuilt = prepare_network(model, "fp32", CPU, backend="onnx", note=notes.append)
    assert len(notes) == 1 and "does not match its record" in notes[0]
    record = ob.read_record(path.with_suffix(".json"))
    assert ob.file_sha256(path) == record["sha256"]
    segment = song[..., : rebuilt.length]
    with torch.inference_mode():
        assert snr_db(model(segment), rebuilt(segment)) >= ob.SNR_BAR_DB


@pytest.mark.parametrize("text", ["", "{", '{"format": 1, "sha256": 5, "measured": {}}', "[]"])
def test_a_record_that_is_not_ours_is_not_trusted(tmp_path, text):
    path = tmp_path / "x.json"
    path.write_text(text)
    assert ob.read_record(path) is None
    assert ob.read_record(tmp_path / "missing.json") is None


def _set_measured(network: ob.OnnxNetwork, **values) -> None:
    record_path = network.path.with_suffix(".json")
    record = json.loads(record_path.read_text())
    record["measured"].update(values)
    record_path.write_text(json.dumps(record))


def test_auto_keeps_torch_and_onnx_refuses_other_precisions(model, exported, cache, fresh_process):
    """ONNX Runtime did not win on the machine measured (README): auto is torch, cache or not."""
    _set_measured(exported, torch_cpu_s=2.0, onnx_cpu_s=1.0)
    files = sorted(cache.iterdir())
    chosen = prepare_network(model, "auto", CPU, backend="auto")
    unmeasured = resolve_precision("auto", CPU)  # bf16 on a CPU that runs it, else fp32
    assert isinstance(chosen, TorchNetwork) and chosen.describe().startswith(f"torch ({unmeasured} on cpu")
    assert sorted(cache.iterdir()) == files  # nothing exported, nothing loaded
    with pytest.raises(ValueError, match="--backend onnx: ONNX Runtime runs float32"):
        prepare_network(model, "int8", CPU, backend="onnx")
    with pytest.raises(ValueError, match="unknown backend 'tpu'; choose auto, torch, onnx"):
        prepare_network(model, "fp32", CPU, backend="tpu")


def test_separate_verbose_reports_the_backend(tmp_path, checkpoint, exported, capsys, fresh_process):
    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(0).normal(0, 0.1, (44100, 2)).astype(np.float32), 44100)
    for backend, expected in (("onnx", "network: onnx (ONNX Runtime"), ("torch", "network: torch (fp32 on cpu")):
        args = ["separate", str(song), "-o", str(tmp_path / backend), "--model", str(checkpoint), "-v"]
        assert main([*args, "--backend", backend]) == 0
        err = capsys.readouterr().err
        assert expected in err and "exporting" not in err
        assert sf.info(tmp_path / backend / "song" / "vocals.wav").frames == 44100
    ours = sf.read(tmp_path / "onnx" / "song" / "drums.wav")[0]
    theirs = sf.read(tmp_path / "torch" / "song" / "drums.wav")[0]
    assert 10 * np.log10(np.sum(theirs**2) / np.sum((theirs - ours) ** 2)) >= ob.SNR_BAR_DB - 1  # 24-bit files
    library = tmp_path / "library"  # -r, one file at a time here: the torch weights given back there too
    library.mkdir()
    song.rename(library / "song.wav")
    assert (
        main(
            ["separate", str(library), "-r", "-o", str(tmp_path / "r"), "--model", str(checkpoint), "--backend", "onnx"]
        )
        == 0
    )
    [drums] = (tmp_path / "r").rglob("drums.wav")
    assert np.array_equal(sf.read(drums)[0], ours)


def test_an_onnxruntime_that_does_not_import_is_one_line_saying_reinstall(tmp_path, checkpoint):
    """Installed but broken (a missing shared library, a half-done upgrade): said once, up front,
    not per file as "a bug in stemdeck"."""
    broken = tmp_path / "site" / "onnxruntime"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("libonnxruntime.so.1: cannot open shared object file")\n')
    song = tmp_path / "song.wav"
    sf.write(str(song), np.zeros((4410, 2), np.float32), 44100)
    args = ["separate", str(song), str(song), "-o", str(tmp_path / "out"), "--model", str(checkpoint)]
    result = run_stemdeck(*args, "--backend", "onnx", env={"PYTHONPATH": str(tmp_path / "site")})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "stemdeck: error: --backend onnx: onnxruntime is installed but does not import (libonnxruntime.so.1: "
        "cannot open shared object file); reinstall it (pip install --force-reinstall onnxruntime) or use "
        "--backend torch"
    ]
    assert not (tmp_path / "out").exists()


def test_without_onnxruntime_torch_runs_and_onnx_says_how_to_install(
    model, song, tmp_path, checkpoint, monkeypatch, capsys, fresh_process
):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert not ob.available()
    chosen = prepare_network(model, "auto", CPU, backend="auto")
    assert isinstance(chosen, TorchNetwork)
    torch.testing.assert_close(
        apply_model(model, song, precision="fp32"), apply_model(model, song, precision="fp32", backend="torch")
    )
    with pytest.raises(ValueError, match=r"pip install 'stemdeck\[onnx\]'"):
        prepare_network(model, "fp32", CPU, backend="onnx")
    args = ["separate", str(tmp_path / "none.wav"), "-o", str(tmp_path), "--model", str(checkpoint)]
    assert main([*args, "--backend", "onnx"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["stemdeck: error: --backend onnx: ONNX Runtime is not installed; pip install 'stemdeck[onnx]'"]


def test_a_cache_folder_that_takes_no_file_is_named_not_blamed_on_the_model(model):
    """A read-only ONNX cache (here /sys, which exists and takes no file, even from root) was
    reported as "this model does not export to ONNX (PermissionError ...)"."""
    with pytest.raises(ob.OnnxError) as refused:
        ob.load_or_export(model, 44100, folder=Path("/sys"))
    assert str(refused.value) == (
        "cannot write the ONNX cache folder /sys (Permission denied); set $STEMDECK_ONNX_DIR to a folder you "
        "can write, or use --backend torch"
    )


def test_a_command_gives_back_the_torch_weights_once_onnx_runtime_runs(checkpoint, song, exported, fresh_process):
    model = load_checkpoint(checkpoint).eval()  # its own: the module's model stays whole
    expected = apply_model(model, song, precision="fp32", backend="onnx")
    commit_backend(model, argparse.Namespace(backend="onnx", precision="fp32", segment=None), "cpu")
    assert sum(tensor.numel() for tensor in model.parameters()) == 0
    stems = apply_model(model, song, precision="fp32", backend="onnx")
    assert torch.equal(stems, expected)
    ob.release()
    record_path = ob.cache_dir() / f"{ob.model_digest(model, exported.length)}.json"
    record = record_path.read_bytes()
    record_path.unlink()
    try:
        with pytest.raises(ValueError, match=r"the cached network changed during this run; run the command again$"):
            prepare_network(model, "fp32", torch.device("cpu"), backend="onnx")
    finally:
        record_path.write_bytes(record)
