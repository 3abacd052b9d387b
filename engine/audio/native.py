"""The JACK process callback as machine code: it never needs Python's interpreter lock.

A Python process callback has to take the interpreter lock once per cycle, so any Python thread
of the audio process that holds it (the GUI redrawing, a MIDI handler, a status poll) delays
the cycle, and JACK counts an xrun. Measured with ``benchmarks/jack_floor.py``-style clients on a
2-core machine at load 8: a silent Python client beside one busy Python thread, 1121 and 1453
xruns in 20 s; the same client compiled by Numba, 0 and 0.

So on JACK the engine's block kernels (``deck_block``, ``stretched_deck_block``, ``live_block``,
all ``@njit``) run from a Numba ``cfunc`` that libjack calls directly. The process callback
(:func:`process_callback`, compiled once per process) reads a *route* from one of two slots of
``int64`` words: the port pointers, the block buffers' addresses, and the address of a render
function compiled per kernel (:func:`render_function`), which it calls through a pointer. Those
render functions rebuild the kernel's NamedTuple arguments from an ``int64`` table of array
addresses and shapes (:func:`flatten`), so no Python object is touched in JACK's thread.

The control side writes a route into the slot the callback is not reading, then flips
``ACTIVE``; the callback acknowledges with ``SEEN``. The arrays a route points at stay
referenced by the Python side (:class:`NativeRoute`) until the callback has moved past it, so
nothing is unmapped under the callback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import importlib.util
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numba
import numpy as np
import platformdirs

from stemdeck.engine.audio.native_words import (
    _DTYPES,
    ACTIVE,
    ARGS,
    CYCLES,
    HEADER_WORDS,
    IN_BUFFER,
    MAX_FRAMES,
    MAX_PORTS,
    N_IN,
    N_OUT,
    N_SILENT,
    OUT_BUFFER,
    PORT_BUFFER,
    RENDER,
    SEEN,
    SLOT0,
    SLOT1,
    SLOT_HEADER_WORDS,
    SLOT_WORDS,
    XRUNS,
)


class NativeUnavailable(Exception):
    """A render's arguments cannot be handed to machine code (an array that is not contiguous,
    a value that is neither an array nor an integer); the Python callback plays it instead."""


# -- the kernels' arguments as int64 words ------------------------------------------------------------


def structure(value: Any) -> tuple:
    """What :func:`flatten` writes for ``value``, without the numbers: a render function is
    compiled once per structure (per kernel and kind of session), not per session."""
    if isinstance(value, np.ndarray):
        if value.dtype not in _DTYPES:
            raise NativeUnavailable(f"arrays of {value.dtype} are not passed to machine code")
        return ("array", str(value.dtype), value.ndim)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return ("tuple", type(value), tuple(structure(getattr(value, f)) for f in value._fields))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return ("int",)
    raise NativeUnavailable(f"a {type(value).__name__} is not passed to machine code")


def flatten(value: Any, words: list[int] | None = None) -> list[int]:
    """``value``'s arrays as address and shape, its integers as themselves, depth first."""
    words = [] if words is None else words
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise NativeUnavailable("an array that is not contiguous cannot be passed to machine code")
        words += [value.ctypes.data, *value.shape]
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for field in value._fields:
            flatten(getattr(value, field), words)
    else:
        words.append(int(value))
    return words


def _unpack_expression(shape: tuple, position: list[int], imports: set[str]) -> str:
    """Source that rebuilds a value of ``shape`` from ``args`` starting at ``position[0]``."""
    kind = shape[0]
    if kind == "array":
        dtype, ndim = np.dtype(shape[1]), shape[2]
        at = position[0]
        position[0] += 1 + ndim
        dims = ", ".join(f"args[{at + 1 + d}]" for d in range(ndim))
        imports.add(f"from stemdeck.engine.audio.native_words import as_{dtype.name}_pointer")
        return f"carray(as_{dtype.name}_pointer(args[{at}]), ({dims},))"
    if kind == "tuple":
        cls = shape[1]
        imports.add(f"from {cls.__module__} import {cls.__name__}")
        fields = ", ".join(_unpack_expression(field, position, imports) for field in shape[2])
        return f"{cls.__name__}({fields})"
    at = position[0]
    position[0] += 1
    return f"args[{at}]"


_renders: dict[tuple, Any] = {}
_renders_lock = threading.Lock()


def render_function(kernel, arguments: tuple, live: bool):
    """A cfunc that calls ``kernel([indata,] outdata, *arguments, xrun)`` from words; compiled
    once per kernel and structure of ``arguments`` (a few seconds, on the control thread)."""
    key = (kernel, tuple(structure(argument) for argument in arguments), live)
    with _renders_lock:
        if key not in _renders:
            _renders[key] = _compile_render(kernel, key[1], live)
        return _renders[key]


