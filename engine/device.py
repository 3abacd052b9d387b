"""Sound devices through sounddevice (PortAudio): listing, opening, and losing them.

On a running JACK server the engine plays through its own JACK client instead
(``engine.jack_output``); this module still lists devices and serves every other host API.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import weakref
from collections.abc import Callable

from stemdeck.engine import jack_server

SOUNDDEVICE_HINT = "install PortAudio (Debian: apt install libportaudio2) and the sounddevice package"
JACK_HOST_API = "JACK Audio Connection Kit"


class DeviceError(Exception):
    """A sound device that cannot be opened or that went away; the message says what to do."""


def sounddevice():
    try:
        import sounddevice as sd
    except OSError as exc:  # the PortAudio library itself is missing
        raise DeviceError(f"no audio backend: {exc}; {SOUNDDEVICE_HINT}") from None
    _guard_exit(sd)
    return sd


# -- PortAudio's JACK client ------------------------------------------------------------------------
# PortAudio's JACK host API opens a JACK client when PortAudio starts, and its teardown asserts
# that closing it worked: once that server has gone (killed, restarted), stopping PortAudio
# aborts the whole process ("pa_jack.c: Terminate: Assertion `err == 0' failed", status 134), at
# the program's exit or at a rescan. So PortAudio is stopped only while that server lives.

_PORTAUDIO_JACK_SERVER: list[jack_server.Server | None] = [None]  # that server, if known


@functools.cache
def _guard_exit(sd) -> None:
    """Once: sounddevice's exit handler (it stops PortAudio) runs only while it is safe."""
    atexit.unregister(sd._exit_handler)
    atexit.register(_stop_portaudio_at_exit, sd)
    _note_jack_server(sd)


def _note_jack_server(sd) -> None:
    """Which JACK2 server PortAudio has just connected to, by its socket (None: no JACK host
    API, or a JACK whose sockets are elsewhere, PipeWire's: nothing to check there)."""
    connected = any(JACK_HOST_API in api["name"] for api in sd.query_hostapis())
    _PORTAUDIO_JACK_SERVER[0] = jack_server.running_server() if connected else None


def portaudio_can_stop() -> bool:
    """Whether stopping PortAudio is safe: its JACK client's server, if any, still runs (a
    server started since under the same name does not count)."""
    server = _PORTAUDIO_JACK_SERVER[0]
    return server is None or server.runs()


def _stop_portaudio_at_exit(sd) -> None:
    if portaudio_can_stop():
        sd._exit_handler()
    # else PortAudio is left as it is: the process ends, and the OS frees what it held


def list_devices() -> list[dict]:
    """Every device with its host API name, index and channel counts."""
    sd = sounddevice()
    apis = sd.query_hostapis()
    return [
        dict(device, index=index, hostapi_name=apis[device["hostapi"]]["name"])
        for index, device in enumerate(sd.query_devices())
    ]


# The PortAudio streams open_stream has opened: a rescan restarts PortAudio, which would close them.
_OPEN_STREAMS: weakref.WeakSet = weakref.WeakSet()


def rescan_devices() -> bool:
    """Have PortAudio list the devices again. It lists them as they were when it started, so a
    sound server started (or a card plugged in) since stays unseen until it restarts; a restart
    closes every open stream, so it is done only while none is open, and not once its JACK
    server has gone (see above). True when it rescanned."""
    sd = sounddevice()
    if any(not stream.closed for stream in list(_OPEN_STREAMS)) or not portaudio_can_stop():
        return False
    with quiet_stderr():
        sd._terminate()
        sd._initialize()
    _note_jack_server(sd)
    return True


def is_jack_device(index: int) -> bool:
    """Whether PortAudio's device ``index`` belongs to its JACK host API."""
    return any(d["index"] == index and "JACK" in d["hostapi_name"] for d in list_devices())


