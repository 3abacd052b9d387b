"""``--precision auto`` on a CPU: float32, int8 or (where the CPU runs it) bfloat16, measured once
per model and machine by the separation commands, and read by every separation after
(models/precision_choice.py)."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from conftest import run_stemdeck, snr_db, tiny_ht_transformer_on, write_tone

from stemdeck.models import HDemucs, apply_model, openvino_backend, save_safetensors
from stemdeck.models import precision as precision_module
from stemdeck.models import precision_choice as choice_module
from stemdeck.models.nets.transformer import Int8Attention
from stemdeck.models.precision import cpu_has_native_bf16, cpu_info, prepare_model, prepare_network
from stemdeck.models.precision_choice import (
    PIN_ENV,
    PrecisionChoice,
    applies,
    candidates,
    measure_choice,
    read_choice,
    record_path,
    remembered_precision,
    settle_auto,
    verdict,
    write_choice,
)

CPU = torch.device("cpu")
separate_module = importlib.import_module("stemdeck.models.separate")  # the module, not its separate()
TIMES = {"fp32_s": 1.0, "int8_s": 0.5, "snr_db": 50.0, "threads": 1}


@pytest.fixture(autouse=True)
def _no_native_bf16(monkeypatch, _isolated_model_dirs):
    """The AVX2 case, whatever CPU runs the tests (a bfloat16 CPU also times bfloat16), and
    ``auto`` measured (the other tests pin it to float32)."""
    monkeypatch.delenv(PIN_ENV)
    _native_bf16(monkeypatch, False)


def _native_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(choice_module, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: native)


def _choice(precision: str) -> PrecisionChoice:
    return PrecisionChoice(precision, fp32_s=1.0, int8_s=0.8, snr_db=55.0, threads=2)


def test_the_rule_takes_int8_only_where_it_is_clearly_faster_and_within_40_db():
    assert verdict(1.0, 0.95, 40.0) == "int8"
    assert verdict(1.0, 0.96, 90.0) == "fp32"  # 4 % faster is inside a quiet machine's noise
    assert verdict(1.0, 0.50, 39.9) == "fp32"  # fast, but too far from float32
    assert verdict(2.0, 1.0, 58.5) == "int8"


def test_bfloat16_is_chosen_where_it_is_the_fastest_within_the_bar():
    assert verdict(1.0, 0.55, 58.0, bf16_s=0.52, bf16_snr_db=46.0) == "bf16"
    assert verdict(1.0, 0.52, 58.0, bf16_s=0.55, bf16_snr_db=46.0) == "int8"
    assert verdict(1.0, 0.99, 58.0, bf16_s=0.50, bf16_snr_db=39.0) == "fp32"  # bf16 fast but too far
    assert verdict(1.0, 0.99, 30.0, bf16_s=0.96, bf16_snr_db=48.0) == "fp32"  # neither clearly faster
    assert verdict(1.0, 0.60, 30.0, bf16_s=0.90, bf16_snr_db=48.0) == "bf16"  # int8 out of the bar


def test_a_bfloat16_cpu_times_bfloat16_too_and_gives_its_snr(monkeypatch):
    _native_bf16(monkeypatch, True)  # emulated where the CPU has none: slow, the same numbers
    model = tiny_ht_transformer_on(10)
    said = []
    choice = settle_auto(model, "auto", CPU, say=said.append)
    assert said[0].startswith("precision auto: timing float32, int8 and bfloat16 on this CPU")
    assert choice.bf16_s > 0 and choice.fp32_s > 0 and choice.int8_s > 0
    assert choice.precision == verdict(choice.fp32_s, choice.int8_s, choice.snr_db, choice.bf16_s, choice.bf16_snr_db)
    mix = choice_module._demo_mix(int(float(model.segment) * model.samplerate), 2)
    with torch.inference_mode():
        exact = prepare_model(model, "fp32", CPU)(mix)
        with precision_module.autocast("bf16", CPU):
            rounded = prepare_model(model, "bf16", CPU)(mix).float()
    assert choice.bf16_snr_db == pytest.approx(snr_db(exact, rounded), abs=1e-3)
    assert 25.0 < choice.bf16_snr_db < 90.0  # bfloat16's 8 bits of mantissa show in the stems
    assert "bfloat16 took" in said[-1] and read_choice(record_path(model)) == choice
    write_choice(record_path(model), PrecisionChoice("bf16", 1.0, 0.9, 55.0, 2, 0.5, 46.0))
    assert remembered_precision(model, "auto", CPU) == "bf16"
    _native_bf16(monkeypatch, False)  # the same record read where bfloat16 is not native: measured again
    assert read_choice(record_path(model)) is None


def test_measurement_holds_one_precisions_copy_at_a_time_and_leaves_the_model_as_it_was(monkeypatch):
    """With the float32 model, its int8 copy and a deep bfloat16 copy alive at once, a first
    `stemdeck separate` of htdemucs peaked at 1.35 GB while measuring (0.89 GB with the choice
    remembered; 0.97 GB now, `benchmarks/separate_memory.py`)."""
    import gc
    import weakref

    _native_bf16(monkeypatch, True)
    model = tiny_ht_transformer_on(10)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    copies, alive_at_prepare = [], []

    def counting(part, name, device):
        gc.collect()
        alive_at_prepare.append(sum(copy() is not None for copy in copies))
        prepared = prepare_model(part, name, device)
        if prepared is not part:
            copies.append(weakref.ref(prepared))
        return prepared

    monkeypatch.setattr(choice_module, "prepare_model", counting)
    choice = measure_choice(model)
    assert alive_at_prepare == [0, 0, 0] and len(copies) == 2  # fp32 runs the model itself
    assert choice.bf16_s > 0 and choice.int8_s > 0
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in weights.items())


def test_measurement_times_both_precisions_and_gives_int8_s_snr_on_music():
    model = tiny_ht_transformer_on(0)
    choice = measure_choice(model)
    assert choice.fp32_s > 0 and choice.int8_s > 0
    assert choice.threads == torch.get_num_threads()
    assert choice.precision == verdict(choice.fp32_s, choice.int8_s, choice.snr_db)
    mix = choice_module._demo_mix(int(float(model.segment) * model.samplerate), 2)
    with torch.inference_mode():
        expected = snr_db(prepare_model(model, "fp32", CPU)(mix), prepare_model(model, "int8", CPU)(mix))
    assert choice.snr_db == pytest.approx(expected, abs=1e-3)
    assert 40.0 < choice.snr_db < 120.0  # the LayerScales at 1: int8's error is in the stems


def test_settle_measures_once_then_reads_the_record(monkeypatch):
    model = tiny_ht_transformer_on(1)
    said = []
    first = settle_auto(model, "auto", CPU, say=said.append)
    assert first is not None and record_path(model).is_file()
    assert said[0].startswith("precision auto: timing float32 and int8")
    assert f"remembered in {record_path(model)}" in said[1]
    monkeypatch.setattr(choice_module, "measure_choice", lambda *a, **k: pytest.fail("measured twice"))
    assert settle_auto(model, "auto", CPU, say=said.append) == first
    assert len(said) == 2
    assert remembered_precision(model, "auto", CPU) == first.precision


def test_a_remembered_int8_is_what_auto_runs_offline_and_live(monkeypatch):
    from stemdeck.engine.worker.separator import WindowSeparator
    from stemdeck.engine.worker.windows import WindowPlan

    model = tiny_ht_transformer_on(2)
    write_choice(record_path(model), _choice("int8"))
    networks = []
    monkeypatch.setattr(
        separate_module, "prepare_network", lambda *a: networks.append(prepare_network(*a)) or networks[-1]
    )
    apply_model(model, torch.zeros(1, 2, 44100), precision="auto")
    assert networks[0].precision == "int8"
    assert any(isinstance(m, Int8Attention) for m in networks[0].model.modules())
    separator = WindowSeparator(model, WindowPlan.offline(44100, 2.0), precision="auto")
    assert separator.precision == "int8"
    assert any(isinstance(m, Int8Attention) for m in separator.model.modules())
    assert prepare_network(model, "fp32", CPU).precision == "fp32"  # asked for: never overridden


def test_the_record_belongs_to_these_weights_and_this_machine(monkeypatch):
    one, other = tiny_ht_transformer_on(3), tiny_ht_transformer_on(4)
    assert record_path(one) != record_path(other)
    write_choice(record_path(one), _choice("int8"))
    assert remembered_precision(other, "auto", CPU) == "fp32"
    path = record_path(one)
    monkeypatch.setattr(choice_module, "_machine", lambda: {"cpu": "another CPU", "flags": ["avx2"]})
    assert record_path(one) != path
    assert remembered_precision(one, "auto", CPU) == "fp32"


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps(
            {"format": 1, "choice": {"precision": "bf16", "fp32_s": 1, "int8_s": 1, "snr_db": 50, "threads": 1}}
        ),
        json.dumps(
            {"format": 99, "choice": {"precision": "int8", "fp32_s": 1, "int8_s": 1, "snr_db": 50, "threads": 1}}
        ),
        json.dumps({"format": 1, "choice": {"precision": "int8"}}),
        json.dumps([1, 2]),
    ],
)
def test_a_damaged_or_foreign_record_is_ignored_and_measured_again(content):
    model = tiny_ht_transformer_on(5)
    path = record_path(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    assert read_choice(path) is None
    assert remembered_precision(model, "auto", CPU) == "fp32"
    said = []
    settled = settle_auto(model, "auto", CPU, say=said.append)
    assert read_choice(path) == settled
    assert said[0] == f"precision auto: the record {path} is unreadable or from another version; timing again"


def test_auto_is_measured_only_where_another_precision_could_run_instead_of_float32(monkeypatch):
    model = tiny_ht_transformer_on(6)
    assert applies(model, "auto", CPU)
    assert not applies(model, "fp32", CPU)
    assert not applies(model, "int8", CPU)
    assert not applies(model, "auto", CPU, backend="onnx")
    assert not applies(model, "auto", torch.device("cuda"))
    assert not applies(HDemucs(sources=["drums", "bass"], channels=4, depth=2), "auto", CPU)  # no Transformer
    assert settle_auto(model, "fp32", CPU) is None and not record_path(model).exists()
    _native_bf16(monkeypatch, True)
    assert applies(model, "auto", CPU)  # a bfloat16 CPU measures too: int8 may beat it (Zen 5)
    assert remembered_precision(model, "auto", CPU) == "bf16"  # nothing measured yet
    write_choice(record_path(model), _choice("int8"))
    assert remembered_precision(model, "auto", CPU) == "int8"
    assert remembered_precision(model, "auto", CPU, backend="openvino") == "auto"  # the backend resolves it


def _timing_line() -> str:
    """What a command in its own process says as it measures: on this machine's real CPU."""
    names = ["float32", "int8", "bfloat16"] if cpu_has_native_bf16() else ["float32", "int8"]
    return f"precision auto: timing {', '.join(names[:-1])} and {names[-1]} on this CPU for this model"


