"""The hybrid bi-U-Net shared by Hybrid Demucs (v3) and HT Demucs (v4).

Two U-Nets run side by side: one over the waveform (temporal convolutions) and one over the
complex spectrogram, stored as channels ("complex as channels"), convolving along frequency.
Each spectral layer divides the frequency axis by the stride; the time branch divides time by
the same factor, so both branches keep the same number of frames at every depth. Where the
spectral branch is down to one bin, the time branch is injected into it and they share the
remaining layers (Hybrid Demucs) or meet in a cross-domain Transformer (HT Demucs).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from stemdeck.models.nets import rewrite_blocked, winograd
from stemdeck.models.nets.inference_paths import eager_inference, gelu_fresh
from stemdeck.models.nets.layers import DConv, FrequencyEmbedding, _norm, rescale_module
from stemdeck.models.nets.spec import hybrid_inverse_of_channels, hybrid_spectrogram, inverse_buffer


def _freq_major(y: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(B, C, Fr, T)`` to ``(B * Fr, C, T)``, so DConv runs along time for each bin."""
    batch, channels, freqs, frames = y.shape
    return y.permute(0, 2, 1, 3).reshape(-1, channels, frames), (batch, freqs, channels, frames)


def _run_dconv(dconv: nn.Module, y: torch.Tensor, freq: bool) -> torch.Tensor:
    """The DConv of ``y``, which the layer no longer needs: it may be overwritten."""
    if not freq:
        return dconv(y, consume=True)
    flat, shape = _freq_major(y)
    return dconv(flat, consume=True).view(shape).permute(0, 2, 1, 3)


def _rewrite_glu(
    rewrite: nn.Module, norm: nn.Module, y: torch.Tensor, skip: torch.Tensor | None = None
) -> torch.Tensor:
    """``glu(norm(rewrite(y + skip)), dim=1)``; the blocked path adds ``skip`` a piece at a time, so
    the sum (33 MB at htdemucs's last spectral decoder) never exists whole. An exported network's
    convolves the GLU's halves apart (:class:`~models.nets.export_form.GatedConv`)."""
    if getattr(rewrite, "gated", False):
        return rewrite(y if skip is None else y + skip)
    if winograd.usable(rewrite, norm, y):
        return winograd.rewrite_glu(rewrite, y if skip is None else y + skip)
    if rewrite_blocked.usable(rewrite, norm, y):
        return rewrite_blocked.rewrite_glu(rewrite, y, skip)
    return F.glu(norm(rewrite(y if skip is None else y + skip)), dim=1)