@contextlib.contextmanager
def quiet_stderr():
    """libjack and ALSA print their own diagnostics when a server is missing; we say it in one line."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def resolve_device(spec: str | int | None, kind: str) -> int | None:
    """A device index from an index, an exact name or a unique substring; ``None`` = default."""
    if spec is None or spec == "":
        return None
    devices = list_devices()
    channels_key = "max_input_channels" if kind == "input" else "max_output_channels"
    usable = [d for d in devices if d[channels_key] > 0]
    if isinstance(spec, int) or str(spec).isdigit():
        index = int(spec)
        if any(d["index"] == index for d in usable):
            return index
        raise DeviceError(f"no {kind} device number {index}; run `stemdeck devices` to list them")
    exact = [d for d in usable if d["name"] == spec]
    matches = exact or [d for d in usable if str(spec).lower() in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]["index"]
    if not matches:
        raise DeviceError(f"no {kind} device matches {spec!r}; run `stemdeck devices` to list them")
    names = ", ".join(repr(d["name"]) for d in matches)
    raise DeviceError(f"{spec!r} matches several {kind} devices ({names}); be more specific")


def open_stream(
    *,
    callback: Callable,
    samplerate: int,
    blocksize: int,
    input_device,
    output_device,
    input_channels: int,
    output_channels: int,
    on_finished: Callable[[], None],
    native=None,
    max_frames: int = 0,
):
    """Start a duplex stream (or output-only when ``input_channels`` is 0); float32 buffers.
    With ``native`` (a :class:`~engine.audio.native.NativeRender`), PortAudio calls compiled code
    that never takes Python's interpreter lock; ``callback`` where that cannot be done."""
    sd = sounddevice()
    duplex = input_channels > 0
    stream_args = dict(
        samplerate=samplerate,
        blocksize=blocksize,
        device=(input_device, output_device) if duplex else output_device,
        channels=(input_channels, output_channels) if duplex else output_channels,
        finished_callback=on_finished,
    )
    try:
        stream = _native_stream(sd, native, input_channels, output_channels, max(max_frames, blocksize), stream_args)
        if stream is None:
            stream = (sd.Stream if duplex else sd.OutputStream)(dtype="float32", callback=callback, **stream_args)
        _OPEN_STREAMS.add(stream)
        stream.start()
    except (sd.PortAudioError, ValueError) as exc:
        raise DeviceError(
            f"cannot open the audio device ({_first_line(exc)}); check `stemdeck devices`, "
            "the sample rate and channel count, or start the sound server"
        ) from None
    return stream


def _native_stream(sd, native, input_channels: int, output_channels: int, max_frames: int, stream_args: dict):
    """A sounddevice stream whose callback is :func:`engine.audio.native_process.portaudio_process`
    (None where it cannot be: no native render, asked for Python, a 32-bit ``unsigned long``)."""
    from stemdeck.engine.audio.native import (
        NativeSlots,
        NativeUnavailable,
        build_device_route,
        native_wanted,
        portaudio_callback,
    )

    if native is None or not native_wanted() or stream_args["blocksize"] <= 0:
        return None
    callback = portaudio_callback()
    if callback is None:
        return None
    try:
        slots = NativeSlots(port_buffer=False)
        slots.publish(*build_device_route(native, output_channels, input_channels, max_frames))
    except NativeUnavailable:
        return None
    stream = sd._StreamBase(
        kind="duplex" if input_channels else "output",
        dtype=("float32", "float32") if input_channels else "float32",
        callback=sd._ffi.cast("PaStreamCallback*", callback.address),
        userdata=sd._ffi.cast("void *", slots.header.ctypes.data),
        **stream_args,
    )
    stream.native_slots = slots  # the header and routes the callback reads live as long as it
    stream.native_shape = (output_channels, input_channels, max_frames)
    return stream


def close_stream(stream) -> None:
    """Stop and close an output (sounddevice's stream, or a hold on the JACK client), quietly:
    the device may already be gone."""
    if stream is None:
        return
    try:
        stream.stop()
        stream.close()
    except Exception:
        pass


def renew_native_stream(stream, native, timeout_s: float = 0.5) -> bool:
    """Point a native stream's callback at ``native``'s arrays (a new track); False if ``stream``
    is not native (its Python callback reads the engine's arrays itself)."""
    slots = getattr(stream, "native_slots", None)
    if slots is None:
        return False
    from stemdeck.engine.audio.native import build_device_route

    slots.publish(*build_device_route(native, *stream.native_shape))
    slots.wait_settled(timeout_s, lambda: not stream.active)
    return True


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