def _as_this_cpu(monkeypatch) -> None:
    """The commands run in their own processes on this machine's real CPU, where bfloat16 may win:
    their records are read here as that CPU reads them, not as the AVX2 case above."""
    _native_bf16(monkeypatch, cpu_has_native_bf16())


def test_separate_measures_on_its_first_auto_run_and_runs_the_choice(tmp_path, monkeypatch):
    _as_this_cpu(monkeypatch)
    model = tiny_ht_transformer_on(7)
    checkpoint = tmp_path / "ht.safetensors"
    save_safetensors(model, checkpoint)
    write_tone(tmp_path / "song.wav", seconds=3.0)
    command = ("separate", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out"), "--model", str(checkpoint), "-v")
    first = run_stemdeck(*command)
    assert first.returncode == 0, first.stderr
    assert _timing_line() in first.stderr
    records = list((tmp_path / "cache" / "stemdeck" / "precision").glob("*.json"))
    assert len(records) == 1
    choice = read_choice(records[0])
    assert choice is not None, records[0].read_text()  # bfloat16, read here as if not native, was None
    chosen = choice.precision
    assert f"network: torch ({chosen} on cpu" in first.stderr

    write_choice(records[0], _choice("int8" if chosen == "fp32" else "fp32"))  # the record rules
    second = run_stemdeck(*command, "--force")
    assert second.returncode == 0, second.stderr
    assert "precision auto: timing" not in second.stderr
    assert f"network: torch ({'int8' if chosen == 'fp32' else 'fp32'} on cpu" in second.stderr
    asked = run_stemdeck(*command, "--force", "--precision", "fp32")
    assert "network: torch (fp32 on cpu" in asked.stderr


@pytest.mark.parametrize(
    ("capability", "onednn_limit", "native"),
    [
        ("AVX512", None, True),
        ("AVX512", "avx512_core_bf16", True),
        ("AVX512", "AVX10_1_512_AMX", True),
        ("AVX512", "AVX2", False),
        ("AVX512", "avx512_core_vnni", False),
        ("AVX2", None, False),
    ],
)
def test_bf16_is_native_only_where_neither_torch_nor_onednn_is_held_below_it(
    monkeypatch, capability, onednn_limit, native
):
    monkeypatch.setattr(precision_module, "cpu_info", lambda: ("a bfloat16 CPU", frozenset({"avx512f", "avx512_bf16"})))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if onednn_limit:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_limit)
    assert cpu_has_native_bf16() is native  # the module's own, not the fixture's stand-in
    monkeypatch.setattr(precision_module, "cpu_info", lambda: ("an AVX2 CPU", frozenset({"avx2", "fma"})))
    assert cpu_has_native_bf16() is False


