"""STFT and iSTFT with the framing the hybrid models rely on.

The spectral branch must have exactly ``ceil(length / hop)`` frames so that, after the same
number of stride-4 layers, it lines up with the time branch. ``torch.stft`` cannot pad by a
quarter of the window itself, so the signal is reflect-padded by ``3/2 * hop`` on each side
and the two outermost frames on each side are dropped again.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

_windows: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}


def hann_window(n_fft: int, like: torch.Tensor) -> torch.Tensor:
    """A cached periodic Hann window on ``like``'s device and (real) dtype."""
    dtype = like.real.dtype if like.is_complex() else like.dtype
    key = (n_fft, like.device, dtype)
    window = _windows.get(key)
    if window is None:
        # A normal tensor (not an inference one), so the cache also serves training.
        with torch.inference_mode(False):
            window = torch.hann_window(n_fft, device=like.device, dtype=dtype)
        _windows[key] = window
    return window


def reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding that also works when the signal is shorter than the padding.

    Reflection needs more samples than the padding; a short signal is first zero-extended on the
    right just enough to reflect.
    """
    length = x.shape[-1]
    longest = max(left, right)
    if length <= longest:
        extra = longest - length + 1
        extra_right = min(right, extra)
        extra_left = extra - extra_right
        x = F.pad(x, (extra_left, extra_right))
        left, right = left - extra_left, right - extra_right
    return F.pad(x, (left, right), mode="reflect")


def stft(x: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """Normalised, centred STFT of ``(..., time)`` to complex ``(..., freqs, frames)``."""
    *batch, length = x.shape
    z = torch.stft(
        x.reshape(-1, length),
        n_fft,
        hop_length,
        window=hann_window(n_fft, x),
        win_length=n_fft,
        normalized=True,
        center=True,
        return_complex=True,
        pad_mode="reflect",
    )
    return z.view(*batch, *z.shape[-2:])


def istft(z: torch.Tensor, hop_length: int, length: int) -> torch.Tensor:
    """Inverse of :func:`stft`, ``(..., freqs, frames)`` to ``(..., length)``."""
    *batch, freqs, frames = z.shape
    n_fft = 2 * freqs - 2
    x = torch.istft(
        z.reshape(-1, freqs, frames),
        n_fft,
        hop_length,
        window=hann_window(n_fft, z),
        win_length=n_fft,
        normalized=True,
        length=length,
        center=True,
    )
    return x.view(*batch, length)


def hybrid_spectrogram(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """``(B, C, time)`` to ``(B, C, n_fft // 2, ceil(time / hop))`` complex, hop = n_fft // 4."""
    hop = n_fft // 4
    frames = math.ceil(x.shape[-1] / hop)
    pad = hop // 2 * 3
    x = reflect_pad(x, pad, pad + frames * hop - x.shape[-1])
    z = stft(x, n_fft, hop)[..., :-1, :]
    return z[..., 2 : 2 + frames]


def hybrid_inverse(z: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`hybrid_spectrogram`: restores the dropped Nyquist bin and edge frames."""
    return _inverse_of_padded(F.pad(z, (2, 2, 0, 1)), length)


def hybrid_inverse_of_channels(x: torch.Tensor, length: int, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`hybrid_inverse` of a complex-as-channels ``(..., 2, freqs, frames)`` spectrogram.

    The real and imaginary parts go straight into the zero-padded complex buffer, one tensor
    where a contiguous complex copy and then its padded copy were two (each 44 MB for htdemucs's
    four stems). ``buffer`` (:func:`inverse_buffer`) serves call after call: only its padding
    must be zero, and only its interior is written.
    """
    buffer = inverse_buffer(x) if buffer is None else buffer
    freqs, frames = x.shape[-2:]
    buffer[..., :freqs, 2 : 2 + frames, :] = x.movedim(-3, -1)
    return _inverse_of_padded(torch.view_as_complex(buffer), length)


def inverse_buffer(x: torch.Tensor) -> torch.Tensor:
    """The zero-padded buffer :func:`hybrid_inverse_of_channels` fills from ``x``: float32 at
    least (an exported network's float16 outputs are transformed back in float32)."""
    *batch, _, freqs, frames = x.shape
    return x.new_zeros(*batch, freqs + 1, frames + 4, 2, dtype=torch.promote_types(x.dtype, torch.float32))


def _inverse_of_padded(z: torch.Tensor, length: int) -> torch.Tensor:
    hop = ((z.shape[-2] - 1) * 2) // 4
    pad = hop // 2 * 3
    padded_length = hop * math.ceil(length / hop) + 2 * pad
    x = istft(z, hop, padded_length)
    return x[..., pad : pad + length]
