"""An engine for an output device, built the same way for the command line and the GUI.

What the device fixes (its rate; on JACK also its block) is asked here, before a model loads,
so a missing device is said at once; then the engine is made and its window plan calibrated.
"""

from __future__ import annotations

from torch import nn

from stemdeck.engine.audio.jack_output import serves
from stemdeck.engine.config import PRESETS, EngineConfig, WindowConfig
from stemdeck.engine.device import DeviceError, sounddevice
from stemdeck.engine.engine import Engine


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
) -> Engine:
    """An engine for ``model`` at ``samplerate``, its plan fixed (calibrated on this machine unless
    ``calibrate`` is off); an engine whose plan fails is stopped, so no worker is left behind. A
    machine too slow for live input keeps the engine for the deck (``start_live`` then says why)
    unless ``refuse_live``: then that is raised here."""
    engine = Engine(model, EngineConfig(samplerate=samplerate, worker=worker, precision=precision))
    try:
        engine.prepare(window, block_frames=block_frames, calibrate_plan=calibrate, refuse_live=refuse_live)
    except BaseException:
        engine.stop()
        raise
    return engine
