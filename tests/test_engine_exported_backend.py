"""The engine's windows run by an exported network (`play`/`live`/`gui --backend openvino`): the
deck's stems within OpenVINO's SNR bar of torch's, in the separation process as in a thread, the
quick first stems still torch's, and a backend that cannot run refused in one line (the command
line) or replaced by torch with a banner (the GUI)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import exported_cache, run_stemdeck, tiny_ht_transformer_on
from test_gui import wait_idle  # sets the offscreen Qt platform

from stemdeck.engine.build import build_engine
from stemdeck.engine.config import PRESETS, EngineConfig, WindowConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.worker.separator import WindowSeparator
from stemdeck.engine.worker.windows import WindowPlan
from stemdeck.models import BagOfModels, load_checkpoint, save_safetensors
from stemdeck.models import onnx_backend as ob
from stemdeck.models import openvino_backend as ovb
from stemdeck.models.separate import separate

pytest.importorskip("openvino")

SR = 44100
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    yield from exported_cache(tmp_path_factory, "engine-ov-cache")


@pytest.fixture(scope="module")
def model():
    return tiny_ht_transformer_on(seed=7)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("engine-ov") / "tiny-ls1.safetensors"
    save_safetensors(model, path)
    return path


@pytest.fixture(scope="module")
def exported(model, cache):
    """The export made once for the module, as `play --backend openvino` makes it before playing."""
    notes = []
    build_engine(
        model, WindowConfig(), samplerate=SR, block_frames=512, precision="fp32", worker="thread", calibrate=False,
        network_backend="openvino", note=notes.append,
    ).stop()  # fmt: skip
    assert len(notes) == 2 and "exporting the network for OpenVINO" in notes[0], notes
    assert notes[1].startswith("network: openvino (OpenVINO") and "float32" in notes[1]
    assert "live input" not in notes[1]  # a deck (not calibrated): its windows are padded
    return cache


@pytest.mark.parametrize("padded", [False, True])
def test_live_input_says_where_its_windows_run_on_torch(model, exported, padded):
    """Live input's balanced windows run at their own length, which the network cannot: the note
    says torch runs them, and which preset pads them for OpenVINO (as the quality preset does;
    its own hop is longer than the tiny model's 2-s segment allows)."""
    window = replace(PRESETS["balanced"], window_s=1.5, hop_s=0.4, lookahead_s=0.3, span_s=0.8, pad_to_segment=padded)
    notes = []
    build_engine(
        model, window, samplerate=SR, block_frames=512, precision="fp32", worker="thread",
        network_backend="openvino", note=notes.append,
    ).stop()  # fmt: skip
    assert notes[-1].startswith("network: openvino (OpenVINO")
    remark = (
        "; live input's windows run at their own length with this preset, which only torch runs "
        "(--preset quality pads them to the model's segment)"
    )
    assert notes[-1].endswith(remark) == (not padded)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    error = np.sum((reference - estimate) ** 2)
    return float(10 * np.log10(np.sum(reference**2) / error)) if error else float("inf")


def track(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.3 * np.sign(np.sin(2 * np.pi * 2 * t)) * rng.random(t.size)
    return np.ascontiguousarray(np.stack([tone, 0.7 * tone]), dtype=np.float32)


def deck_stems(model, audio: np.ndarray, **config) -> np.ndarray:
    """The deck's stems of ``audio`` once separated to its end, offline's chunking redone over the
    quick start (as the deck leaves them)."""
    config = {"worker": "thread", "precision": "fp32", "cache_stems": False, **config}
    with Engine(model, EngineConfig(**config)) as engine:
        engine.load_array(audio)
        assert engine.wait_separated(audio.shape[-1], timeout_s=120)
        if config["worker"] == "thread":
            assert engine.backend.worker.finished.wait(60)
        return engine._deck_buffers.stems[..., : audio.shape[-1]].copy()


def test_a_window_run_by_openvino_keeps_its_bar_against_torch(model, exported):
    plan = WindowPlan.offline(SR, float(model.segment))
    window = track(float(model.segment))
    torch_stems = WindowSeparator(model, plan, "fp32")(window)
    separator = WindowSeparator(model, plan, "fp32", backend="openvino")
    stems = separator(window)
    assert stems.shape == torch_stems.shape == (4, 2, window.shape[-1])
    assert not np.array_equal(stems, torch_stems)  # OpenVINO's arithmetic ran
    assert snr_db(torch_stems, stems) >= ovb.SNR_BAR_DB
    assert separator.describe().startswith("openvino (OpenVINO")
    assert WindowSeparator(model, plan, "fp32").describe() == "torch (fp32)"


def test_a_shorter_padded_window_is_padded_as_torch_pads_it_and_an_unpadded_one_runs_torch(model, exported):
    """A live window shorter than the segment: padded (the quality preset), the network pads it
    to its length as the torch model pads it to its training segment; unpadded (the balanced and
    low-latency presets), it runs at its own length, which only torch can."""
    window_config = WindowConfig(window_s=1.2, hop_s=0.3, lookahead_s=0.3)
    window = track(1.2, seed=3)
    for pad, runs in ((True, "openvino (OpenVINO"), (False, "torch (fp32)")):
        plan = WindowPlan.from_config(replace(window_config, pad_to_segment=pad), SR, float(model.segment))
        assert plan.window_frames == window.shape[-1] < float(model.segment) * SR
        expected = WindowSeparator(model, plan, "fp32")(window)
        separator = WindowSeparator(model, plan, "fp32", backend="openvino")
        stems = separator(window)
        assert separator.describe().startswith(runs)
        assert stems.shape == expected.shape and snr_db(expected, stems) >= ovb.SNR_BAR_DB
        assert np.array_equal(stems, expected) == (not pad)


def test_onnx_runtime_runs_a_decks_window_too(model, cache):
    """`--backend onnx` takes the same path: ONNX Runtime's float32 window within its bar."""
    pytest.importorskip("onnxruntime")
    plan = WindowPlan.offline(SR, float(model.segment))
    window = track(float(model.segment), seed=5)
    expected = WindowSeparator(model, plan, "fp32")(window)
    separator = WindowSeparator(model, plan, "fp32", backend="onnx")
    stems = separator(window)
    assert separator.describe().startswith("onnx")
    assert not np.array_equal(stems, expected) and snr_db(expected, stems) >= ob.SNR_BAR_DB


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_the_decks_stems_from_openvino_keep_the_bar_against_offline_separation(model, exported, worker):
    """The deck chunks as `separate` does; with OpenVINO its stems are within OpenVINO's bar of
    torch's offline stems, in the separation process (the default) as in a thread."""
    audio = track(5.0, seed=1)
    expected = np.stack(list(separate(model, audio, SR, precision="fp32").values()))
    stems = deck_stems(model, audio, worker=worker, network_backend="openvino", deck_quick_start_s=0.0)
    torch_stems = deck_stems(model, audio, worker=worker, deck_quick_start_s=0.0)
    assert np.abs(expected).max() > 0.05  # not two silences that agree
    assert not np.array_equal(stems, torch_stems)  # OpenVINO's arithmetic ran
    assert snr_db(expected, stems) >= ovb.SNR_BAR_DB


def test_the_quick_first_stems_stay_torch(model, exported):
    """The deck's first 0.5 s come from a short window run at its own length, which the network
    (one length) cannot run: torch runs it, so those stems are torch's, bit for bit."""
    audio = track(5.0, seed=2)
    config = dict(worker="thread", precision="fp32", cache_stems=False, deck_quick_start_s=0.5)
    quick = []
    for backend in ("torch", "openvino"):
        with Engine(model, EngineConfig(network_backend=backend, **config)) as engine:
            engine.load_array(audio)
            assert engine.wait_separated(int(0.5 * SR), timeout_s=60)
            quick.append(engine._deck_buffers.stems[..., : int(0.4 * SR)].copy())
    assert np.abs(quick[0]).max() > 0.01 and np.array_equal(quick[0], quick[1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            dict(precision="int8"),
            r"^--backend openvino: OpenVINO runs .*; use --precision .* or --backend torch for int8$",
        ),
        (dict(network_backend="gpu"), r"^unknown backend 'gpu'; choose auto, torch, onnx, openvino$"),
        (dict(bag=True), r"^--backend openvino: it runs one model, not a bag of 2; use --backend torch$"),
    ],
)
def test_a_backend_that_cannot_run_is_refused_in_one_line_before_anything_starts(model, change, message):
    change = dict(change)
    built = BagOfModels([model, model]) if change.pop("bag", False) else model
    options = dict(precision="fp32", worker="process", network_backend="openvino") | change
    with pytest.raises(ValueError, match=message):
        build_engine(built, WindowConfig(), samplerate=SR, block_frames=512, calibrate=False, **options)


def test_without_openvino_the_engine_says_how_to_install_it(model, monkeypatch):
    monkeypatch.setattr(ovb, "available", lambda: False)
    with pytest.raises(ValueError, match=r"^--backend openvino: OpenVINO is not installed; .*stemdeck\[openvino\]"):
        build_engine(
            model, WindowConfig(), samplerate=SR, block_frames=512, calibrate=False, network_backend="openvino"
        )


def test_live_dry_run_plans_with_openvino_and_refuses_int8_in_one_line(checkpoint, exported):
    env = {ob.CACHE_ENV: str(exported)}
    refused = run_stemdeck(
        "live", "--dry-run", "--model", str(checkpoint), "--backend", "openvino", "--precision", "int8", env=env
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("stemdeck: error: --backend openvino: OpenVINO runs")
    planned = run_stemdeck(
        "live", "--dry-run", "--model", str(checkpoint), "--backend", "openvino", "--precision", "fp32", env=env
    )
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert "exporting" not in planned.stderr  # the module's export is found, not made again
    assert "network: openvino (OpenVINO" in planned.stderr
    assert "balanced" in planned.stdout


@pytest.mark.parametrize(("precision", "runs"), [("fp32", "openvino (OpenVINO"), ("int8", "torch (int8)")])
def test_the_mixer_runs_openvino_or_says_why_torch_runs_instead(qtbot, tmp_path, model, exported, precision, runs):
    """`stemdeck gui --backend openvino`: the deck's windows run in OpenVINO; where it cannot run
    (int8 here), the banner says why and the mixer plays with torch rather than not at all."""
    from PyQt6.QtCore import QSettings

    from stemdeck.gui.main_window import MainWindow
    from stemdeck.gui.session import Session, SessionConfig
    from stemdeck.models.loading import LoadedModel

    config = SessionConfig(
        model="tiny-ls1",
        headless=True,
        worker="thread",
        calibrate=False,
        precision=precision,
        network_backend="openvino",
    )
    session = Session(config, model_loader=lambda name: LoadedModel(model, name))
    window = MainWindow(session, QSettings(str(tmp_path / "stemdeck.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.show()
    try:
        session.choose_model("tiny-ls1")
        wait_idle(qtbot, session)
        session.open_array(track(3.0), SR, "tone")
        wait_idle(qtbot, session)
        assert session.model_name == "tiny-ls1"
        qtbot.waitUntil(lambda: session.engine.backend.worker is not None, timeout=30000)
        assert session.engine.backend.worker.separator.describe().startswith(runs)
        status, tip = window.model_status.text(), window.model_status.toolTip()
        if precision == "int8":
            assert window.banner.isVisible()
            assert window.errors[-1].startswith("--backend openvino: OpenVINO runs float32")
            assert window.errors[-1].endswith("— torch separates instead")
            assert "openvino" not in status and "windows:" not in tip
        else:
            assert not window.errors
            assert status.endswith(" · openvino") and "\nwindows: openvino (OpenVINO" in tip
    finally:
        window.close()
        session.close()


def test_play_on_jack_separates_with_openvino_and_the_recording_holds_the_stems(
    jack_server, checkpoint, exported, tmp_path
):
    """`stemdeck play FILE --backend openvino` as a user runs it, on a JACK server: the network is
    said, and what it played (recorded) is the track's stems, the vocals soloed: neither silence
    nor the whole mix."""
    import soundfile as sf

    song, take = tmp_path / "song.wav", tmp_path / "take.wav"
    audio = track(6.0, seed=4)
    sf.write(song, audio.T, SR)
    env = {ob.CACHE_ENV: str(exported)}
    args = ["play", str(song), "--model", str(checkpoint), "--backend", "openvino", "--precision", "fp32"]
    result = run_stemdeck(*args, "--solo", "vocals", "--duration", "4", "--record", str(take), env=env, timeout_s=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "network: openvino (OpenVINO" in result.stderr and "exporting" not in result.stderr
    recorded, rate = sf.read(take, dtype="float32", always_2d=True)
    assert rate == SR and recorded.shape[0] >= 3 * SR
    played = recorded[SR:].T  # after the first second: stems, not the dry track
    model = load_checkpoint(checkpoint)
    vocals = separate(model, audio, SR, precision="fp32")["vocals"]
    level, expected = float(np.sqrt(np.mean(played**2))), float(np.sqrt(np.mean(vocals[:, SR:] ** 2)))
    assert np.isfinite(played).all() and expected > 0.005
    assert level == pytest.approx(expected, rel=0.25)  # the vocals' level: not the mix (0.24), not silence