def render_source(kernel, shapes: tuple, live: bool) -> str:
    """A module holding the render function for ``kernel`` and argument ``shapes``."""
    imports = {"from numba import carray, cfunc", f"from {kernel.__module__} import {kernel.__name__} as kernel"}
    imports.add("from stemdeck.engine.audio.native_words import RENDER_SIGNATURE, as_float32_pointer, as_int64_pointer")
    position = [0]
    unpacked = [_unpack_expression(shape, position, imports) for shape in shapes]
    io = "indata, outdata" if live else "outdata"
    lines = [
        f"# generated by stemdeck.engine.audio.native for {kernel.__module__}.{kernel.__name__}",
        f"# kernels' sources: {_kernel_sources_digest()}",
        *sorted(imports),
        "",
        "",
        "@cfunc(RENDER_SIGNATURE, nogil=True, cache=True)",
        "def render(frames, args_at, out_at, n_out, in_at, n_in, xrun):",
        f"    args = carray(as_int64_pointer(args_at), ({max(position[0], 1)},))",
        "    outdata = carray(as_float32_pointer(out_at), (frames, n_out))",
    ]
    if live:
        lines.append("    indata = carray(as_float32_pointer(in_at), (frames, n_in))")
    lines += [f"    kernel({io}, {', '.join(unpacked)}{', ' if unpacked else ''}xrun != 0)", "    return 0", ""]
    return "\n".join(lines)


@functools.cache
def _kernel_sources_digest() -> str:
    """The audio kernels' sources, hashed: Numba's cache checks a cached function's own file
    only, so a changed kernel must change the generated file's name."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(numba.__version__.encode())
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def render_folder() -> Path:
    """Where render modules and their machine code are kept (``STEMDECK_NATIVE_DIR`` if set)."""
    folder = os.environ.get("STEMDECK_NATIVE_DIR")
    return Path(folder) if folder else Path(platformdirs.user_cache_dir("stemdeck")) / "native"


def _compile_render(kernel, shapes: tuple, live: bool):
    """The render cfunc from a generated file, so that Numba caches its machine code on disk:
    compiling it links every kernel it calls (17 s at load 12 on 2 cores; 0.2 s from the cache)."""
    source = render_source(kernel, shapes, live)
    name = f"stemdeck_render_{hashlib.blake2b(source.encode(), digest_size=10).hexdigest()}"
    folder = render_folder()
    path = folder / f"{name}.py"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != source:
            _remove_stale_renders(folder)
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(source)
            os.replace(temporary, path)
    except OSError:  # a read-only cache: compiled in memory, every time
        say_compiling()
        namespace: dict[str, Any] = {}
        exec(compile(source.replace("cache=True", "cache=False"), f"<{name}>", "exec"), namespace)  # noqa: S102
        return namespace["render"]
    if not render_cached(path):
        say_compiling()
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Numba's cache finds the function's globals through it
    spec.loader.exec_module(module)
    return module.render


COMPILING_MESSAGE = "compiling the audio callback once (about 20 s; later sessions load it at once) ..."


def render_cached(path: Path) -> bool:
    """Whether Numba's cache beside the render module at ``path`` holds its machine code; if not,
    importing the module compiles it (17-26 s on a busy 2-core machine)."""
    return any((path.parent / "__pycache__").glob(f"{path.stem}.render-*.nbc"))


def say_compiling() -> None:
    """One line before a first session's long compile, so the silence is not taken for a hang."""
    print(COMPILING_MESSAGE, file=sys.stderr, flush=True)


def _remove_stale_renders(folder: Path) -> None:
    """Render modules made for other kernels' sources (an older stemdeck) and their machine code."""
    current = f"# kernels' sources: {_kernel_sources_digest()}"
    for module in folder.glob("stemdeck_render_*.py"):
        try:
            if current in module.read_text():
                continue
            module.unlink()
            for cached in (folder / "__pycache__").glob(f"{module.stem}.*"):
                cached.unlink()
        except OSError:
            continue  # another process's, or gone already


# -- the process callback -----------------------------------------------------------------------------


def port_buffer_address() -> int:
    """Where libjack's ``jack_port_get_buffer`` is in this process."""
    library = ctypes.CDLL(ctypes.util.find_library("jack") or "libjack.so.0")
    return ctypes.cast(library.jack_port_get_buffer, ctypes.c_void_p).value


def native_wanted() -> bool:
    """Play native renders natively unless ``STEMDECK_PYTHON_CALLBACK`` asks for Python."""
    return os.environ.get("STEMDECK_PYTHON_CALLBACK", "") in ("", "0")


def portaudio_callback():
    """The cfunc PortAudio calls each buffer (``PaStreamCallback``), or None where its pointer
    arguments are not 64-bit words (``unsigned long`` is 32 bits on Windows)."""
    if ctypes.sizeof(ctypes.c_ulong) != 8 or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    from stemdeck.engine.audio.native_process import portaudio_process

    return portaudio_process


def process_callback():
    """The cfunc libjack calls each cycle (``JackProcessCallback``, in :mod:`.native_process`,
    imported on first use: its machine code is loaded from Numba's cache, or compiled once)."""
    from stemdeck.engine.audio.native_process import process

    return process


