"""Where the deck reads its source: the playhead's advance through the track, wrapping at a loop.

Numba functions of the source position alone (no state of their own), so the audio callback
and anyone else reading the track ahead of the playhead (a time-stretcher in the worker, say)
read exactly the same frames. A loop ``[loop_in, loop_out)`` is active when
``0 <= loop_in < loop_out <= length``; anything else means "no loop".

The seam: the loop's last ``crossfade`` frames fade linearly from the frames they are towards
the frames just before ``loop_in``, so when the playhead wraps to ``loop_in`` the sound goes on
from where it was heading, without a step. The loop's period stays exactly
``loop_out - loop_in`` frames and every frame of ``[loop_in, loop_out - crossfade)`` plays as it
is. Linear (equal-gain) rather than equal-power: the two sides of a few-millisecond seam are
nearly the same sound, and for correlated signals a linear fade keeps the level flat.
"""

from __future__ import annotations

from numba import njit


@njit(nogil=True, cache=True)
def loop_active(loop_in, loop_out, length):
    """Whether ``[loop_in, loop_out)`` is a loop inside a track of ``length`` frames."""
    return 0 <= loop_in < loop_out <= length


@njit(nogil=True, cache=True)
def seam_frames(loop_in, loop_out, crossfade):
    """The crossfade actually used: at most half the loop, and no more than the frames before
    ``loop_in`` (a loop from the very start has no seam to blend towards)."""
    return max(0, min(crossfade, loop_in, (loop_out - loop_in) // 2))


@njit(nogil=True, cache=True)
def advance(position, frames, loop_in, loop_out, length):
    """The source position ``frames`` after ``position``: wrapped into the loop once it reaches
    ``loop_out`` (a position at or past ``loop_out`` jumps to ``loop_in``), else stopped at the
    track's end."""
    if loop_active(loop_in, loop_out, length):
        if position >= loop_out:
            position = loop_in
        position += frames
        if position >= loop_out:
            position = loop_in + (position - loop_in) % (loop_out - loop_in)
        return position
    return min(position + frames, length)


@njit(nogil=True, cache=True)
def readable_frames(position, frames, loop_in, loop_out, length):
    """How many of ``frames`` have source audio: all of them in a loop, else up to the end."""
    if loop_active(loop_in, loop_out, length):
        return frames
    return max(0, min(frames, length - position))


@njit(nogil=True, cache=True)
def read_span(position, frames, loop_in, loop_out, crossfade, length):
    """The lowest and one past the highest source frame that reading ``frames`` from
    ``position`` touches (the seam's blend included), to check the stems cover them."""
    if not loop_active(loop_in, loop_out, length):
        return position, min(position + frames, length)
    if position >= loop_out:
        position = loop_in
    seam = seam_frames(loop_in, loop_out, crossfade)
    if position + frames <= loop_out - seam:
        return position, position + frames
    return min(position, loop_in - seam), loop_out


@njit(nogil=True, cache=True)
def _run_end(position, looping, loop_out, seam_start, length):
    """Where the plain copy from ``position`` stops: the seam, the loop's out point or the end."""
    if looping and position < seam_start:
        return seam_start
    if looping and position < loop_out:
        return loop_out
    return length


@njit(nogil=True, cache=True)
def _blend_seam(dest, at, source, position, channels, span, seam, seam_start):
    weight = (position - seam_start + 1) / (seam + 1)
    for c in range(channels):
        here = source[c, position]
        dest[c, at] = here + weight * (source[c, position - span] - here)


@njit(nogil=True, cache=True)
def read_source(dest, dest_start, source, position, frames, loop_in, loop_out, crossfade):
    """Copy ``frames`` frames of ``source`` ``(C, length)`` from ``position`` into
    ``dest[:, dest_start:]``, loop-aware with the seam's crossfade; frames past the track's
    end (no loop) are zeros. Returns the position after them (see :func:`advance`). Plain
    stretches are copied in one loop (not a slice assignment, whose shape check costs seconds of
    compile); only the seam's few milliseconds are blended frame by frame."""
    length = source.shape[-1]
    channels = min(dest.shape[0], source.shape[0])
    looping = loop_active(loop_in, loop_out, length)
    seam = seam_frames(loop_in, loop_out, crossfade) if looping else 0
    span, seam_start = loop_out - loop_in, loop_out - seam
    done = 0
    while done < frames:
        if looping and position >= loop_out:
            position = loop_in
        at = dest_start + done
        if position >= length:
            dest[:channels, at : dest_start + frames] = 0.0
            return position
        if looping and seam > 0 and seam_start <= position < loop_out:
            _blend_seam(dest, at, source, position, channels, span, seam, seam_start)
            position, done = position + 1, done + 1
            continue
        count = min(frames - done, _run_end(position, looping, loop_out, seam_start, length) - position)
        for c in range(channels):
            for i in range(count):
                dest[c, at + i] = source[c, position + i]
        position, done = position + count, done + count
    if looping and position >= loop_out:
        position = loop_in
    return position
