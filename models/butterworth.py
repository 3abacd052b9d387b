"""Butterworth filters in numpy alone, for the band share of a song above the model's rate.

scipy.signal designs and runs these too, but importing it adds 64 MB to a separation's peak
(measured with torch and OpenVINO loaded: 42 MB of it heap), for two small filters that only a
song above the model's rate needs (:mod:`models.bandwidth`). So, as :mod:`models.demo` does for
its resonators: the filter is designed as ``scipy.signal.butter`` designs it (the analog
prototype's poles, pre-warped, through the bilinear transform) and run as the convolution with
its impulse response, cut where that has decayed below :data:`TAIL`. The outputs equal scipy's
``sosfilt`` and ``sosfiltfilt`` within 1e-9 of the signal (``tests/test_models_butterworth.py``
compares them). The moving average here equals ``scipy.ndimage.uniform_filter1d``, whose
import would cost 16 MB more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

TAIL = 1e-13  # of the impulse response's start: where it is cut
MIN_FFT_SIZE = 1 << 14  # the convolution's transforms: at least this, and 8 responses long
AVERAGE_BLOCK_FRAMES = 1 << 13  # running sums restart this often: rounding stays local


@dataclass(frozen=True, eq=False)
class Butterworth:
    """A digital filter as zeros, poles and gain, with its impulse response."""

    zeros: np.ndarray
    poles: np.ndarray
    gain: float

    @property
    def padlen(self) -> int:
        """``scipy.signal.sosfiltfilt``'s default padding for this filter's second-order
        sections (each with two zeros and two poles, as an even-order Butterworth's are)."""
        return 3 * (2 * math.ceil(len(self.poles) / 2) + 1)

    @cached_property
    def response(self) -> np.ndarray:
        """The impulse response, to where it has decayed below :data:`TAIL` (the slowest pole's
        decay, with room for the rise before it)."""
        radius = float(np.abs(self.poles).max())
        taps = int(math.ceil(1.5 * math.log(TAIL) / math.log(radius))) + 8 * len(self.poles)
        size = 1 << (4 * taps - 1).bit_length()  # the rest beyond ``size`` folds back far below TAIL
        unit = np.exp(2j * np.pi * np.arange(size // 2 + 1) / size)
        spectrum = self.gain * np.prod(unit[:, None] - self.zeros, axis=1) / np.prod(unit[:, None] - self.poles, axis=1)
        return np.fft.irfft(spectrum, size)[:taps]


@lru_cache(maxsize=16)
def butterworth(order: int, cutoff_hz: float | tuple[float, float], samplerate: float) -> Butterworth:
    """A low-pass (one cut-off) or band-pass (two) Butterworth filter of ``order``, as
    ``scipy.signal.butter(order, cutoff_hz, fs=samplerate, output="zpk")`` designs it. Kept, with
    its impulse response, for the next window of a live stream."""
    prototype = -np.exp(1j * np.pi * np.arange(-order + 1, order, 2) / (2 * order))
    twice_rate = 2.0 * samplerate
    warped = twice_rate * np.tan(np.pi * np.atleast_1d(np.asarray(cutoff_hz, float)) / samplerate)
    if warped.size == 1:
        poles, zeros, gain = prototype * warped[0], np.zeros(0), warped[0] ** order
    else:
        bandwidth, centre = warped[1] - warped[0], math.sqrt(warped[0] * warped[1])
        half = prototype * bandwidth / 2
        root = np.sqrt(half**2 - centre**2)
        poles, zeros, gain = np.concatenate([half + root, half - root]), np.zeros(order), bandwidth**order
    missing_zeros = len(poles) - len(zeros)  # they go to the Nyquist frequency
    digital_zeros = np.concatenate([(twice_rate + zeros) / (twice_rate - zeros), -np.ones(missing_zeros)])
    digital_poles = (twice_rate + poles) / (twice_rate - poles)
    digital_gain = gain * np.real(np.prod(twice_rate - zeros) / np.prod(twice_rate - poles))
    return Butterworth(digital_zeros, digital_poles, float(digital_gain))


def convolve(signal: np.ndarray, response: np.ndarray) -> np.ndarray:
    """The full linear convolution along the last axis (``n + taps - 1`` long), in float64,
    a block at a time (overlap-add): small temporaries however long the signal."""
    frames, taps = signal.shape[-1], response.size
    out = np.zeros((*signal.shape[:-1], frames + taps - 1))
    whole = 1 << (frames + taps - 2).bit_length()  # one transform for a short signal (a live window)
    size = min(whole, max(MIN_FFT_SIZE, 1 << (8 * taps - 1).bit_length()))
    step = size - taps + 1
    kernel = np.fft.rfft(response, size)
    for start in range(0, frames, step):
        block = np.asarray(signal[..., start : start + step], np.float64)  # numpy's FFT keeps float32
        length = block.shape[-1] + taps - 1
        out[..., start : start + length] += np.fft.irfft(np.fft.rfft(block, size) * kernel, size)[..., :length]
    return out


class CausalFilter:
    """A filter run forwards over consecutive blocks from rest: ``scipy.signal.sosfilt`` with
    its state carried from block to block, starting at zero."""

    def __init__(self, design: Butterworth):
        self.response = design.response
        self._tail: np.ndarray | None = None  # what the blocks so far still add to the next ones

    def __call__(self, block: np.ndarray) -> np.ndarray:
        out = convolve(block, self.response)
        if self._tail is not None:
            out[..., : self._tail.shape[-1]] += self._tail
        frames = block.shape[-1]
        self._tail = out[..., frames:].copy()
        return out[..., :frames]


def zero_phase(signal: np.ndarray, design: Butterworth) -> np.ndarray:
    """``scipy.signal.sosfiltfilt`` with its defaults: forwards and backwards over the signal
    oddly extended by ``padlen`` at each end, each pass starting as if its first sample had
    always been there (``sosfilt_zi``'s steady state)."""
    response, pad = design.response, design.padlen
    signal = np.asarray(signal, np.float64)
    if signal.shape[-1] <= pad:
        raise ValueError(f"zero_phase needs more than {pad} frames, got {signal.shape[-1]}")
    first, last = signal[..., :1], signal[..., -1:]
    extended = np.concatenate(
        [2 * first - signal[..., pad:0:-1], signal, 2 * last - signal[..., -2 : -pad - 2 : -1]], axis=-1
    )
    forwards = _from_steady_state(extended, response)
    backwards = _from_steady_state(forwards[..., ::-1], response)[..., ::-1]
    return backwards[..., pad:-pad]


def _from_steady_state(signal: np.ndarray, response: np.ndarray) -> np.ndarray:
    """The filter's output where the first sample's value had been its input forever: what that
    past still adds, sample by sample, is the first sample times the response's remaining sum."""
    frames = signal.shape[-1]
    out = convolve(signal, response)[..., :frames]
    owed = response.sum() - np.cumsum(response)
    count = min(frames, owed.size)
    out[..., :count] += signal[..., :1] * owed[:count]
    return out


def moving_average(signal: np.ndarray, size: int) -> np.ndarray:
    """``scipy.ndimage.uniform_filter1d(signal, size, axis=-1)``: the mean of ``size`` frames
    from ``size // 2`` before each, the ends mirrored (``reflect``), in float64. The running sums
    restart every :data:`AVERAGE_BLOCK_FRAMES`, so a quiet passage after a loud one keeps its
    own small values rather than a difference of large sums."""
    before = size // 2
    widths = [(0, 0)] * (signal.ndim - 1) + [(before, size - 1 - before)]
    padded = np.pad(np.asarray(signal, np.float64), widths, mode="symmetric")
    frames = signal.shape[-1]
    out = np.empty(padded.shape[:-1] + (frames,))
    for start in range(0, frames, AVERAGE_BLOCK_FRAMES):
        stop = min(frames, start + AVERAGE_BLOCK_FRAMES)
        sums = np.cumsum(padded[..., start : stop + size - 1], axis=-1)
        sums = np.concatenate([np.zeros(sums.shape[:-1] + (1,)), sums], axis=-1)
        out[..., start:stop] = (sums[..., size:] - sums[..., : stop - start]) / size
    return out