class EncoderLayer(nn.Module):
    """Strided conv, norm, GELU, DConv residual, then a 1x1 "rewrite" conv with a GLU.

    ``freq`` layers convolve along the frequency axis of ``(B, C, Fr, T)``; the others along time
    of ``(B, C, T)``. An ``empty`` layer is just the strided conv, used by the time branch right
    before it is injected into the spectral branch.
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        kernel_size: int = 8,
        stride: int = 4,
        norm_groups: int = 1,
        empty: bool = False,
        freq: bool = True,
        dconv: bool = True,
        norm: bool = True,
        context: int = 0,
        dconv_kw: dict | None = None,
        pad: bool = True,
        rewrite: bool = True,
    ):
        super().__init__()
        padding = kernel_size // 4 if pad else 0
        self.freq, self.kernel_size, self.stride = freq, kernel_size, stride
        self.empty, self.norm, self.pad = empty, norm, padding
        if freq:
            self.conv = nn.Conv2d(chin, chout, (kernel_size, 1), (stride, 1), (padding, 0))
        else:
            self.conv = nn.Conv1d(chin, chout, kernel_size, stride, padding)
        if empty:
            return
        conv_1x1 = nn.Conv2d if freq else nn.Conv1d
        self.norm1 = _norm(norm, chout, norm_groups)
        self.rewrite = conv_1x1(chout, 2 * chout, 1 + 2 * context, 1, context) if rewrite else None
        if rewrite:
            self.norm2 = _norm(norm, 2 * chout, norm_groups)
        self.dconv = DConv(chout, **(dconv_kw or {})) if dconv else None

    def forward(self, x: torch.Tensor, inject: torch.Tensor | None = None) -> torch.Tensor:
        if not self.freq:
            if x.dim() == 4:
                x = x.view(x.shape[0], -1, x.shape[-1])
            remainder = x.shape[-1] % self.stride
            if remainder:
                x = F.pad(x, (0, self.stride - remainder))
        y = self.conv(x)
        if self.empty:
            return y
        if inject is not None:
            y = y + (inject[:, :, None] if inject.dim() == 3 and y.dim() == 4 else inject)
        y = gelu_fresh(self.norm1(y))  # the conv's output, or its sum with inject
        if self.dconv is not None:
            y = _run_dconv(self.dconv, y, self.freq)
        if self.rewrite is None:
            return y
        return _rewrite_glu(self.rewrite, self.norm2, y)


class DecoderLayer(nn.Module):
    """Mirror of :class:`EncoderLayer`: skip add, rewrite + GLU, DConv, transposed conv.

    ``forward`` also returns the input of the transposed conv, which the time branch takes over
    where the two branches split again.
    """

    def __init__(
        self,
        chin: int,
        chout: int,
        last: bool = False,
        kernel_size: int = 8,
        stride: int = 4,
        norm_groups: int = 1,
        empty: bool = False,
        freq: bool = True,
        dconv: bool = True,
        norm: bool = True,
        context: int = 1,
        dconv_kw: dict | None = None,
        pad: bool = True,
        context_freq: bool = True,
        rewrite: bool = True,
    ):
        super().__init__()
        self.pad = kernel_size // 4 if pad else 0
        self.last, self.freq, self.chin, self.empty = last, freq, chin, empty
        self.stride, self.kernel_size, self.norm = stride, kernel_size, norm
        if freq:
            self.conv_tr = nn.ConvTranspose2d(chin, chout, (kernel_size, 1), (stride, 1))
        else:
            self.conv_tr = nn.ConvTranspose1d(chin, chout, kernel_size, stride)
        self.norm2 = _norm(norm, chout, norm_groups)
        if empty:
            return
        self.rewrite = None
        if rewrite:
            if not freq:
                self.rewrite = nn.Conv1d(chin, 2 * chin, 1 + 2 * context, 1, context)
            elif context_freq:
                self.rewrite = nn.Conv2d(chin, 2 * chin, 1 + 2 * context, 1, context)
            else:
                self.rewrite = nn.Conv2d(chin, 2 * chin, (1, 1 + 2 * context), 1, (0, context))
            self.norm1 = _norm(norm, 2 * chin, norm_groups)
        self.dconv = DConv(chin, **(dconv_kw or {})) if dconv else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.freq and x.dim() == 3:
            x = x.view(x.shape[0], self.chin, -1, x.shape[-1])
        y = x
        if not self.empty:
            y = x + skip if self.rewrite is None else _rewrite_glu(self.rewrite, self.norm1, x, skip)
            if self.dconv is not None:
                y = _run_dconv(self.dconv, y, self.freq)
        z = self.norm2(self.conv_tr(y))
        if self.freq:
            if self.pad:
                z = z[..., self.pad : -self.pad, :]
        else:
            z = z[..., self.pad : self.pad + length]
        if not self.last:
            z = gelu_fresh(z)  # a view of the transposed conv's output
        return z, y


class HybridUNet(nn.Module):
    """Layers and data flow common to :class:`HDemucs` and :class:`HTDemucs`.

    Subclasses build the layers with :meth:`_build_layers` and fill the U-Net's bottom in
    :meth:`_bottleneck`.
    """

    sources: list[str]
    samplerate: int
    audio_channels: int

    def _build_layers_from(self, arguments: dict) -> None:
        """Build the U-Net from a constructor's arguments: those that are layer settings."""
        settings = inspect.signature(self._build_layers).parameters
        self._build_layers(**{name: value for name, value in arguments.items() if name in settings})

    def _build_layers(
        self,
        *,
        audio_channels: int,
        channels: int,
        channels_time: int | None,
        growth: float,
        nfft: int,
        depth: int,
        rewrite: bool,
        multi_freqs: Sequence[float] | None,
        freq_emb: float,
        emb_scale: float,
        emb_smooth: bool,
        kernel_size: int,
        time_stride: int,
        stride: int,
        context: int,
        context_enc: int,
        norm_starts: int,
        norm_groups: int,
        dconv_mode: int,
        dconv_depth: int,
        dconv_comp: float,
        dconv_init: float,
        dconv_attn: int = 1 << 30,
        dconv_lstm: int = 1 << 30,
    ) -> None:
        if multi_freqs:
            raise ValueError("multi_freqs (band-split MultiWrap layers) is not supported")
        self.nfft, self.hop_length, self.depth = nfft, nfft // 4, depth
        self.kernel_size, self.stride, self.context = kernel_size, stride, context
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        self.tencoder, self.tdecoder = nn.ModuleList(), nn.ModuleList()
        self.freq_emb = None
        chin, chin_z = audio_channels, audio_channels * 2  # complex as channels
        chout, chout_z = channels_time or channels, channels
        freqs = nfft // 2
        for index in range(depth):
            freq = freqs > 1
            ker, stri, pad, last_freq = kernel_size, stride, True, False
            if not freq:
                ker, stri = time_stride * 2, time_stride
            if freq and freqs <= kernel_size:
                ker, pad, last_freq = freqs, False, True
            kw = dict(
                kernel_size=ker,
                stride=stri,
                freq=freq,
                pad=pad,
                norm=index >= norm_starts,
                rewrite=rewrite,
                norm_groups=norm_groups,
                dconv_kw=dict(
                    lstm=index >= dconv_lstm,
                    attn=index >= dconv_attn,
                    depth=dconv_depth,
                    compress=dconv_comp,
                    init=dconv_init,
                    gelu=True,
                ),
            )
            time_kw = dict(kw, freq=False, kernel_size=kernel_size, stride=stride, pad=True)
            if last_freq:
                chout_z = max(chout, chout_z)
                chout = chout_z
            self.encoder.append(EncoderLayer(chin_z, chout_z, dconv=bool(dconv_mode & 1), context=context_enc, **kw))
            if freq:
                self.tencoder.append(
                    EncoderLayer(
                        chin, chout, dconv=bool(dconv_mode & 1), context=context_enc, empty=last_freq, **time_kw
                    )
                )
            if index == 0:
                chin = audio_channels * len(self.sources)
                chin_z = chin * 2
            self.decoder.insert(
                0, DecoderLayer(chout_z, chin_z, dconv=bool(dconv_mode & 2), last=index == 0, context=context, **kw)
            )
            if freq:
                self.tdecoder.insert(
                    0,
                    DecoderLayer(
                        chout,
                        chin,
                        dconv=bool(dconv_mode & 2),
                        empty=last_freq,
                        last=index == 0,
                        context=context,
                        **time_kw,
                    ),
                )
            chin, chin_z = chout, chout_z
            chout, chout_z = int(growth * chout), int(growth * chout_z)
            if freq:
                freqs = 1 if freqs <= kernel_size else freqs // stride
            if index == 0 and freq_emb:
                self.freq_emb = FrequencyEmbedding(freqs, chin_z, scale=emb_scale, smooth=emb_smooth)
                self.freq_emb_scale = freq_emb

    def _init_weights(self, rescale: float) -> None:
        if rescale:
            rescale_module(self, reference=rescale)

    # -- data flow -------------------------------------------------------------------------------

    def _bottleneck(self, x: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _separate(self, mix: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` mixture to ``(B, S, C, T)`` stems: both branches, summed."""
        spec, wave = self.branches(complex_as_channels(hybrid_spectrogram(mix, self.nfft)), mix)
        return self.stems(spec, wave, mix.shape[-1])

    def branches(self, spec: torch.Tensor, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network without its STFT and iSTFT, in real numbers only (what the ONNX backend
        exports, see models.onnx_backend): the spectrogram as channels ``(B, 2C, Fr, T)`` and
        the mixture ``(B, C, T)`` to the spectral branch's ``(B, S * 2C, Fr, T)`` and the
        waveform branch's ``(B, S * C, T)``, both scaled back."""
        mean = spec.mean(dim=(1, 2, 3), keepdim=True)
        std = spec.std(dim=(1, 2, 3), keepdim=True)
        meant = mix.mean(dim=(1, 2), keepdim=True)
        stdt = mix.std(dim=(1, 2), keepdim=True)
        if eager_inference():
            x, xt = (spec - mean).div_(1e-5 + std), (mix - meant).div_(1e-5 + stdt)
        else:
            x, xt = (spec - mean) / (1e-5 + std), (mix - meant) / (1e-5 + stdt)

        x, xt, skips = self._encode(x, xt)
        x, xt = self._bottleneck(x, xt)
        x, xt = self._decode(x, xt, skips)
        if eager_inference():  # the decoders' outputs, held by nothing else
            return x.mul_(std).add_(mean), xt.mul_(stdt).add_(meant)
        return x * std + mean, xt * stdt + meant

    def stems(self, spec: torch.Tensor, wave: torch.Tensor, length: int) -> torch.Tensor:
        """The two branches' outputs (:meth:`branches`) to ``(B, S, C, length)`` stems, in float32
        at least (from an exported network's float16 outputs too)."""
        batch, _, freqs, frames = spec.shape
        num_sources = len(self.sources)
        per_source = spec.view(batch, num_sources, -1, 2, freqs, frames)
        out = wave.view(batch, num_sources, -1, length).to(torch.promote_types(wave.dtype, torch.float32), copy=True)
        # one zero-padded buffer for every source at inference (10.6 MB each for htdemucs); autograd
        # may need each source's own
        shared = inverse_buffer(per_source[:, 0]) if eager_inference() else None
        for source in range(num_sources):  # one at a time: a quarter of the iSTFT's temporaries
            out[:, source] += hybrid_inverse_of_channels(per_source[:, source], length, shared)
        return out

    def _encode(self, x: torch.Tensor, xt: torch.Tensor):
        skips: dict[str, list] = {"x": [], "xt": [], "len": [], "len_t": []}
        for index, encode in enumerate(self.encoder):
            skips["len"].append(x.shape[-1])
            inject = None
            if index < len(self.tencoder):
                skips["len_t"].append(xt.shape[-1])
                tencode = self.tencoder[index]
                xt = tencode(xt)
                if tencode.empty:
                    inject = xt  # the branches merge here
                else:
                    skips["xt"].append(xt)
            x = encode(x, inject)
            if index == 0 and self.freq_emb is not None:
                bins = torch.arange(x.shape[-2], device=x.device)
                embedding = self.freq_emb_scale * self.freq_emb(bins).t()[None, :, :, None]
                x = x.add_(embedding) if eager_inference() else x + embedding
            skips["x"].append(x)
        return x, xt, skips

    def _decode(self, x: torch.Tensor, xt: torch.Tensor, skips: dict):
        offset = self.depth - len(self.tdecoder)
        for index, decode in enumerate(self.decoder):
            x, pre = decode(x, skips["x"].pop(), skips["len"].pop())
            if index < offset:
                continue
            tdecode = self.tdecoder[index - offset]
            length_t = skips["len_t"].pop()
            if tdecode.empty:
                xt, _ = tdecode(pre[:, :, 0], None, length_t)  # the branches split here
            else:
                xt, _ = tdecode(xt, skips["xt"].pop(), length_t)
        return x, xt


def complex_as_channels(z: torch.Tensor) -> torch.Tensor:
    """A complex ``(B, C, Fr, T)`` spectrogram as real ``(B, 2C, Fr, T)``: each channel's real
    part, then its imaginary part."""
    batch, channels, freqs, frames = z.shape
    return torch.view_as_real(z).permute(0, 1, 4, 2, 3).reshape(batch, channels * 2, freqs, frames)