HELD_TO_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # benchmarks' --isa avx2, in part


def test_a_process_held_to_avx2_times_and_remembers_as_an_avx2_cpu(tmp_path, monkeypatch):
    """A bfloat16 CPU whose torch and oneDNN are held to AVX2 by the environment runs bfloat16 as
    an AVX2 CPU would, slowly: its first `auto` run times float32 and int8 only, and remembers
    the choice apart from the same CPU's unheld one. On an AVX2 CPU the same holds trivially."""
    model = tiny_ht_transformer_on(8)
    checkpoint = tmp_path / "ht.safetensors"
    save_safetensors(model, checkpoint)
    write_tone(tmp_path / "song.wav", seconds=3.0)
    command = ("separate", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out"), "--model", str(checkpoint), "-v")
    held = run_stemdeck(*command, env=HELD_TO_AVX2)
    assert held.returncode == 0, held.stderr
    assert "precision auto: timing float32 and int8 on this CPU for this model" in held.stderr
    records = list((tmp_path / "cache" / "stemdeck" / "precision").glob("*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["machine"]["capability"] == "AVX2"
    assert read_choice(records[0]).precision in ("fp32", "int8")
    unheld = run_stemdeck(*command, "--force")
    assert unheld.returncode == 0, unheld.stderr
    if torch.backends.cpu.get_cpu_capability() == "AVX2":  # an AVX2 CPU, held or not: one machine
        assert "precision auto: timing" not in unheld.stderr and len(list(records[0].parent.glob("*.json"))) == 1
    else:  # another machine to the records: measured again
        assert _timing_line() in unheld.stderr and len(list(records[0].parent.glob("*.json"))) == 2


@pytest.mark.skipif(
    not (openvino_backend.available() and "avx512f" in cpu_info()[1]), reason="OpenVINO crashes so held on AVX-512 CPUs"
)
def test_openvino_held_to_avx2_on_an_avx512_cpu_is_refused_in_one_line(tmp_path):
    """OpenVINO 2026.4 dies of a segmentation fault in its first run where ONEDNN_MAX_CPU_ISA=AVX2
    holds an AVX-512 CPU; the command says so instead."""
    save_safetensors(tiny_ht_transformer_on(9), tmp_path / "ht.safetensors")
    write_tone(tmp_path / "song.wav", seconds=3.0)
    song, model, out = (str(tmp_path / name) for name in ("song.wav", "ht.safetensors", "out"))
    result = run_stemdeck("separate", song, "-o", out, "--model", model, "--backend", "openvino", env=HELD_TO_AVX2)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "stemdeck: error: --backend openvino: OpenVINO crashes where ONEDNN_MAX_CPU_ISA=AVX2 holds an AVX-512 CPU to "
        "older instructions; unset it, or use --backend torch"
    )
    assert not (tmp_path / "out").exists()


def test_live_dry_run_measures_for_the_live_commands_and_plans_with_the_choice(tmp_path, monkeypatch):
    """`live`, `play` and the mixer never measure before playing; `live --dry-run`, which
    calibrates anyway, is where a user who never runs `separate` gets the measurement."""
    _as_this_cpu(monkeypatch)
    checkpoint = tmp_path / "ht.safetensors"
    save_safetensors(tiny_ht_transformer_on(8), checkpoint)
    result = run_stemdeck("live", "--dry-run", "--model", str(checkpoint), timeout_s=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert _timing_line() in result.stderr
    records = list((tmp_path / "cache" / "stemdeck" / "precision").glob("*.json"))
    assert len(records) == 1
    assert f"live input with ht.safetensors on this machine ({read_choice(records[0]).precision}," in result.stdout


def test_a_cache_that_cannot_be_written_costs_only_a_new_measurement(tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setattr(choice_module, "choices_dir", lambda: blocked / "precision")
    model = tiny_ht_transformer_on(8)
    said = []
    choice = settle_auto(model, "auto", CPU, say=said.append)
    assert choice is not None and choice.precision in candidates()  # bfloat16 too where the CPU runs it
    assert said[-1].endswith(
        f"could not be written to {record_path(model)} (Not a directory); it is measured again next time"
    )
    assert remembered_precision(model, "auto", CPU) == "fp32"


def test_a_pinned_choice_is_run_without_measuring_and_a_wrong_one_is_refused(monkeypatch, tmp_path):
    model = tiny_ht_transformer_on(9)
    monkeypatch.setenv(PIN_ENV, "int8")
    monkeypatch.setattr(choice_module, "measure_choice", lambda *a, **k: pytest.fail("measured"))
    assert settle_auto(model, "auto", CPU) is None
    assert remembered_precision(model, "auto", CPU) == "int8"
    assert remembered_precision(model, "fp32", CPU) == "fp32"
    assert remembered_precision(model, "auto", CPU, backend="onnx") == "auto"  # ONNX Runtime resolves it: float32
    monkeypatch.setenv(PIN_ENV, "fast")
    with pytest.raises(ValueError, match=r"\$STEMDECK_AUTO_PRECISION='fast' is not a choice; set it to fp32, int8"):
        remembered_precision(model, "auto", CPU)
