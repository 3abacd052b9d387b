"""The callbacks libjack and PortAudio call each cycle: see :mod:`engine.audio.native`.

A module of its own so that importing the engine does not load them: only an output does.
"""

import numpy as np
from numba import carray, cfunc, types

from stemdeck.engine.audio.native_words import (
    ACTIVE,
    ARGS,
    CYCLES,
    HEADER_WORDS,
    IN_BUFFER,
    MAX_FRAMES,
    N_IN,
    N_OUT,
    N_SILENT,
    OUT_BUFFER,
    PORT_BUFFER,
    RENDER,
    SEEN,
    SLOT0,
    SLOT_HEADER_WORDS,
    SLOT_WORDS,
    XRUNS,
    XRUNS_SEEN,
    _as_float32_pointer,
    _as_int64_pointer,
    _call_render,
    _port_buffer,
)


@cfunc(types.int32(types.uint32, types.CPointer(types.int64)), nogil=True, cache=True)
def process(nframes, header_at):
    header = carray(header_at, (HEADER_WORDS,))
    get_buffer = header[PORT_BUFFER]
    active = header[ACTIVE]
    slot = carray(_as_int64_pointer(header[SLOT0 + active]), (SLOT_WORDS,))
    frames = np.int64(nframes)
    xruns = header[XRUNS]
    xrun = 1 if xruns != header[XRUNS_SEEN] else 0
    header[XRUNS_SEEN] = xruns
    n_out, n_in, n_silent = slot[N_OUT], slot[N_IN], slot[N_SILENT]
    fits = frames <= slot[MAX_FRAMES]
    if slot[RENDER] != 0 and fits:
        if n_in > 0:
            indata = carray(_as_float32_pointer(slot[IN_BUFFER]), (frames, n_in))
            for c in range(n_in):
                port = carray(_port_buffer(get_buffer, slot[SLOT_HEADER_WORDS + n_out + c], frames), (frames,))
                for i in range(frames):
                    indata[i, c] = port[i]
        _call_render(slot[RENDER], frames, slot[ARGS], slot[OUT_BUFFER], n_out, slot[IN_BUFFER], n_in, xrun)
        outdata = carray(_as_float32_pointer(slot[OUT_BUFFER]), (frames, n_out))
        for c in range(n_out):
            port = carray(_port_buffer(get_buffer, slot[SLOT_HEADER_WORDS + c], frames), (frames,))
            for i in range(frames):
                port[i] = outdata[i, c]
    else:
        for c in range(n_out):
            port = carray(_port_buffer(get_buffer, slot[SLOT_HEADER_WORDS + c], frames), (frames,))
            port[:] = 0.0
    for s in range(n_silent):
        port = carray(_port_buffer(get_buffer, slot[SLOT_HEADER_WORDS + n_out + n_in + s], frames), (frames,))
        port[:] = 0.0
    header[SEEN] = active
    header[CYCLES] += 1
    return 0


# PaStreamCallbackFlags a device sets when a buffer was late (portaudio.h)
PA_XRUN_FLAGS = 0x1 | 0x2 | 0x4 | 0x8  # input underflow, input overflow, output underflow, output overflow


# PaStreamCallback(input, output, frames, time info, status flags, user data)
PORTAUDIO_SIGNATURE = types.int32(
    types.int64, types.int64, types.uint64, types.int64, types.uint64, types.CPointer(types.int64)
)


@cfunc(PORTAUDIO_SIGNATURE, nogil=True, cache=True)
def portaudio_process(input_at, output_at, frame_count, time_info, status_flags, header_at):
    """PortAudio's ``PaStreamCallback`` (pointers as 64-bit words: LP64 platforms only). The
    render writes straight into PortAudio's interleaved float32 buffer, whose layout is the
    ``(frames, channels)`` block the kernels fill."""
    header = carray(header_at, (HEADER_WORDS,))
    active = header[ACTIVE]
    slot = carray(_as_int64_pointer(header[SLOT0 + active]), (SLOT_WORDS,))
    frames = np.int64(frame_count)
    xrun = 1 if (status_flags & PA_XRUN_FLAGS) != 0 else 0
    header[XRUNS] += xrun
    n_out, n_in = slot[N_OUT], slot[N_IN]
    if slot[RENDER] != 0 and frames <= slot[MAX_FRAMES]:
        _call_render(slot[RENDER], frames, slot[ARGS], output_at, n_out, input_at, n_in, xrun)
    else:
        outdata = carray(_as_float32_pointer(output_at), (frames * n_out,))
        outdata[:] = 0.0
    header[SEEN] = active
    header[CYCLES] += 1
    return 0
