"""The OpenVINO backend (issue 13): stems within the SNR bar of torch's float32 in float32 and, where
the CPU runs it natively, bfloat16; the export cached and checked, each precision measured once;
``--backend auto`` taking it where it measured faster than torch (``--memory low`` only where nothing
is left to export or time), and one line where OpenVINO is not installed.

One small random-weights HT Demucs (its Transformer's LayerScales at 1, so that its error shows)
is exported once for the module into a temporary cache folder.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_HT_KW, exported_cache, run_stemdeck, snr_db, tiny_ht_transformer_on

from stemdeck.cli import main
from stemdeck.models import HTDemucs, apply_model, load_checkpoint, save_safetensors, streaming
from stemdeck.models import onnx_backend as ob
from stemdeck.models import openvino_backend as ovb
from stemdeck.models import precision as precision_module
from stemdeck.models import precision_choice as choice_module
from stemdeck.models.demo import demo_stems
from stemdeck.models.nets.spec import hybrid_spectrogram
from stemdeck.models.nets.unet import complex_as_channels
from stemdeck.models.precision import TorchNetwork, cpu_has_native_bf16, prepare_network
from stemdeck.models.precision_choice import PrecisionChoice
from stemdeck.models.track_job import commit_backend, settle_backend

pytest.importorskip("openvino")  # in the test extras; the last test hides it

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ov-ckpt") / "tiny-ls1.safetensors"
    save_safetensors(tiny_ht_transformer_on(seed=5), path)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    yield from exported_cache(tmp_path_factory, "ov-cache")


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_checkpoint(checkpoint).eval()


@pytest.fixture(scope="module")
def song() -> torch.Tensor:
    mix = torch.from_numpy(sum(demo_stems(3.0).values()))[None]
    return (mix - mix.mean()) / mix.std()


@pytest.fixture(scope="module")
def exported(model, cache):
    notes = []
    network = prepare_network(model, "fp32", CPU, backend="openvino", note=notes.append)
    assert len(notes) == 1 and "exporting the network for OpenVINO" in notes[0]
    return network


@pytest.fixture
def fresh_process(monkeypatch):
    """Forget the networks this process compiled, as a new run would."""
    monkeypatch.setattr(ovb, "_loaded", {})


def _set_measured(network: ovb.OpenVinoNetwork, **values) -> None:
    record_path = ovb.paths(network.model, network.length, precision=network.precision)[1]
    record = json.loads(record_path.read_text())
    record["measured"].update(values)
    record_path.write_text(json.dumps(record))


def test_openvino_stems_keep_the_snr_bar_against_torch(model, song, exported):
    expected = apply_model(model, song, precision="fp32", backend="torch")
    stems = apply_model(model, song, precision="fp32", backend="openvino")
    assert isinstance(exported, ovb.OpenVinoNetwork)
    assert stems.shape == expected.shape == (1, 4, 2, song.shape[-1])
    assert not torch.equal(stems, expected)  # OpenVINO's own arithmetic ran
    assert snr_db(expected, stems) >= ovb.SNR_BAR_DB
    measured = exported.measured
    assert measured.snr_db >= ovb.SNR_BAR_DB and measured.threads == torch.get_num_threads()
    assert min(measured.torch_wall_s, measured.openvino_wall_s, measured.torch_cpu_s) > 0


def test_export_is_cached_checked_and_reused(model, cache, exported, fresh_process, monkeypatch):
    onnx_path, record_path = ovb.paths(model, exported.length)
    assert sorted(p.name for p in cache.iterdir()) == sorted([onnx_path.name, record_path.name])  # no temporaries
    assert ovb.read_record(record_path)["sha256"] == ob.file_sha256(onnx_path)
    notes = []
    again = prepare_network(model, "fp32", CPU, backend="openvino", note=notes.append)
    assert notes == [] and again.path == onnx_path  # loaded, not exported
    original = onnx_path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zeroed weights: still loads, wrong numbers
    onnx_path.write_bytes(bytes(data))
    ovb._loaded.clear()
    exports = []
    monkeypatch.setattr(ovb, "_export", lambda *args: exports.append(args[2]) or exported)  # a new export: slow
    prepare_network(model, "fp32", CPU, backend="openvino", note=notes.append)
    assert len(notes) == 1 and "does not match its record" in notes[0]
    assert exports == [onnx_path]  # exported again, not loaded
    onnx_path.write_bytes(original)


def test_an_older_stemdecks_export_is_made_again_and_said_so(model, exported, fresh_process, monkeypatch):
    """Stop 30 compiled bfloat16 from float16 weights: the records of format 1 are not used."""
    _, record_path = ovb.paths(model, exported.length)
    original = record_path.read_text()
    record_path.write_text(json.dumps(json.loads(original) | {"format": 1}))
    exports, notes = [], []
    monkeypatch.setattr(ovb, "_export", lambda *args: exports.append(args[2]) or exported)  # a new export: slow
    try:
        prepare_network(model, "fp32", CPU, backend="openvino", note=notes.append)
    finally:
        record_path.write_text(original)
    assert exports == [exported.path]
    assert notes == [
        "exporting the network for OpenVINO (the cached one was made by an older stemdeck; once per model, "
        f"about 2 minutes for htdemucs): {exported.path}"
    ]


def test_auto_is_torch_even_where_the_export_measured_openvino_faster(model, exported, fresh_process):
    """A chunk's probe did not predict a track: on a quiet machine OpenVINO was faster per segment
    and slower per track than torch (README, "OpenVINO backend"), so auto in the Python API and the
    engine never takes it; only the separation commands do, on their own measure (settle_backend)."""
    _set_measured(exported, torch_wall_s=2.0, openvino_wall_s=1.0)
    assert isinstance(prepare_network(model, "auto", CPU, backend="auto"), TorchNetwork)
    assert isinstance(prepare_network(model, "fp32", CPU, backend="openvino"), ovb.OpenVinoNetwork)  # asked for
    _set_measured(exported, snr_db=30.0)
    ovb._loaded.clear()
    with pytest.raises(ValueError) as refused:
        prepare_network(model, "fp32", CPU, backend="openvino")
    assert str(refused.value) == (
        "--backend openvino: OpenVINO's float32 stems were 30.0 dB from torch's float32 on this model "
        "(under 40 dB); use --backend torch"
    )
    _set_measured(exported, snr_db=exported.measured.snr_db)


def test_bf16_and_int8_are_refused_in_one_line_where_the_cpu_has_no_bf16(model, exported, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError) as refused:
        prepare_network(model, "bf16", CPU, backend="openvino")
    assert str(refused.value) == (
        "--backend openvino: OpenVINO runs bfloat16 only where the CPU has it natively (AVX512-BF16 or AMX), "
        "not on this one; use --precision fp32 or auto, or --backend torch for bf16"
    )
    only_float32 = r"OpenVINO runs float32 here; use --precision fp32 or auto, or --backend torch for int8$"
    with pytest.raises(ValueError, match=only_float32):
        prepare_network(model, "int8", CPU, backend="openvino")
    assert prepare_network(model, "auto", CPU, backend="openvino").precision == "fp32"  # auto: float32 here
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    with pytest.raises(ValueError, match=r"OpenVINO runs float32 or bfloat16 here; use --precision fp32, bf16 or auto"):
        prepare_network(model, "int8", CPU, backend="openvino")


needs_native_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="OpenVINO runs bfloat16 where the CPU does")


@needs_native_bf16
def test_bf16_is_measured_once_from_the_same_export_and_keeps_the_bar(model, song, cache, exported, fresh_process):
    notes = []
    network = prepare_network(model, "bf16", CPU, backend="openvino", note=notes.append)
    onnx_path, record_path = ovb.paths(model, network.length, precision="bf16")
    assert network.precision == "bf16" and network.path == onnx_path == exported.path
    assert len(notes) == 1 and notes[0].startswith("measuring OpenVINO's bfloat16 against torch on this model (once")
    assert ovb.read_record(record_path)["sha256"] == ob.file_sha256(onnx_path)  # verifies the one export
    measured = network.measured
    assert ovb.SNR_BAR_DB <= measured.snr_db < exported.measured.snr_db  # bfloat16 rounds: less exact than float32
    expected = apply_model(model, song, precision="fp32", backend="torch")
    float32 = apply_model(model, song, precision="fp32", backend="openvino")
    stems = apply_model(model, song, precision="bf16", backend="openvino")
    assert stems.shape == expected.shape
    assert ovb.SNR_BAR_DB <= snr_db(expected, stems) < snr_db(expected, float32)
    ovb._loaded.clear()
    assert prepare_network(model, "bf16", CPU, backend="openvino", note=notes.append).measured == measured
    assert len(notes) == 1  # read from its record, not measured again
    kept, kept_record = ovb.kept_paths(onnx_path, "bf16")  # its compiled form, for next time
    assert json.loads(kept_record.read_text())["sha256"] == ob.file_sha256(kept)
    assert "bfloat16, " in network.describe()


@needs_native_bf16
def test_auto_with_openvino_is_bf16_where_it_keeps_the_bar_else_float32(model, exported, fresh_process):
    bf16 = prepare_network(model, "auto", CPU, backend="openvino")
    assert bf16.precision == "bf16"
    _set_measured(bf16, snr_db=30.0)
    ovb._loaded.clear()
    notes = []
    network = prepare_network(model, "auto", CPU, backend="openvino", note=notes.append)
    assert network.precision == "fp32"
    assert notes == [
        "OpenVINO's bfloat16 stems were 30.0 dB from torch's float32 on this model (under 40 dB); running float32"
    ]
    with pytest.raises(ValueError, match="OpenVINO's bfloat16 stems were 30.0 dB"):  # asked for: refused
        prepare_network(model, "bf16", CPU, backend="openvino")
    _set_measured(bf16, snr_db=bf16.measured.snr_db)


def test_auto_never_exports(cache, fresh_process):
    torch.manual_seed(9)
    other = HTDemucs(**TINY_HT_KW).eval()
    files = sorted(cache.iterdir())
    assert isinstance(prepare_network(other, "fp32", CPU, backend="auto"), TorchNetwork)
    assert sorted(cache.iterdir()) == files


def test_separate_verbose_reports_openvino(tmp_path, checkpoint, exported, capsys, fresh_process):
    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(0).normal(0, 0.1, (44100, 2)).astype(np.float32), 44100)
    args = ["separate", str(song), "--model", str(checkpoint), "-v", "--backend", "openvino"]
    assert main([*args, "-o", str(tmp_path), "--precision", "fp32"]) == 0
    err = capsys.readouterr().err
    assert "network: openvino (OpenVINO " in err and ", float32, " in err and "exporting" not in err
    assert sf.info(tmp_path / "song" / "vocals.wav").frames == 44100
    assert main([*args, "-o", str(tmp_path / "auto")]) == 0  # auto: bfloat16 where the CPU runs it
    err = capsys.readouterr().err
    assert (", bfloat16, " if cpu_has_native_bf16() else ", float32, ") in err
    assert sf.info(tmp_path / "auto" / "song" / "vocals.wav").frames == 44100


def test_without_openvino_auto_is_torch_and_openvino_says_how_to_install(
    model, tmp_path, checkpoint, monkeypatch, capsys, fresh_process
):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    assert not ovb.available()
    assert isinstance(prepare_network(model, "auto", CPU, backend="auto"), TorchNetwork)
    with pytest.raises(ValueError, match=r"pip install 'stemdeck\[openvino\]'"):
        prepare_network(model, "fp32", CPU, backend="openvino")
    args = ["separate", str(tmp_path / "none.wav"), "-o", str(tmp_path), "--model", str(checkpoint)]
    assert main([*args, "--backend", "openvino"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["stemdeck: error: --backend openvino: OpenVINO is not installed; pip install 'stemdeck[openvino]'"]


@needs_native_bf16
def test_a_damaged_compiled_form_is_compiled_again_never_run(model, song, exported, fresh_process):
    """OpenVINO's own cache ran a blob with bytes changed in its middle: NaN stems."""
    network = prepare_network(model, "bf16", CPU, backend="openvino")
    kept, _ = ovb.kept_paths(network.path, "bf16")
    expected = apply_model(model, song, precision="bf16", backend="openvino")
    ovb._loaded.clear()
    assert torch.equal(apply_model(model, song, precision="bf16", backend="openvino"), expected)  # read back
    original = kept.read_bytes()
    data = bytearray(original)
    for tenth in range(1, 10):
        data[len(data) * tenth // 10 : len(data) * tenth // 10 + 4096] = b"\x7f" * 4096
    kept.write_bytes(bytes(data))
    ovb._loaded.clear()
    stems = apply_model(model, song, precision="bf16", backend="openvino")
    assert torch.isfinite(stems).all() and torch.equal(stems, expected)  # compiled again from the ONNX file
    assert kept.read_bytes() != bytes(data)  # and kept anew
    for precision, hint in (("fp32", "f32"), ("bf16", "bf16"), ("fp32", "f32")):  # each read back as itself
        ovb._loaded.clear()
        compiled = prepare_network(model, precision, CPU, backend="openvino").compiled
        assert ovb.kept_paths(network.path, precision)[0].exists()
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == hint


@needs_native_bf16
def test_bf16_compiles_float16_weights(model, exported, fresh_process):
    """bfloat16 rounds the weights further anyway; float16 ones took htdemucs's compiled network
    from 460 to 340 MB. Its kept form shows what the network holds: about half the weights'
    float32 bytes less than float32's."""
    bf16 = prepare_network(model, "bf16", CPU, backend="openvino")
    ovb._loaded.clear()
    prepare_network(model, "fp32", CPU, backend="openvino")
    size = {precision: ovb.kept_paths(bf16.path, precision)[0].stat().st_size for precision in ("fp32", "bf16")}
    float32_bytes = sum(tensor.numel() * 4 for tensor in model.state_dict().values())
    assert size["fp32"] - size["bf16"] > 0.4 * float32_bytes
    assert bf16.measured.snr_db >= ovb.SNR_BAR_DB


@needs_native_bf16
def test_bf16_hands_out_float16_and_the_stems_are_made_in_float32(model, song, exported, fresh_process):
    """Half the output buffers (55 to 28 MB a segment of htdemucs): a bfloat16 network's outputs
    in float16; float32 stays float32. The stems come out float32 and keep the bar."""
    bf16 = prepare_network(model, "bf16", CPU, backend="openvino")
    mix = torch.nn.functional.pad(song, (0, max(0, bf16.length - song.shape[-1])))[..., : bf16.length]
    spec = complex_as_channels(hybrid_spectrogram(mix, model.nfft)).contiguous()
    assert [tensor.dtype for tensor in bf16.branches(spec, mix)] == [torch.float16, torch.float16]
    stems = bf16(mix)
    assert stems.dtype == torch.float32 and stems.shape == (1, len(model.sources), 2, bf16.length)
    with torch.inference_mode():
        expected = model(mix)
    assert snr_db(expected, stems) >= ovb.SNR_BAR_DB
    ovb._loaded.clear()
    float32 = prepare_network(model, "fp32", CPU, backend="openvino")
    assert [tensor.dtype for tensor in float32.branches(spec, mix)] == [torch.float32, torch.float32]


def test_a_command_gives_back_the_torch_weights_once_the_network_runs(checkpoint, song, exported, fresh_process):
    model = load_checkpoint(checkpoint).eval()  # its own: the module's model stays whole
    expected = apply_model(model, song, precision="fp32", backend="openvino")
    length = exported.length
    commit_backend(model, argparse.Namespace(backend="openvino", precision="fp32", segment=None), "cpu")
    assert [tensor.numel() for tensor in [*model.parameters(), *model.buffers()]] == [0] * len(
        [*model.parameters(), *model.buffers()]
    )
    notes = []
    stems = apply_model(model, song, precision="fp32", backend="openvino", note=notes.append)
    assert torch.equal(stems, expected) and notes == []  # the same network, found by the digest kept
    with pytest.raises(ob.OnnxError, match=r"weights were given back, and its network at 1000 samples was never made"):
        ob.model_digest(model, 1000)
    onnx_path, record_path = ovb.paths(model, length)
    ovb._loaded.clear()
    record = record_path.read_bytes()
    record_path.unlink()  # the cache emptied by hand mid-run: nothing to export from
    try:
        with pytest.raises(ValueError, match=r"the cached network changed during this run; run the command again$"):
            prepare_network(model, "fp32", CPU, backend="openvino")
    finally:
        record_path.write_bytes(record)
    untouched = load_checkpoint(checkpoint).eval()
    commit_backend(untouched, argparse.Namespace(backend="torch", precision="fp32", segment=None), "cpu")
    assert all(tensor.numel() for tensor in untouched.parameters())  # torch runs: nothing given back


def _speed_args(**changes) -> argparse.Namespace:
    """What `separate --memory speed` passes on, backend and precision left to auto."""
    return argparse.Namespace(**{"backend": "auto", "memory": "speed", "precision": "auto", "segment": None} | changes)


@needs_native_bf16
def test_memory_speed_runs_openvino_bf16_where_it_beats_what_torch_runs(model, exported, fresh_process, monkeypatch):
    bf16 = prepare_network(model, "bf16", CPU, backend="openvino")
    modes = []
    monkeypatch.setattr(streaming, "apply_memory_mode", lambda *args: modes.append(args))  # process-wide
    int8_won = PrecisionChoice("int8", fp32_s=1.0, int8_s=0.8, snr_db=58.0, threads=2)
    monkeypatch.setattr(choice_module, "settle_auto", lambda *args: int8_won)
    lines = []
    _set_measured(bf16, torch_wall_s=1.0, openvino_wall_s=0.6, snr_db=49.25)
    ovb._loaded.clear()
    args = _speed_args()
    settle_backend(model, args, "cpu", lines.append)
    assert (args.backend, args.precision, modes) == ("openvino", "bf16", [("speed", "openvino")])
    assert lines == [
        "backend auto (--memory speed): openvino, bfloat16 (OpenVINO's bfloat16 took 0.60 of torch float32's "
        "time on this model at 49.2 dB, torch's int8 0.80)"
    ]
    _set_measured(bf16, openvino_wall_s=0.77)  # 0.77 > 0.95 x 0.80: a closer call is noise
    ovb._loaded.clear()
    args, lines = _speed_args(), []
    settle_backend(model, args, "cpu", lines.append)
    assert (args.backend, args.precision) == ("auto", "auto")
    assert lines[0].startswith("backend auto (--memory speed): torch (OpenVINO's bfloat16 took 0.77 of")
    assert modes[-1] == ("speed",)  # torch runs: its own policy again
    assert ovb._loaded == {}  # not kept: torch runs
    _set_measured(bf16, openvino_wall_s=0.6, snr_db=30.0)
    ovb._loaded.clear()
    args, lines = _speed_args(), []
    settle_backend(model, args, "cpu", lines.append)
    assert args.backend == "auto"
    assert lines == [
        "backend auto (--memory speed): torch; OpenVINO's bfloat16 stems were 30.0 dB from torch's float32 on "
        "this model (under 40 dB); use --backend torch"
    ]
    _set_measured(bf16, **vars(bf16.measured))  # as measured, for the tests after
    for asked in (_speed_args(precision="int8"), _speed_args(backend="torch")):
        before = vars(asked).copy()
        settle_backend(model, asked, "cpu", lines.append)
        assert vars(asked) == before  # a precision or a backend asked for: as asked


@needs_native_bf16
def test_memory_low_runs_openvino_only_where_nothing_is_left_to_export_or_time(
    model, exported, fresh_process, monkeypatch
):
    """`--memory low` keeps a run under 1 GB: OpenVINO's first export (about 1.3 GB) and torch's
    timing, which leaves memory behind, are `--memory speed`'s. Once both are done, `low` runs
    OpenVINO where it measured faster, reading both records, exporting and timing nothing."""
    bf16 = prepare_network(model, "bf16", CPU, backend="openvino")  # its record is in the cache now
    _set_measured(bf16, torch_wall_s=1.0, openvino_wall_s=0.6, snr_db=49.25)
    modes = []
    monkeypatch.setattr(streaming, "apply_memory_mode", lambda *args: modes.append(args))  # process-wide
    monkeypatch.setattr(ovb, "_export", lambda *args: pytest.fail("exported under --memory low"))
    monkeypatch.setattr(choice_module, "measure_choice", lambda *args: pytest.fail("timed under --memory low"))
    monkeypatch.delenv("STEMDECK_AUTO_PRECISION")  # auto measured, as for users
    ovb._loaded.clear()
    args, lines = _speed_args(memory="low"), []
    settle_backend(model, args, "cpu", lines.append)
    assert (args.backend, args.precision, lines) == ("auto", "auto", [])  # torch's auto not timed yet
    settle_backend(model, _speed_args(memory="low", verbose=True), "cpu", lines.append)
    assert lines == [  # -v says how to get it
        "backend auto (--memory low): torch; OpenVINO's bfloat16 is not yet exported and measured for this model: "
        "one run with --memory speed does it (once, at about 1.8 GB), and low runs take it after where it is faster"
    ]
    lines.clear()
    int8_won = PrecisionChoice("int8", fp32_s=1.0, int8_s=0.8, snr_db=58.0, threads=2)
    assert choice_module.write_choice(choice_module.record_path(model), int8_won) is None
    settle_backend(model, args, "cpu", lines.append)
    assert (args.backend, args.precision, modes) == ("openvino", "bf16", [("low", "openvino")])  # compiled at 2 MB
    assert lines == [
        "backend auto (--memory low): openvino, bfloat16 (OpenVINO's bfloat16 took 0.60 of torch float32's "
        "time on this model at 49.2 dB, torch's int8 0.80)"
    ]
    _, bf16_record = ovb.paths(model, bf16.length, precision="bf16")
    measured = bf16_record.read_bytes()
    bf16_record.unlink()  # exported, but not measured in bfloat16: that would run torch beside it
    try:
        ovb._loaded.clear()
        args, lines = _speed_args(memory="low"), []
        settle_backend(model, args, "cpu", lines.append)
        assert (args.backend, args.precision, lines) == ("auto", "auto", [])
    finally:
        bf16_record.write_bytes(measured)
    _set_measured(bf16, **vars(bf16.measured))  # as measured, for the tests after


def test_memory_speed_stays_torch_where_the_cpu_has_no_bf16(model, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(choice_module, "settle_auto", lambda *args: pytest.fail("measured"))
    args, lines = _speed_args(), []
    settle_backend(model, args, "cpu", lines.append)
    assert (args.backend, lines) == ("auto", [])


@needs_native_bf16
def test_separate_memory_speed_says_which_backend_runs_and_low_then_runs_it(tmp_path, checkpoint, cache, exported):
    """`--memory speed` measures OpenVINO where needed and says which backend runs; the default
    `--memory low` after it reads the same measure and runs the same backend, exporting and timing
    nothing (which backend wins the tiny model's measure is this machine's business)."""
    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(1).normal(0, 0.1, (44100, 2)).astype(np.float32), 44100)
    args = ["separate", str(song), "-o", str(tmp_path), "--model", str(checkpoint), "-v", "--force"]
    done = run_stemdeck(*args, "--memory", "speed", env={ob.CACHE_ENV: str(cache)})
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("backend auto (--memory speed): ")]
    assert len(said) == 1, done.stderr
    chosen = "openvino" if said[0].startswith("backend auto (--memory speed): openvino, bfloat16 (") else "torch"
    assert f"stemdeck: network: {chosen} (" in done.stderr
    assert sf.info(tmp_path / "song" / "vocals.wav").frames == 44100
    low = run_stemdeck(*args, env={ob.CACHE_ENV: str(cache)})
    assert low.returncode == 0, low.stderr
    said_low = [line for line in low.stderr.splitlines() if line.startswith("backend auto (--memory low): ")]
    assert said_low == [said[0].replace("(--memory speed)", "(--memory low)")], low.stderr
    assert f"stemdeck: network: {chosen} (" in low.stderr
    assert not any(word in low.stderr for word in ("exporting", "measuring", "timing")), low.stderr
