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
