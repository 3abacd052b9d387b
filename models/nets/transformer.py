"""The cross-domain Transformer encoder at the bottom of HT Demucs.

Two stacks of layers, one per domain, alternate self-attention within a domain with
cross-attention across domains (the spectral tokens attend to the waveform tokens and the
reverse). Tokens are ``(batch, tokens, channels)``; the spectral branch's ``(freqs, frames)``
grid is flattened frame-major, as the official checkpoints were trained.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from stemdeck.models.nets.inference_paths import eager_inference, gelu_fresh
from stemdeck.models.nets.layers import LayerScale
from stemdeck.models.nets.sparse import SparsePattern, block_plan, lsh_attention, lsh_projections, planned_attention

# -- positional embeddings ---------------------------------------------------------------------


def sin_embedding(
    length: int,
    channels: int,
    shift: float | torch.Tensor = 0,
    max_period: float = 10000.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """1-D sinusoidal positions, ``(length, channels)``: cosines then sines."""
    half = channels // 2
    positions = torch.arange(length, device=device, dtype=torch.float32)[:, None] + shift
    exponents = torch.arange(half, device=device) / (half - 1)
    phase = positions / (max_period**exponents)
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


def sin_embedding_2d(
    channels: int, freqs: int, frames: int, max_period: float = 10000.0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """2-D sinusoidal positions as tokens, ``(frames * freqs, channels)``, frame-major.

    The first half of the channels encodes the frame (time), the second half the frequency bin;
    within each half, even channels are sines and odd ones cosines.
    """
    if channels % 4:
        raise ValueError(f"2-D sinusoidal positions need channels divisible by 4, got {channels}")
    half = channels // 2
    rates = torch.exp(torch.arange(0.0, half, 2) * -(math.log(max_period) / half))
    time_phase = (torch.arange(0.0, frames)[:, None] * rates).t()  # (half/2, frames)
    freq_phase = (torch.arange(0.0, freqs)[:, None] * rates).t()  # (half/2, freqs)
    grid = torch.zeros(channels, freqs, frames)
    grid[0:half:2] = torch.sin(time_phase)[:, None, :]
    grid[1:half:2] = torch.cos(time_phase)[:, None, :]
    grid[half::2] = torch.sin(freq_phase)[:, :, None]
    grid[half + 1 :: 2] = torch.cos(freq_phase)[:, :, None]
    return grid.permute(2, 1, 0).reshape(frames * freqs, channels).to(device)


class ScaledPositions(nn.Module):
    """Learnt positions whose learning rate is boosted (``t_emb="scaled"``)."""

    def __init__(self, max_positions: int, channels: int, scale: float = 0.2, boost: float = 3.0):
        super().__init__()
        self.embedding = nn.Embedding(max_positions, channels)
        self.embedding.weight.data *= scale / boost
        self.boost = boost

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.embedding(positions) * self.boost


# -- layers --------------------------------------------------------------------------------------

# The feed-forward's hidden tensor (4x the tokens' width) is made for a block of tokens at a time,
# so that it is never made whole: 21 MB for htdemucs's 2688 spectral tokens, mapped and faulted
# in again on every call where freed memory goes back at once (`stemdeck separate --memory low`).
FEED_FORWARD_BLOCK_BYTES = 4 << 20


class TokenGroupNorm(nn.GroupNorm):
    """GroupNorm over ``(batch, tokens, channels)``: with one group, over all tokens and channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_groups == 1 and eager_inference():
            # two passes of plain means, not var_mean: its one-pass (Welford) reduction took 3.2 ms
            # for the 2688 x 512 tokens against 0.35 ms (2 AVX-512 cores), to the same numbers.
            # Not in an export: ONNX's exporter lost the norm's weight from this form's graph.
            centred = x - x.mean(dim=(1, 2), keepdim=True)
            var = centred.square().mean(dim=(1, 2), keepdim=True)
            return torch.addcmul(self.bias, centred, self.weight * torch.rsqrt(var + self.eps))
        if self.num_groups == 1:
            var, mean = torch.var_mean(x, dim=(1, 2), correction=0, keepdim=True)
            return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameter layout, on SDPA."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention: {dim} channels do not split into {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        if memory is None:
            q, k, v = self._project_qkv(query).chunk(3, dim=-1)
        else:
            q = self._project_q(query)
            k, v = self._project_kv(memory).chunk(2, dim=-1)
        q, k, v = (self._split_heads(t) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(query.shape))

    def _project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.in_proj_weight, self.in_proj_bias)

    def _project_q(self, x: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        return F.linear(x, self.in_proj_weight[:dim], self.in_proj_bias[:dim])

    def _project_kv(self, x: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        return F.linear(x, self.in_proj_weight[dim:], self.in_proj_bias[dim:])

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = t.shape
        return t.view(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)


class SparseAttention(nn.Module):
    """Multi-head attention under a sparse pattern, with the reference's parameter layout for
    sparse layers (separate ``q``, ``k``, ``v`` and ``proj`` products), so that its checkpoints load.

    ``auto_sparsity`` (0 to 1) picks the keys per input by locality-sensitive hashing (projections
    seeded with ``lsh_seed``), keeping at most ``1 - auto_sparsity`` of the pairs; otherwise
    ``pattern`` fixes them (:class:`~stemdeck.models.nets.sparse.SparsePattern`); with neither,
    every query sees every key (the reference's auto sparsity at 0).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dropout: float = 0.0,
        pattern: SparsePattern | None = None,
        auto_sparsity: float = 0,
        lsh_seed: int = 42,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention: {dim} channels do not split into {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.pattern, self.auto_sparsity, self.lsh_seed = pattern, float(auto_sparsity), lsh_seed
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        memory = query if memory is None else memory
        q, k, v = self._split(self.q(query)), self._split(self.k(memory)), self._split(self.v(memory))
        dropout = self.dropout if self.training else 0.0
        if self.auto_sparsity:
            projections = lsh_projections(q.shape[-1], self.lsh_seed, q.device)
            out = lsh_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.auto_sparsity, projections, dropout
            ).transpose(1, 2)
        elif self.pattern is None:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout
            ).transpose(1, 2)
        else:
            plan = block_plan(self.pattern, q.shape[1], k.shape[1], q.device)
            out = planned_attention(q, k, v, plan, dropout)
        return self.proj_drop(self.proj(out.reshape(query.shape)))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """``(B, T, C)`` to token-major heads ``(B, T, H, C / H)``."""
        batch, tokens, dim = t.shape
        return t.view(batch, tokens, self.heads, dim // self.heads)


class Int8Attention(Attention):
    """:class:`Attention` whose projections are int8 matrix products (FBGEMM's dynamic
    quantisation: int8 weights, one scale per output channel; activations quantised per call).
    Built from a float :class:`Attention` for inference only; the product of queries and keys
    stays in float32, where the softmax needs the precision."""

    def __init__(self, source: Attention):
        nn.Module.__init__(self)  # not Attention's: no float projections (its weights would be freed)
        self.heads, self.dropout = source.heads, source.dropout
        dim = source.in_proj_weight.shape[1]
        rows = {"qkv": slice(None), "q": slice(None, dim), "kv": slice(dim, None)}
        weight, bias = source.in_proj_weight, source.in_proj_bias
        self.packed = nn.ModuleDict({name: _int8_linear(weight[part], bias[part]) for name, part in rows.items()})
        self.out_proj = _int8_linear(source.out_proj.weight, source.out_proj.bias)

    def _project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed["qkv"](x)

    def _project_q(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed["q"](x)

    def _project_kv(self, x: torch.Tensor) -> torch.Tensor:
        return self.packed["kv"](x)


def _int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices, at every import and call
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized import dynamic as quantized
        from torch.ao.quantization import per_channel_dynamic_qconfig

        # skip_init: its random initial weights would be drawn only to be overwritten (a third
        # of the whole model's int8 preparation)
        linear = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        linear.qconfig = per_channel_dynamic_qconfig
        return quantized.Linear.from_float(linear)


def is_int8(model: nn.Module) -> bool:
    """Whether ``model``'s Transformer was made int8 (:func:`quantize_int8`): it runs nothing else."""
    return any(isinstance(module, Int8Attention) for module in model.modules())


def quantize_int8(encoder: nn.Module) -> None:
    """Swap, in place, every attention and feed-forward matrix product of ``encoder`` for its
    int8 version (see :class:`Int8Attention`)."""
    for module in list(encoder.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Attention) and not isinstance(child, Int8Attention):
                setattr(module, name, Int8Attention(child))
            elif isinstance(child, nn.Linear) and isinstance(module, (TransformerLayer, SparseAttention)):
                setattr(module, name, _int8_linear(child.weight, child.bias))


class TransformerLayer(nn.Module):
    """One encoder layer: self-attention (``cross=False``) or cross-attention, then a GELU MLP.

    Norm-first with LayerScale and a final GroupNorm in HT Demucs; post-norm is kept for other
    configurations. ``sparse`` swaps in :class:`SparseAttention` (``pattern``, ``auto_sparsity``).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        hidden_dim: int,
        *,
        cross: bool,
        dropout: float = 0.0,
        gelu: bool = True,
        group_norm: int = 0,
        norm_first: bool = False,
        norm_out: bool = False,
        layer_scale: bool = False,
        init_values: float = 1e-4,
        eps: float = 1e-5,
        sparse: bool = False,
        pattern: SparsePattern | None = None,
        auto_sparsity: float = 0,
        lsh_seed: int = 42,
    ):
        super().__init__()
        self.cross, self.norm_first = cross, norm_first
        if sparse:
            attention: nn.Module = SparseAttention(dim, heads, dropout, pattern, auto_sparsity, lsh_seed)
        else:
            attention = Attention(dim, heads, dropout)
        setattr(self, "cross_attn" if cross else "self_attn", attention)
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = F.gelu if gelu else F.relu
        for name in ("norm1", "norm2", "norm3") if cross else ("norm1", "norm2"):
            norm = TokenGroupNorm(int(group_norm), dim, eps=eps) if group_norm else nn.LayerNorm(dim, eps=eps)
            setattr(self, name, norm)
        self.norm_out = TokenGroupNorm(int(norm_out), dim) if norm_first and norm_out else None
        self.gamma_1 = LayerScale(dim, init_values, True) if layer_scale else nn.Identity()
        self.gamma_2 = LayerScale(dim, init_values, True) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:
            x = x + self.gamma_1(self._attend(self.norm1(x), memory))
            x = x + self.gamma_2(self._feed_forward(self.norm3(x) if self.cross else self.norm2(x)))
            return self.norm_out(x) if self.norm_out is not None else x
        x = self.norm1(x + self.gamma_1(self._attend(x, memory, norm_memory=False)))
        return self.norm2(x + self.gamma_2(self._feed_forward(x)))

    def _attend(self, x: torch.Tensor, memory: torch.Tensor | None, norm_memory: bool = True) -> torch.Tensor:
        if self.cross:
            memory = self.norm2(memory) if norm_memory else memory
            return self.dropout1(self.cross_attn(x, memory))
        return self.dropout1(self.self_attn(x))

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        block_tokens = max(1, FEED_FORWARD_BLOCK_BYTES // (4 * self.linear1.out_features))
        if not eager_inference() or x.shape[-2] <= block_tokens:
            return self._feed_forward_block(x)
        out = x.new_empty(*x.shape[:-1], self.linear2.out_features)
        for start in range(0, x.shape[-2], block_tokens):
            tokens = slice(start, start + block_tokens)
            out[..., tokens, :] = self._feed_forward_block(x[..., tokens, :].contiguous())
        return out

    def _feed_forward_block(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.linear1(x)
        if self.activation is F.gelu:
            hidden = gelu_fresh(hidden)
        else:
            hidden = F.relu(hidden, inplace=eager_inference())
        return self.dropout2(self.linear2(self.dropout(hidden)))


def layer_scales_at_one(model: nn.Module) -> nn.Module:
    """``model``, every Transformer layer's LayerScales set to 1 in place: the residual branches at
    full weight, as a trained model has them far more than a fresh one (1e-4), which would hide
    the Transformer, and so any error made in it (int8, an export), from the stems. For tests and
    benchmarks with random weights."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, TransformerLayer):
                for scale in (layer.gamma_1, layer.gamma_2):
                    if isinstance(scale, LayerScale):
                        scale.scale.fill_(1.0)
    return model


class CrossTransformerEncoder(nn.Module):
    """Alternating self- and cross-attention layers over spectral and waveform tokens."""

    def __init__(
        self,
        dim: int,
        emb: str = "sin",
        hidden_scale: float = 4.0,
        num_heads: int = 8,
        num_layers: int = 6,
        cross_first: bool = False,
        dropout: float = 0.0,
        max_positions: int = 1000,
        norm_in: bool = True,
        norm_in_group: bool = False,
        group_norm: int = False,
        norm_first: bool = False,
        norm_out: bool = False,
        max_period: float = 10000.0,
        layer_scale: bool = False,
        gelu: bool = True,
        sin_random_shift: int = 0,
        weight_pos_embed: float = 1.0,
        cape_mean_normalize: bool = True,
        cape_augment: bool = True,
        cape_glob_loc_scale: tuple[float, float, float] = (5000.0, 1.0, 1.4),
        sparse_self_attn: bool = False,
        sparse_cross_attn: bool = False,
        mask_type: str = "diag",
        mask_random_seed: int = 42,
        sparse_attn_window: int = 500,
        global_window: int = 50,
        auto_sparsity: bool = False,
        sparsity: float = 0.95,
    ):
        super().__init__()
        if emb not in ("sin", "cape", "scaled"):
            raise ValueError(f"unknown transformer positional embedding {emb!r}")
        self.num_layers, self.classic_parity = num_layers, 1 if cross_first else 0
        self.emb, self.max_period, self.weight_pos_embed = emb, max_period, weight_pos_embed
        self.sin_random_shift = sin_random_shift
        self.cape_mean_normalize, self.cape_augment = cape_mean_normalize, cape_augment
        self.cape_glob_loc_scale = list(cape_glob_loc_scale)
        if emb == "scaled":
            self.position_embeddings = ScaledPositions(max_positions, dim)
        if norm_in:
            self.norm_in, self.norm_in_t = nn.LayerNorm(dim), nn.LayerNorm(dim)
        elif norm_in_group:
            self.norm_in = TokenGroupNorm(int(norm_in_group), dim)
            self.norm_in_t = TokenGroupNorm(int(norm_in_group), dim)
        else:
            self.norm_in, self.norm_in_t = nn.Identity(), nn.Identity()
        common = dict(
            dim=dim,
            heads=num_heads,
            hidden_dim=int(dim * hidden_scale),
            dropout=dropout,
            gelu=gelu,
            group_norm=group_norm,
            norm_first=norm_first,
            norm_out=norm_out,
            layer_scale=layer_scale,
        )
        # As the reference: a sparse layer's pattern is fixed, or (auto sparsity) hashed per input.
        pattern = None
        if (sparse_self_attn or sparse_cross_attn) and not auto_sparsity:
            pattern = SparsePattern.from_mask_type(
                mask_type,
                window=sparse_attn_window,
                global_window=global_window,
                seed=mask_random_seed,
                sparsity=sparsity,
            )
        hashed = float(sparsity) if auto_sparsity else 0.0
        sparse = {
            cross: dict(sparse=flag, pattern=pattern, auto_sparsity=hashed, lsh_seed=mask_random_seed)
            for cross, flag in ((False, bool(sparse_self_attn)), (True, bool(sparse_cross_attn)))
        }
        self.layers, self.layers_t = nn.ModuleList(), nn.ModuleList()
        for index in range(num_layers):
            cross = index % 2 != self.classic_parity
            self.layers.append(TransformerLayer(cross=cross, **common, **sparse[cross]))
            self.layers_t.append(TransformerLayer(cross=cross, **common, **sparse[cross]))
        self._grid_cache: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, xt: torch.Tensor, freqs: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: spectral tokens ``(B, frames * freqs, C)``; ``xt``: waveform tokens ``(B, T, C)``."""
        x = self.norm_in(x) + self.weight_pos_embed * self._grid_positions(x, freqs, frames)
        xt = self.norm_in_t(xt) + self.weight_pos_embed * self._time_positions(xt)
        for index in range(self.num_layers):
            if index % 2 == self.classic_parity:
                x, xt = self.layers[index](x), self.layers_t[index](xt)
            else:
                x, xt = self.layers[index](x, xt), self.layers_t[index](xt, x)
        return x, xt

    def _grid_positions(self, x: torch.Tensor, freqs: int, frames: int) -> torch.Tensor:
        key = (x.shape[-1], freqs, frames, x.device, x.dtype)
        grid = self._grid_cache.get(key)
        if grid is None:
            with torch.inference_mode(False):  # cached: must also serve training
                grid = sin_embedding_2d(x.shape[-1], freqs, frames, self.max_period, x.device).to(x.dtype)
            self._grid_cache = {key: grid}
        return grid

    def _time_positions(self, xt: torch.Tensor) -> torch.Tensor:
        batch, length, channels = xt.shape
        if self.emb == "scaled":
            return self.position_embeddings(torch.arange(length, device=xt.device))
        if self.emb == "cape":
            return self._cape_positions(batch, length, channels, xt.device).to(xt.dtype)
        shift = 0
        if self.training and self.sin_random_shift:
            shift = int(torch.randint(self.sin_random_shift + 1, ()))
        return sin_embedding(length, channels, shift, self.max_period, xt.device).to(xt.dtype)

    def _cape_positions(self, batch: int, length: int, channels: int, device) -> torch.Tensor:
        """CAPE (Likhomanenko et al. 2021): mean-centred positions, randomly moved in training."""
        positions = torch.arange(length, dtype=torch.float32)[None, :, None].repeat(batch, 1, 1)
        if self.cape_mean_normalize:
            positions = positions - positions.mean(dim=1, keepdim=True)
        if self.training and self.cape_augment:
            global_shift, local_shift, max_scale = self.cape_glob_loc_scale
            delta = (torch.rand(batch, 1, 1) * 2 - 1) * global_shift
            delta_local = (torch.rand(batch, length, 1) * 2 - 1) * local_shift
            log_scale = (torch.rand(batch, 1, 1) * 2 - 1) * math.log(max_scale)
            positions = (positions + delta + delta_local) * torch.exp(log_scale)
        half = channels // 2
        exponents = torch.arange(half) / (half - 1)
        phase = positions / (self.max_period**exponents)
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1).to(device)
