"""Stems for the band above a model's Nyquist frequency.

A model that runs at a lower rate than the audio (the bundled ``tiny`` runs at 22.05 kHz) returns
stems with nothing above its Nyquist frequency, so their sum would sound dull next to the input.
The mixture's part of that band which the stems do not carry is shared among them, moment by
moment, in proportion to each stem's energy in the octave just below the cut-off: hi-hats and
cymbals go to the drums, a voice's breath to the vocals. The stems then sum to the input again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BandShare:
    cutoff_ratio: float = 0.8  # of the model's Nyquist: below the resampler's roll-off
    lowpass_order: int = 8  # Butterworth, run forwards and backwards (zero phase)
    guide_order: int = 4  # the band-pass on the octave below the cut-off
    smoothing_s: float = 0.01  # of each stem's guide energy
    floor: float = 1e-12  # energy where no stem has any: the band is shared equally


def share_high_band(
    mixture: np.ndarray, stems: np.ndarray, samplerate: int, model_samplerate: int, config: BandShare = BandShare()
) -> np.ndarray:
    """``stems`` ``(S, C, T)`` at ``samplerate`` plus their share of what they miss of ``mixture``
    ``(C, T)`` above the model's Nyquist; unchanged when the model covers the whole band."""
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import butter, sosfilt, sosfiltfilt

    cutoff_hz = config.cutoff_ratio * model_samplerate / 2
    frames = stems.shape[-1]
    if model_samplerate >= samplerate or len(stems) == 0 or frames < 64:
        return stems
    lowpass = butter(config.lowpass_order, cutoff_hz, "lowpass", fs=samplerate, output="sos")
    guide = butter(config.guide_order, (cutoff_hz / 2, cutoff_hz), "bandpass", fs=samplerate, output="sos")
    residual = mixture - stems.sum(axis=0)
    missing = residual - sosfiltfilt(lowpass, residual, axis=-1)  # the exact complement: nothing lost
    # the guide only weighs the stems: one channel and one pass (its ~0.3 ms delay is far below the smoothing)
    energy = np.square(sosfilt(guide, stems.mean(axis=1), axis=-1))  # (S, T)
    energy = uniform_filter1d(energy, max(1, int(config.smoothing_s * samplerate)), axis=-1) + config.floor
    weights = energy / energy.sum(axis=0, keepdims=True)
    return (stems + weights[:, None, :] * missing[None]).astype(stems.dtype, copy=False)
