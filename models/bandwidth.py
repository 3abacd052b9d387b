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

from stemdeck.models.butterworth import CausalFilter, butterworth, moving_average, zero_phase


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
    ``(C, T)`` above the model's Nyquist; unchanged when the model covers the whole band. The
    filters are numpy's (:mod:`models.butterworth`: scipy.signal's within 1e-9, without its 64 MB)."""
    cutoff_hz = config.cutoff_ratio * model_samplerate / 2
    frames = stems.shape[-1]
    if model_samplerate >= samplerate or len(stems) == 0 or frames < 64:
        return stems
    lowpass = butterworth(config.lowpass_order, cutoff_hz, samplerate)
    guide = butterworth(config.guide_order, (cutoff_hz / 2, cutoff_hz), samplerate)
    residual = mixture - stems.sum(axis=0)
    missing = residual - zero_phase(residual, lowpass)  # the exact complement: nothing lost
    # the guide only weighs the stems: one channel and one pass (its ~0.3 ms delay is far below the smoothing)
    energy = np.square(CausalFilter(guide)(stems.mean(axis=1)))  # (S, T)
    energy = moving_average(energy, max(1, int(config.smoothing_s * samplerate))) + config.floor
    weights = energy / energy.sum(axis=0, keepdims=True)
    return (stems + weights[:, None, :] * missing[None]).astype(stems.dtype, copy=False)


class HighBandStream:
    """:func:`share_high_band` over a track that arrives in blocks, in bounded memory.

    The zero-phase low-pass and the guide's smoothing look both ways, so each output block is
    computed on the mixture and stems around it, ``context_frames`` either side (or up to the
    track's ends, where the whole-track edge handling then applies unchanged); the causal guide
    filter keeps its state from block to block. The result equals the whole-track function's
    within float rounding (the filters' responses decay far below 1e-7 within the context).
    ``frames`` is the track's length, known in advance; ``enabled=False`` passes the stems through.
    """

    CONTEXT_CUTOFF_PERIODS = 400  # of the low-pass cut-off: its response is < 1e-9 after this

    def __init__(
        self,
        samplerate: int,
        model_samplerate: int,
        frames: int,
        config: BandShare = BandShare(),
        block_frames: int = 1 << 16,
        enabled: bool = True,
    ):
        self.frames, self.config, self.block_frames = frames, config, block_frames
        self.active = enabled and model_samplerate < samplerate and frames >= 64
        cutoff_hz = config.cutoff_ratio * model_samplerate / 2
        self.smoothing_frames = max(1, int(config.smoothing_s * samplerate))
        self.context_frames = max(2 * self.smoothing_frames, int(self.CONTEXT_CUTOFF_PERIODS * samplerate / cutoff_hz))
        if self.active:
            self.lowpass = butterworth(config.lowpass_order, cutoff_hz, samplerate)
            self.guide = CausalFilter(butterworth(config.guide_order, (cutoff_hz / 2, cutoff_hz), samplerate))
        self._mixture = self._stems = self._energy = None
        self._start = 0  # the track position of the buffers' first frame
        self._emitted = 0  # frames returned so far

    def feed(self, mixture: np.ndarray, stems: np.ndarray) -> np.ndarray:
        """Add ``mixture`` ``(C, n)`` and its ``stems`` ``(S, C, n)``; return the stems ``(S, C, k)``
        that are final (all of them once the track's ``frames`` have been fed)."""
        if not self.active:
            self._emitted += stems.shape[-1]
            return stems
        self._append(mixture, stems)
        received = self._start + self._stems.shape[-1]
        end = self.frames if received >= self.frames else received - self.context_frames
        out = []
        while end - self._emitted >= (self.block_frames if end < self.frames else 1):
            out.append(self._emit(min(end, self._emitted + self.block_frames)))  # small pieces: small temporaries
        return np.concatenate(out, axis=-1) if out else stems[..., :0]

    def _append(self, mixture: np.ndarray, stems: np.ndarray) -> None:
        energy = np.square(self.guide(stems.mean(axis=1)))
        if self._stems is None:
            self._mixture, self._stems, self._energy = mixture, stems, energy
        else:
            self._mixture = np.concatenate([self._mixture, mixture], axis=-1)
            self._stems = np.concatenate([self._stems, stems], axis=-1)
            self._energy = np.concatenate([self._energy, energy], axis=-1)

    def _emit(self, end: int) -> np.ndarray:
        low = max(0, self._emitted - self.context_frames) - self._start
        high = min(self.frames, end + self.context_frames) - self._start
        mixture, stems = self._mixture[..., low:high], self._stems[..., low:high]
        residual = mixture - stems.sum(axis=0)
        missing = residual - zero_phase(residual, self.lowpass)
        energy = moving_average(self._energy[..., low:high], self.smoothing_frames) + self.config.floor
        weights = energy / energy.sum(axis=0, keepdims=True)
        keep = slice(self._emitted - self._start - low, end - self._start - low)
        out = (stems[..., keep] + weights[:, None, keep] * missing[None, :, keep]).astype(stems.dtype, copy=False)
        self._emitted = end
        self._trim(max(0, end - self.context_frames))
        return out

    def _trim(self, start: int) -> None:
        drop = start - self._start
        if drop > 0:
            self._mixture = self._mixture[..., drop:].copy()
            self._stems = self._stems[..., drop:].copy()
            self._energy = self._energy[..., drop:].copy()
            self._start = start
