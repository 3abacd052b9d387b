"""The process callback libjack calls each cycle: see :mod:`engine.audio.native`.

A module of its own so that importing the engine does not load it: only a JACK session does.
"""

import numpy as np
from numba import carray, cfunc, types

from stemdeck.engine.audio.native import (
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
