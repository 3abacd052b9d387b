"""An engine for an output device, built the same way for the command line and the GUI.

What the device fixes (its rate; on JACK also its block) is asked here, before a model loads,
so a missing device is said at once; then the engine is made and its window plan calibrated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from stemdeck.engine.audio.jack_output import serves
from stemdeck.engine.config import PRESETS, EngineConfig, WindowConfig
from stemdeck.engine.device import DeviceError, sounddevice
from stemdeck.engine.engine import Engine
from stemdeck.engine.session import WorkerError

NETWORK_NOTE = "network: "  # how build_engine's note of what runs the windows begins


def device_rate(output_device: int | None) -> int:
    """The rate the output device runs at (a JACK server's, when JACK carries the audio): the engine runs there."""
    jack = serves(None, output_device)
    if jack is not None:
        return jack.samplerate
    sd = sounddevice()
    try:
        return int(sd.query_devices(output_device, "output")["default_samplerate"])
    except (ValueError, sd.PortAudioError) as exc:
        raise DeviceError(f"no usable output device ({exc}); run `stemdeck devices`") from None


def device_block_frames(output_device: int | None, blocksize: int) -> int:
    """A JACK server fixes the block (its period), so the latency printed is the one played;
    elsewhere ``blocksize`` is asked for."""
    jack = serves(None, output_device)
    return jack.blocksize if jack is not None else blocksize


def session_window(preset: str, latency_s: float | None = None) -> WindowConfig:
    """The window plan asked for: a target latency if given, else the named preset."""
    return WindowConfig.for_latency(latency_s) if latency_s else PRESETS[preset]


def build_engine(
    model: nn.Module,
    window: WindowConfig,
    *,
    samplerate: int,
    block_frames: int,
    precision: str = "auto",
    worker: str = "process",
    calibrate: bool = True,
    refuse_live: bool = False,
    network_backend: str = "torch",
    note: Callable[[str], None] | None = None,
) -> Engine:
    """An engine for ``model`` at ``samplerate``, its plan fixed (calibrated on this machine unless
    ``calibrate`` is off); an engine whose plan fails is stopped, so no worker is left behind. A
    machine too slow for live input keeps the engine for the deck (``start_live`` then says why)
    unless ``refuse_live``: then that is raised here. An exported ``network_backend`` is made
    ready first (:func:`ready_network`, which ``note`` hears from)."""
    described = ready_network(model, precision, network_backend, worker, note)
    if described is not None and note is not None:
        live_remark = ""
        if calibrate and not window.pad_to_segment:
            live_remark = (
                "; live input's windows run at their own length with this preset, which only torch runs "
                "(--preset quality pads them to the model's segment)"
            )
        note(f"{NETWORK_NOTE}{described}{live_remark}")
    config = EngineConfig(samplerate=samplerate, worker=worker, precision=precision, network_backend=network_backend)
    engine = Engine(model, config)
    try:
        engine.prepare(window, block_frames=block_frames, calibrate_plan=calibrate, refuse_live=refuse_live)
    except BaseException:
        engine.stop()
        raise
    return engine


def ready_network(
    model: nn.Module, precision: str, backend: str, worker: str, note: Callable[[str], None] | None = None
) -> str | None:
    """Export and measure ``backend``'s network here, once, before a worker needs it: a first
    export takes 20 s to 2 minutes for htdemucs, which ``note`` hears of, and a refusal is one
    line (``ValueError``) before anything starts. A separation process then only reads the cached
    files, so this process lets its copy go. What runs the windows, in words (``None``: torch)."""
    import torch

    from stemdeck.engine.worker.separator import backend_network
    from stemdeck.models.precision import EXPORTED_BACKENDS

    network = backend_network(model, precision, torch.device("cpu"), backend, note)
    if network is None:
        return None
    described = network.describe()
    if worker == "process":
        del network
        EXPORTED_BACKENDS[backend].module().release()
    return described


@dataclass(frozen=True)
class PresetPlan:
    """What a preset (or a target latency) gets on this machine, measured before any session."""

    name: str
    latency_ms: float | None  # None: refused (too slow for live input with this model)
    window_s: float = 0.0
    hop_s: float = 0.0
    forward_s: float = 0.0  # the slowest timed forward of the chosen window
    lengthened: bool = False  # this machine needed a longer plan than the preset asks for
    refusal: str = ""


def preset_plans(engine: Engine, block_frames: int, windows: dict[str, WindowConfig] | None = None) -> list[PresetPlan]:
    """Calibrate each plan (every preset, unless ``windows`` names others) on ``engine``'s worker,
    one after another, as a session would: the latency each gets here, or why live input is refused."""
    plans = []
    for name, window in (windows or PRESETS).items():
        try:
            engine.prepare(window, block_frames=block_frames, calibrate_plan=True, refuse_live=True)
        except (ValueError, WorkerError) as exc:
            if getattr(exc, "kind", "ValueError") != "ValueError":  # the worker failed: not a plan's answer
                raise
            plans.append(PresetPlan(name, None, refusal=str(exc)))
            continue
        calibration = engine.calibration
        plans.append(
            PresetPlan(
                name,
                1000.0 * engine.latency_frames / engine.config.samplerate,
                engine.window.window_s,
                engine.window.hop_s,
                calibration.forward_s if calibration is not None else 0.0,
                calibration is not None and calibration.adapted,
            )
        )
    return plans


def describe_plans(plans: list[PresetPlan]) -> str:
    """One line per preset, for `stemdeck live --dry-run`."""
    lines = []
    for plan in plans:
        if plan.latency_ms is None:
            lines.append(f"  {plan.name:<12} refused: {plan.refusal}")
            continue
        note = " (lengthened for this machine)" if plan.lengthened else ""
        lines.append(
            f"  {plan.name:<12} latency {plan.latency_ms:7.0f} ms   window {plan.window_s:.2f} s, "
            f"hop {plan.hop_s:.2f} s; one window takes {plan.forward_s:.2f} s{note}"
        )
    return "\n".join(lines)
