"""Window plans: placement, weights, the latency they imply, and refusals."""

import numpy as np
import pytest

from stemdeck.engine.config import PRESETS, WindowConfig
from stemdeck.engine.worker.windows import WindowPlan
from stemdeck.models.separate import transition_weights


def test_offline_plan_is_the_reference_chunking():
    plan = WindowPlan.offline(44100, 7.8, 0.25)
    assert (plan.window_frames, plan.hop_frames, plan.lookahead_frames) == (343980, 257985, 0)
    assert np.array_equal(plan.weights, transition_weights(343980).numpy())
    assert [plan.window_start(k) for k in range(3)] == [0, 257985, 515970]


def test_spans_tile_the_timeline_and_latency_adds_up():
    config = WindowConfig(window_s=4.0, hop_s=1.0, lookahead_s=0.5, span_s=2.0)
    plan = WindowPlan.from_config(config, 44100, 7.8)
    assert plan.weights[: 4 * 44100 - int(2.5 * 44100)].sum() == 0  # before the span
    assert plan.weights[-int(0.5 * 44100) :].sum() == 0  # the lookahead is never used
    span_start = plan.window_start(3) + plan.window_frames - plan.lookahead_frames - plan.span_frames
    assert span_start == 3 * plan.hop_frames
    assert plan.final_until(3) == plan.window_start(4) + plan.window_frames - plan.lookahead_frames - plan.span_frames
    assert plan.latency_frames(256, 1000) == 22050 + 88200 + 256 + 1000


@pytest.mark.parametrize("segment_s", [7.8, 4.0])  # the paper's model, the bundled tiny one
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_plans(name, segment_s):
    plan = WindowPlan.from_config(PRESETS[name], 44100, segment_s)
    assert 0 < plan.hop_frames <= plan.span_frames
    assert plan.lookahead_frames + plan.span_frames <= plan.window_frames <= int(segment_s * 44100)
    assert plan.weights.max() == pytest.approx(1.0)


def test_a_short_model_segment_shortens_the_quality_span():
    assert PRESETS["quality"].resolved(7.8).span_s == 4.0
    assert PRESETS["quality"].resolved(4.0).span_s == pytest.approx(2.5)  # 4 s window less 1.5 s lookahead


@pytest.mark.parametrize(
    "config,message",
    [
        (WindowConfig(window_s=2.0, hop_s=1.5, lookahead_s=0.2, span_s=1.0), "hop"),
        (WindowConfig(window_s=2.0, hop_s=0.5, lookahead_s=1.5, span_s=1.0), "must fit in the window"),
    ],
)
def test_impossible_plans_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        WindowPlan.from_config(config, 44100, 7.8)


def test_calibration_lengthens_the_hop_and_keeps_the_plan_valid():
    from stemdeck.engine.worker.calibrate import fit_window

    window = WindowConfig(window_s=7.8, hop_s=2.0, lookahead_s=1.5, span_s=4.0).resolved(7.8)
    fitted = fit_window(window, forward_s=2.4, headroom=0.3)
    assert fitted.hop_s == pytest.approx(2.4 / 0.7)
    assert fitted.hop_s <= fitted.span_s <= 7.8 - 1.5
    WindowPlan.from_config(fitted, 44100, 7.8)
    assert fit_window(window, forward_s=1.0, headroom=0.3) == window
    with pytest.raises(ValueError, match="no hop fits"):
        fit_window(window, forward_s=5.0, headroom=0.3)


def test_a_mono_window_gets_mono_stems_and_a_stereo_one_keeps_its_channels():
    """A mono file (duplicated to two channels) played back wider than it is: the model's two
    channels differ a little (-27 dB on the tiny model). Its stems are the mean of the two, as
    `stemdeck separate` writes a mono file's; a stereo window's stems are left as they are."""
    from conftest import tiny_ht_transformer_on

    from stemdeck.engine.worker.separator import WindowSeparator
    from stemdeck.engine.worker.windows import WindowPlan

    model = tiny_ht_transformer_on(11)
    separator = WindowSeparator(model, WindowPlan.offline(44100, 2.0), precision="fp32")
    rng = np.random.default_rng(0)
    frames = separator.plan.window_frames
    mono = np.repeat(0.1 * rng.standard_normal((1, frames), dtype=np.float32), 2, axis=0)
    stereo = 0.1 * rng.standard_normal((2, frames), dtype=np.float32)
    stems = separator(mono)
    assert np.array_equal(stems[:, 0], stems[:, 1])
    wide = separator(stereo)
    assert not np.allclose(wide[:, 0], wide[:, 1])
    import torch

    with torch.inference_mode():
        raw = separator.model(torch.from_numpy(mono)[None])[0].numpy()
    assert not np.allclose(raw[:, 0], raw[:, 1])  # what the model itself gives a mono window
    np.testing.assert_allclose(stems[:, 0], raw.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_separator_shares_the_models_weights_and_keeps_its_segment_rule_to_itself(precision):
    """A deck's separation process held htdemucs's weights twice (168 MB) with a deep copy per
    separator; its copy now shares them on the CPU, and what it sets (the training segment's
    padding) stays its own. Its stems are the model's own, padded to the segment as its plan says."""
    import torch
    from conftest import tiny_ht_transformer_on

    from stemdeck.engine.worker.separator import WindowSeparator

    model = tiny_ht_transformer_on(12).eval()
    expected_weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    padded = WindowSeparator(model, WindowPlan.offline(44100, 2.0), precision=precision)
    unpadded = WindowSeparator(model, WindowPlan.from_config(PRESETS["balanced"], 44100, 2.0), precision=precision)
    assert padded.plan.pad_to_segment and not unpadded.plan.pad_to_segment
    assert padded.model.use_train_segment and not unpadded.model.use_train_segment
    assert model.use_train_segment is True  # the caller's model as it was made
    ours = {id(tensor) for tensor in [*model.parameters(), *model.buffers()]}
    for separator in (padded, unpadded):
        theirs = [*separator.model.parameters(), *separator.model.buffers()]
        shared = sum(id(tensor) in ours for tensor in theirs)
        assert shared >= (len(theirs) // 2 if precision == "int8" else len(theirs))  # int8 makes its products anew
    after = model.state_dict()
    assert all(torch.equal(expected_weights[name], after[name]) for name in expected_weights)
    window = 0.1 * np.random.default_rng(1).standard_normal((2, padded.plan.window_frames), dtype=np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(window)[None])[0].numpy() if precision == "fp32" else None
    stems = padded(window)
    assert stems.shape == (4, 2, window.shape[-1])
    if expected is not None:
        np.testing.assert_allclose(stems, expected, atol=1e-5)