# -- routes ---------------------------------------------------------------------------------------------


class NativeRender(NamedTuple):
    """What the engine hands JACK instead of a Python callback: an ``@njit`` block kernel and its
    arguments after the device buffers (``kernel([indata,] outdata, *arguments, xrun)``)."""

    kernel: Any
    arguments: tuple
    live: bool = False


@dataclass(eq=False)
class NativeRoute:
    """One slot's contents and everything its words point at, kept alive while it may be played."""

    render: Any  # the cfunc, or None for silence
    args: np.ndarray
    full_out: np.ndarray
    full_in: np.ndarray
    keep: tuple  # the render's arguments (their arrays) and the ports


def port_address(port, ffi) -> int:
    return int(ffi.cast("uintptr_t", port._ptr))


def build_native_route(
    native: NativeRender | None, outputs: list, inputs: list, silent: list, max_frames: int, ffi
) -> tuple[NativeRoute, list[int]]:
    """The route and its slot's words; compiles the render function when new (may raise
    :class:`NativeUnavailable`)."""
    if len(outputs) + len(inputs) + len(silent) > MAX_PORTS:
        raise NativeUnavailable(f"more than {MAX_PORTS} ports")
    render = None if native is None else render_function(native.kernel, native.arguments, native.live)
    words_of_arguments = [0]
    if native is not None:
        words_of_arguments = []
        for argument in native.arguments:
            flatten(argument, words_of_arguments)
    args = np.array(words_of_arguments or [0], np.int64)
    full_out = np.zeros((max_frames, max(len(outputs), 1)), np.float32)
    full_in = np.zeros((max_frames, max(len(inputs), 1)), np.float32)
    words = [0] * SLOT_WORDS
    words[RENDER] = 0 if render is None else int(render.address)
    words[ARGS], words[OUT_BUFFER], words[IN_BUFFER] = args.ctypes.data, full_out.ctypes.data, full_in.ctypes.data
    words[MAX_FRAMES], words[N_OUT], words[N_IN], words[N_SILENT] = max_frames, len(outputs), len(inputs), len(silent)
    for p, port in enumerate([*outputs, *inputs, *silent]):
        words[SLOT_HEADER_WORDS + p] = port_address(port, ffi)
    keep = (native, tuple(outputs), tuple(inputs), tuple(silent))
    return NativeRoute(render, args, full_out, full_in, keep), words


def build_device_route(
    native: NativeRender, output_channels: int, input_channels: int, max_frames: int
) -> tuple[NativeRoute, list[int]]:
    """A PortAudio stream's route: the render writes into the device's own interleaved buffer,
    so the slot holds no ports and no buffers, only the counts."""
    render = render_function(native.kernel, native.arguments, native.live)
    words_of_arguments: list[int] = []
    for argument in native.arguments:
        flatten(argument, words_of_arguments)
    args = np.array(words_of_arguments or [0], np.int64)
    words = [0] * SLOT_WORDS
    words[RENDER], words[ARGS], words[MAX_FRAMES] = int(render.address), args.ctypes.data, max_frames
    words[N_OUT], words[N_IN] = output_channels, input_channels
    empty = np.zeros((0, 0), np.float32)
    return NativeRoute(render, args, empty, empty, (native,)), words


class NativeSlots:
    """The header and the two slots the process callback reads; the control side's half."""

    def __init__(self, port_buffer: bool = True):
        self.header = np.zeros(HEADER_WORDS, np.int64)
        self.slots = np.zeros((2, SLOT_WORDS), np.int64)
        self.header[SLOT0], self.header[SLOT1] = self.slots[0].ctypes.data, self.slots[1].ctypes.data
        if port_buffer:  # JACK's; a PortAudio stream has no ports
            self.header[PORT_BUFFER] = port_buffer_address()
        self.routes: list[NativeRoute | None] = [None, None]

    def publish(self, route: NativeRoute, words: list[int]) -> None:
        """Write ``route`` into the slot not being played and make it the one to play. The slot
        written was acknowledged as left by the callback before (see :meth:`settled`)."""
        spare = 1 - int(self.header[ACTIVE])
        self.slots[spare, :] = words
        self.routes[spare] = route
        self.header[ACTIVE] = spare

    def wait_settled(self, timeout_s: float, lost=lambda: False) -> None:
        """Until the callback has played the active slot (or ``timeout_s``: a stalled device)."""
        deadline = time.monotonic() + timeout_s
        while not self.settled() and not lost() and time.monotonic() < deadline:
            time.sleep(0.001)

    def settled(self) -> bool:
        """The callback has played the active slot at least once since it was published."""
        return int(self.header[SEEN]) == int(self.header[ACTIVE])

    @property
    def cycles(self) -> int:
        return int(self.header[CYCLES])

    def count_xrun(self) -> None:
        self.header[XRUNS] += 1
