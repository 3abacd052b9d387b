"""The words the compiled audio callbacks read (see :mod:`engine.audio.native`): the header and
slot layout, and the Numba intrinsics that turn a word into a pointer or a call.

Imported by the control side (:mod:`.native`), the callbacks (:mod:`.native_process`) and the
render modules :mod:`.native` generates, so none of them imports another.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

# header[...] words: ACTIVE (control-written: the slot to play), SEEN (callback-written: the slot
# it played last), CYCLES (callback-written), XRUNS (the xrun callback's count), XRUNS_SEEN
# (callback-written), SLOT0 / SLOT1 (the two slots' addresses, fixed), PORT_BUFFER (the address
# of libjack's jack_port_get_buffer: a word, not a constant, so the callback's code can be cached)
ACTIVE, SEEN, CYCLES, XRUNS, XRUNS_SEEN, SLOT0, SLOT1, PORT_BUFFER = range(8)
HEADER_WORDS = 8
# slot[...] words, then the port pointers: outputs, inputs, silent outputs
RENDER, ARGS, OUT_BUFFER, IN_BUFFER, MAX_FRAMES, N_OUT, N_IN, N_SILENT = range(8)
SLOT_HEADER_WORDS = 8
MAX_PORTS = 256
SLOT_WORDS = SLOT_HEADER_WORDS + MAX_PORTS

_DTYPES = {
    np.dtype(np.float32): types.float32,
    np.dtype(np.float64): types.float64,
    np.dtype(np.int64): types.int64,
    np.dtype(np.int32): types.int32,
    np.dtype(np.uint8): types.uint8,
    np.dtype(np.uint32): types.uint32,
}


def _pointer_intrinsic(item_type):
    pointer_type = types.CPointer(item_type)

    @intrinsic
    def as_pointer(typingctx, address):
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer_type))

        return pointer_type(types.int64), codegen

    return as_pointer


# as_<dtype>_pointer(address): the generated render modules import these by name
as_float32_pointer = _pointer_intrinsic(types.float32)
as_float64_pointer = _pointer_intrinsic(types.float64)
as_int64_pointer = _pointer_intrinsic(types.int64)
as_int32_pointer = _pointer_intrinsic(types.int32)
as_uint8_pointer = _pointer_intrinsic(types.uint8)
as_uint32_pointer = _pointer_intrinsic(types.uint32)
_as_int64_pointer, _as_float32_pointer = as_int64_pointer, as_float32_pointer

# render(frames, args, out_buffer, n_out, in_buffer, n_in, xrun) -> 0; every word an int64
RENDER_SIGNATURE = types.int32(*(types.int64,) * 7)


@intrinsic
def _call_render(typingctx, function, frames, args, out_buffer, n_out, in_buffer, n_in, xrun):
    """Call the render function at address ``function`` (one of :func:`render_function`'s)."""

    def codegen(context, builder, signature, llargs):
        word = ir.IntType(64)
        function_type = ir.FunctionType(ir.IntType(32), [word] * 7)
        pointer = builder.inttoptr(llargs[0], function_type.as_pointer())
        return builder.call(pointer, llargs[1:])

    return types.int32(*(types.int64,) * 8), codegen


@intrinsic
def _port_buffer(typingctx, function, port, frames):
    """``jack_port_get_buffer(port, frames)`` through its address, as a float32 pointer."""
    result_type = types.CPointer(types.float32)

    def codegen(context, builder, signature, llargs):
        word = ir.IntType(64)
        function_type = ir.FunctionType(context.get_value_type(result_type), [word, ir.IntType(32)])
        pointer = builder.inttoptr(llargs[0], function_type.as_pointer())
        return builder.call(pointer, [llargs[1], builder.trunc(llargs[2], ir.IntType(32))])

    return result_type(types.int64, types.int64, types.int64), codegen
