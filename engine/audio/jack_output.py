"""stemdeck as a JACK client: one client per process, ports named by stem, kept all session.

Through PortAudio a JACK server sees ``PortAudio:out_0..N``, refuses more channels than it has
playback ports, and the ports are re-created on every track load, dropping the user's
connections. Here the client ``stemdeck`` is opened on first use and outlives engines: a track
load or a model switch detaches one engine's block function and attaches the next, while the
ports (``stemdeck:master_L``, ``stemdeck:vocals_R``, ...) and their connections stay.

Threads: JACK's realtime thread runs the engine's Numba kernel into a preallocated interleaved
``(frames, channels)`` buffer and copies its columns into the port buffers; no locks, no
buffer allocation. An engine that hands its kernel as a :class:`NativeRender` is played by a
compiled process callback that never takes Python's interpreter lock (:mod:`engine.audio.native`:
no Python thread of this process can delay a cycle); a plain Python block function is played
by ``_process``, which reads one immutable ``Route`` (swapped whole by the control side).
``STEMDECK_PYTHON_CALLBACK=1`` plays every engine through ``_process`` (for comparison). xruns
come from JACK's xrun callback (another thread) through a counter pair that each side only
writes its own half of.
"""

from __future__ import annotations

import atexit
import ctypes
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from stemdeck.engine.audio.native import (
    NativeRender,
    NativeSlots,
    NativeUnavailable,
    build_native_route,
    native_wanted,
)
from stemdeck.engine.device import DeviceError, quiet_stderr
from stemdeck.engine.jack_server import current_server

CLIENT_NAME = "stemdeck"
MASTER = "master"
DETACH_TIMEOUT_S = 0.5  # a dead server never runs another cycle: stop waiting for one


def channel_suffixes(channels: int) -> tuple[str, ...]:
    return ("L", "R") if channels == 2 else tuple(str(c + 1) for c in range(channels))


def output_port_names(
    sources: tuple[str, ...], channels: int, stem_outputs: bool, groups: tuple[str, ...] | None = None
) -> list[str]:
    """Short port names in the kernels' column order: the mix first, then each stem; or one
    pair per name in ``groups`` (two decks: master, cue, deckA_vocals, ...)."""
    if groups is None:
        groups = (MASTER, *(sources if stem_outputs else ()))
    return [f"{group}_{suffix}" for group in groups for suffix in channel_suffixes(channels)]


def input_port_names(channels: int) -> list[str]:
    return [f"in_{suffix}" for suffix in channel_suffixes(channels)]


def port_array(port) -> np.ndarray:
    """This cycle's buffer of ``port`` as float32 (JACK may move it between cycles)."""
    return np.frombuffer(port.get_buffer(), dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Route:
    """What every process cycle does until the next swap; never changed once built.

    ``outdata`` is ``(frames, out_channels)`` cut from ``full_out`` ``(max_frames, out_channels)``;
    ``out_columns`` pairs each port with its column of ``outdata`` (views made here, not per cycle).
    """

    render: Callable | None  # the engine's block function; None plays silence
    live: bool  # render(indata, outdata, frames, time, xrun) instead of render(outdata, frames, time, xrun)
    frames: int
    full_out: np.ndarray
    outdata: np.ndarray
    out_columns: tuple
    full_in: np.ndarray
    indata: np.ndarray
    in_columns: tuple
    silent: tuple  # our other output ports: zeros
    native: NativeRender | None = None  # the same render as machine code, when the engine offers it


def build_route(
    render, live: bool, outputs: list, inputs: list, others: list, frames: int, max_frames: int, native=None
) -> Route:
    full_out = np.zeros((max_frames, len(outputs)), np.float32)
    full_in = np.zeros((max_frames, len(inputs)), np.float32)
    outdata, indata = full_out[:frames], full_in[:frames]
    return Route(
        render,
        live,
        frames,
        full_out,
        outdata,
        tuple((p, outdata[:, c]) for c, p in enumerate(outputs)),
        full_in,
        indata,
        tuple((p, indata[:, c]) for c, p in enumerate(inputs)),
        tuple(others),
        native,
    )


class JackStream:
    """One engine's hold on the session's client, shaped like sounddevice's stream for the engine."""

    def __init__(self, output: JackOutput, route: Route):
        self.output, self.route = output, route

    @property
    def latency(self) -> float:
        """Seconds from the master port's buffer to the speaker (sounddevice's ``latency``);
        JACK settles it once connections are made, so it is read each time."""
        ports, output = self.route.out_columns, self.output
        if not ports or output.lost or output.closed:  # its ports are gone, or going
            return 0.0
        return output.playback_latency_frames(ports[0][0]) / output.samplerate

    @property
    def active(self) -> bool:
        return not self.output.lost and self.output.route is self.route

    def stop(self) -> None:
        self.output.detach(self)

    def close(self) -> None:
        """The client and its ports stay for the next engine; ``close_session_output`` ends them."""


class JackOutput:
    """The process's JACK client: ports made on first need, never dropped while the session lasts."""

    def __init__(self, client, server: str):
        import jack

        self.client, self.server, self._jack = client, server, jack
        self.samplerate, self.lost, self.lost_reason, self.closed = client.samplerate, False, "", False
        self._outputs: dict[str, object] = {}
        self._inputs: dict[str, object] = {}
        self._xruns = 0  # written by the xrun callback only
        self._xruns_seen = 0  # written by the process callback only
        self._cycles = 0
        self._on_finished: Callable[[], None] | None = None
        self.route = build_route(None, False, [], [], [], 1, 1)
        self._retired: Route | None = None  # the audio thread never drops a route's last reference
        self._native = NativeSlots()
        self.native: bool | None = None  # which process callback JACK calls; chosen at activation
        client.set_xrun_callback(self._on_xrun)
        client.set_shutdown_callback(self._on_shutdown)
        self.active = False  # activated at the first attach: until then no Python runs in JACK's thread

    @classmethod
    def open(cls, server: str | None = None) -> JackOutput | None:
        """The client on ``server``; None when JACK-Client/libjack is missing or no server runs."""
        try:
            import jack
        except (ImportError, OSError):
            return None
        jack.set_error_function(_ignore)  # libjack's own lines; our errors say it in one line
        try:
            with quiet_stderr():
                client = jack.Client(CLIENT_NAME, no_start_server=True)
        except jack.JackError:
            return None
        return cls(client, server or current_server())

    @property
    def name(self) -> str:
        return self.client.name

    @property
    def blocksize(self) -> int:
        return self.client.blocksize

    # -- the realtime thread --------------------------------------------------------------------------

    def _process(self, frames: int) -> None:
        route = self.route
        xruns = self._xruns
        xrun = xruns != self._xruns_seen
        self._xruns_seen = xruns
        if route.render is not None and frames == route.frames:
            if route.live:
                for port, column in route.in_columns:
                    column[:] = port_array(port)
                route.render(route.indata, route.outdata, frames, None, xrun)
            else:
                route.render(route.outdata, frames, None, xrun)
            for port, column in route.out_columns:
                port_array(port)[:] = column
        elif route.render is not None:
            self._process_resized(route, frames, xrun)
        for port in route.silent:
            port_array(port).fill(0.0)
        self._cycles += 1

    def _process_resized(self, route: Route, frames: int, xrun: bool) -> None:
        """The server changed its period after the route was built: cut views this once."""
        if frames > route.full_out.shape[0]:
            for port, _ in route.out_columns:
                port_array(port).fill(0.0)
            return
        outdata, indata = route.full_out[:frames], route.full_in[:frames]
        if route.live:
            for c, (port, _) in enumerate(route.in_columns):
                indata[:, c] = port_array(port)
            route.render(indata, outdata, frames, None, xrun)
        else:
            route.render(outdata, frames, None, xrun)
        for c, (port, _) in enumerate(route.out_columns):
            port_array(port)[:] = outdata[:, c]

    def _on_xrun(self, delayed_usecs: float) -> None:
        self._xruns += 1
        self._native.count_xrun()

    @property
    def cycles(self) -> int:
        """Process cycles run so far (by whichever callback JACK calls)."""
        return self._native.cycles if self.native else self._cycles

    def _on_shutdown(self, status, reason: str) -> None:
        self.lost, self.lost_reason = True, reason
        if self._on_finished is not None:
            self._on_finished()

    # -- the control side ---------------------------------------------------------------------------------

    def attach(
        self,
        render: Callable,
        *,
        sources: tuple[str, ...],
        channels: int,
        stem_outputs: bool,
        live: bool,
        max_frames: int,
        on_finished: Callable[[], None],
        groups: tuple[str, ...] | None = None,
        native: NativeRender | None = None,
    ) -> JackStream:
        """Play ``render``'s blocks on the ports for ``sources`` (or named by ``groups``, see
        :func:`output_port_names`), made now if new; returns the hold."""
        if self.lost:
            raise DeviceError(f"the JACK server went away ({self.lost_reason}); start it again")
        if self.blocksize > max_frames:
            raise DeviceError(
                f"the JACK period ({self.blocksize} frames) is over stemdeck's {max_frames}; "
                "set a smaller period (jackd -p)"
            )
        outputs = [
            self._port(self._outputs, name, output=True)
            for name in output_port_names(sources, channels, stem_outputs, groups)
        ]
        inputs = [self._port(self._inputs, name, output=False) for name in input_port_names(channels)] if live else []
        others = [port for port in self._outputs.values() if port not in outputs]
        route = build_route(render, live, outputs, inputs, others, self.blocksize, max_frames, native)
        self._on_finished = on_finished
        self._play(route)
        return JackStream(self, route)

    def _play(self, route: Route) -> None:
        """Make ``route`` the one every cycle plays: natively where it can, else through Python."""
        native = self._native_route(route)
        if route.render is None and self.native is False:
            native = None  # silence plays in whichever kind is registered: no switch for it
        if self.native is None or self.native != (native is not None):
            self._activate(native is not None, route, native)
        elif native is not None:
            self._retired, self.route = self.route, route
            self._native.publish(*native)
            self._wait_settled()
        else:
            self._swap(route)

    def _native_route(self, route: Route):
        """The route's slot words (compiled on first need), or None to play it through Python."""
        if not native_wanted() or (route.render is not None and route.native is None):
            return None
        try:
            return build_native_route(
                route.native,
                [p for p, _ in route.out_columns],
                [p for p, _ in route.in_columns],
                list(route.silent),
                route.full_out.shape[0],
                self._jack._ffi,
            )
        except NativeUnavailable:
            return None

    def _activate(self, native: bool, route: Route, native_route) -> None:
        """Register the kind of process callback ``route`` needs and (re)activate. A switch between
        kinds deactivates the client, which drops its connections: the hardware ones are made again."""
        if self.active:
            self.client.deactivate()
            self.active = False
        self.route = route
        if native:
            from stemdeck.engine.audio.native import process_callback

            self._native.publish(*native_route)
            ffi, lib = self._jack._ffi, self._jack._lib
            callback = ffi.cast("JackProcessCallback", process_callback().address)
            if lib.jack_set_process_callback(
                self.client._ptr, callback, ffi.cast("void *", self._native.header.ctypes.data)
            ):
                raise DeviceError("JACK refused stemdeck's process callback; start stemdeck again")
        else:
            self.client.set_process_callback(self._process)
        self.native = native
        self.client.activate()
        self.active = True
        self._connect_hardware([*(p for p, _ in route.out_columns), *(p for p, _ in route.in_columns)])

    def _wait_settled(self) -> None:
        self._native.wait_settled(DETACH_TIMEOUT_S, lambda: self.lost)

    def renew(self, stream: JackStream, native: NativeRender) -> JackStream:
        """``stream``'s ports played from new arrays (a track loaded while the output is open)."""
        if self.route is not stream.route:
            return stream
        route = replace(stream.route, native=native)
        self._play(route)
        return JackStream(self, route)

    def detach(self, stream: JackStream) -> None:
        """Silence ``stream``'s ports; returns once no cycle can still be running its engine."""
        if self.route is not stream.route:
            return
        self._on_finished = None
        self._play(build_route(None, False, [], [], list(self._outputs.values()), self.blocksize, 1))

    def _swap(self, route: Route) -> None:
        self._retired, self.route = self.route, route
        cycles, deadline = self._cycles, time.monotonic() + DETACH_TIMEOUT_S
        while self._cycles == cycles and not self.lost and time.monotonic() < deadline:
            time.sleep(0.001)

    def _port(self, ports: dict, name: str, output: bool):
        """Our port ``name``, registered (and wired to the hardware like PortAudio did) on first use."""
        if name in ports:
            return ports[name]
        register = self.client.outports.register if output else self.client.inports.register
        ports[name] = port = register(name)
        if self.active:
            self._connect_hardware([port])
        return port

    def _connect_hardware(self, ports: list) -> None:
        """The mix to the speakers and the inputs from the sound card, as PortAudio wired them; once
        per port's life, so a connection the user removed stays removed. Stems are the user's to patch."""
        for port in ports:
            output = port.is_output
            if not output or port.shortname.startswith(f"{MASTER}_"):
                self._connect_physical(port, output)

    def _connect_physical(self, port, output: bool) -> None:
        physical = self.client.get_ports(is_physical=True, is_audio=True, is_input=output, is_output=not output)
        suffix = port.shortname.rsplit("_", 1)[1]
        index = {"L": 0, "R": 1}.get(suffix, int(suffix) - 1 if suffix.isdigit() else 0)
        if index < len(physical):
            source, destination = (port, physical[index]) if output else (physical[index], port)
            try:
                self.client.connect(source, destination)
            except self._jack.JackError:
                pass  # the user's patchbay may already hold it

    def playback_latency_frames(self, port) -> int:
        """Frames from ``port``'s buffer to the speaker, as JACK reports it (0 when it cannot say)."""
        try:
            library = _libjack()
            latency = _LatencyRange()
            pointer = int(self._jack._ffi.cast("uintptr_t", port._ptr))
            library.jack_port_get_latency_range(pointer, _JACK_PLAYBACK_LATENCY, ctypes.byref(latency))
            return int(latency.max)
        except (AttributeError, OSError):
            return 0

    def close(self) -> None:
        self._on_finished, self.closed = None, True
        try:
            self.client.deactivate()
            self.client.close()
        except self._jack.JackError:
            pass


# -- the process's one client ----------------------------------------------------------------------------

_session: JackOutput | None = None


def session_output() -> JackOutput | None:
    """The session's client on the current server, opened on first need; None without a server."""
    global _session
    if _session is not None and (_session.lost or _session.server != current_server()):
        close_session_output()
    if _session is None:
        _session = JackOutput.open(current_server())
    return _session


def close_session_output() -> None:
    """End the client and its ports (at exit, or before a test stops its server)."""
    global _session
    output, _session = _session, None
    if output is not None:
        output.close()


atexit.register(close_session_output)


def serves(input_device: int | None, output_device: int | None) -> JackOutput | None:
    """The JACK client when JACK should carry this session's audio, else None (sounddevice does).

    JACK carries it when a JACK server is running and every device asked for is left to the
    default or is a device of PortAudio's JACK host API; a device of another host API (ALSA,
    PulseAudio, CoreAudio, ...) goes through sounddevice as before.
    """
    from stemdeck.engine.device import is_jack_device

    if any(device is not None and not is_jack_device(device) for device in (input_device, output_device)):
        return None
    return session_output()


class _LatencyRange(ctypes.Structure):
    _fields_ = [("min", ctypes.c_uint32), ("max", ctypes.c_uint32)]


_JACK_PLAYBACK_LATENCY = 1  # JackPlaybackLatency in jack/types.h; JACK-Client does not wrap latency ranges
_library: ctypes.CDLL | None = None


def _libjack() -> ctypes.CDLL:
    global _library
    if _library is None:
        import ctypes.util

        library = ctypes.CDLL(ctypes.util.find_library("jack") or "libjack.so.0")
        library.jack_port_get_latency_range.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_LatencyRange)]
        library.jack_port_get_latency_range.restype = None
        _library = library
    return _library


def _ignore(message: str) -> None:
    pass
