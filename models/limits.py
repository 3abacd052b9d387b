"""What a checkpoint may ask for: every size read from a file is checked here before anything
is allocated from it.

A model file is a small text of hyper-parameters plus the weights; the hyper-parameters decide
how much memory the model takes when it is built, so a few hostile bytes could ask for
gigabytes. The ranges below cover every official Demucs model with a wide margin
(``htdemucs``: channels 48, depth 4, 5 transformer layers, 512 bottom channels;
``hdemucs_mmi``: depth 6; the bundled ``tiny``: 22.05 kHz), and refuse the rest in one line.
Source names become file names, so they are short identifiers and nothing else.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any

SOURCE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,31}")
MAX_SOURCES = 16
MAX_BAG_MODELS = 16
MAX_PARAMETERS = 200_000_000  # 3x the largest official model (hdemucs_mmi, 67 M)
MAX_FRACTION_DIGITS = 12
SAMPLERATE_RANGE = (8_000, 384_000)
SEGMENT_RANGE_S = (1.0, 120.0)  # shorter chunks leave the deepest layers without a frame
MAX_SHOWN_CHARS = 60

# name: (low, high), inclusive. Integers must be ints, the others any finite number.
INT_RANGES: dict[str, tuple[int, int]] = {
    "audio_channels": (1, 8),
    "channels": (1, 512),
    "channels_time": (1, 512),
    "nfft": (256, 16384),
    "wiener_iters": (0, 16),
    "end_iters": (0, 16),
    "depth": (1, 8),
    "multi_freqs_depth": (0, 8),
    "kernel_size": (1, 16),
    "time_stride": (1, 8),
    "stride": (1, 8),
    "context": (0, 2),
    "context_enc": (0, 2),
    "norm_starts": (0, 16),
    "norm_groups": (1, 64),
    "dconv_mode": (0, 3),
    "dconv_depth": (0, 8),
    "dconv_attn": (0, 1 << 30),
    "dconv_lstm": (0, 1 << 30),
    "bottom_channels": (0, 2048),
    "t_layers": (0, 16),
    "t_heads": (1, 64),
    "t_max_positions": (1, 100_000),
    "t_sin_random_shift": (0, 100_000),
    "t_mask_random_seed": (0, 2**32 - 1),
    "t_sparse_attn_window": (0, 100_000),
    "t_global_window": (0, 100_000),
    "samplerate": SAMPLERATE_RANGE,
}
FLOAT_RANGES: dict[str, tuple[float, float]] = {
    "growth": (1.0, 4.0),
    "freq_emb": (0.0, 10.0),
    "emb_scale": (0.0, 1000.0),
    "dconv_comp": (1.0, 64.0),
    "dconv_init": (0.0, 10.0),
    "t_hidden_scale": (0.1, 16.0),
    "t_dropout": (0.0, 1.0),
    "t_max_period": (1.0, 1e6),
    "t_weight_decay": (0.0, 1.0),
    "t_lr": (0.0, 1.0),
    "t_weight_pos_embed": (0.0, 100.0),
    "t_sparsity": (0.0, 1.0),
    "rescale": (0.0, 10.0),
    "segment": SEGMENT_RANGE_S,
}
OPTIONAL = {"channels_time", "t_lr", "multi_freqs"}
# Sparse attention patterns (models/nets/sparse.py); t_mask_type joins them with '_', each once.
SPARSE_MASK_KINDS = ("diag", "jmask", "random", "global")
CHOICES = {"t_emb": ("sin", "cape", "scaled"), "t_mask_type": SPARSE_MASK_KINDS}
BOOLEANS = {
    "wiener_residual",
    "cac",
    "rewrite",
    "hybrid",
    "hybrid_old",
    "emb_smooth",
    "t_norm_in",
    "t_norm_in_group",
    "t_group_norm",
    "t_norm_first",
    "t_norm_out",
    "t_layer_scale",
    "t_gelu",
    "t_cape_mean_normalize",
    "t_cape_augment",
    "t_sparse_self_attn",
    "t_sparse_cross_attn",
    "t_auto_sparsity",
    "t_cross_first",
    "use_train_segment",
}
# The layer layout every official and stemdeck model uses. The U-Net's two branches only meet
# where these fit together, so other values build a model that fails on its first chunk of audio.
LAYOUT = {"nfft": 4096, "kernel_size": 8, "stride": 4, "time_stride": 2}
# With that layout the spectral branch is down to one bin after 5 layers: HT Demucs puts its
# transformer on a spectrogram that still has bins, Hybrid Demucs shares the layers after it.
DEPTHS = {"HTDemucs": (1, 5), "HDemucs": (5, 8)}
FLOAT_LISTS = {"multi_freqs": (0, 8, 0.0, 1.0), "t_cape_glob_loc_scale": (3, 3, 0.0, 1e6)}  # lengths, values


class LimitError(ValueError):
    """A value read from a file that no real model has; the message names it."""


def shown(text: Any) -> str:
    """``repr`` cut to a readable length, for messages that quote what a file said."""
    text = repr(text)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 5] + "...'"


def check_sources(sources: Any) -> list[str]:
    """Source names become file names: 1-16 unique short identifiers (letters, digits, _ and -)."""
    if not isinstance(sources, (list, tuple)) or not 1 <= len(sources) <= MAX_SOURCES:
        raise LimitError(f"sources must be a list of 1 to {MAX_SOURCES} names, not {shown(sources)}")
    for name in sources:
        if not isinstance(name, str) or not SOURCE_NAME.fullmatch(name):
            raise LimitError(
                f"source name {shown(name)} is not a short identifier (letters, digits, "
                "'_' and '-', not starting with '-', at most 32 characters)"
            )
    if len({name.lower() for name in sources}) != len(sources):
        raise LimitError(f"source names repeat: {shown(list(sources))}")
    return list(sources)


def check_hyperparameters(values: dict[str, Any]) -> None:
    """Refuse any constructor argument outside what a real model uses, before building it."""
    for name, value in values.items():
        if name == "sources":
            check_sources(value)
        elif value is None and name in OPTIONAL:
            continue
        elif name in INT_RANGES:
            _check_int(name, value, *INT_RANGES[name])
        elif name in FLOAT_RANGES:
            _check_number(name, value, *FLOAT_RANGES[name])
        elif name in BOOLEANS:
            if not isinstance(value, bool) and value not in (0, 1):
                raise LimitError(f"{name} must be true or false, not {shown(value)}")
        elif name == "t_mask_type":
            check_mask_type(value)
        elif name in CHOICES:
            if not isinstance(value, str) or value not in CHOICES[name]:
                raise LimitError(f"{name} must be one of {', '.join(CHOICES[name])}, not {shown(value)}")
        elif name in FLOAT_LISTS:
            _check_float_list(name, value, *FLOAT_LISTS[name])
        else:
            raise LimitError(f"unexpected model argument {shown(name)}")
    _check_shapes_fit(values)


def check_mask_type(value: Any) -> tuple[str, ...]:
    """``t_mask_type``: sparse pattern kinds joined by '_' (``"diag_global"``), each at most once."""
    kinds = value.split("_") if isinstance(value, str) and len(value) <= MAX_SHOWN_CHARS else None
    if not kinds or any(kind not in SPARSE_MASK_KINDS for kind in kinds) or len(set(kinds)) != len(kinds):
        raise LimitError(
            f"t_mask_type must be {', '.join(SPARSE_MASK_KINDS)} or several of them joined by '_' "
            f"(each once), not {shown(value)}"
        )
    return tuple(kinds)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise LimitError(f"{name} must be a whole number from {low} to {high}, not {shown(value)}")


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    if (
        not isinstance(value, (int, float, Fraction))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise LimitError(f"{name} must be a number from {low:g} to {high:g}, not {shown(value)}")


def _check_float_list(name: str, value: Any, shortest: int, longest: int, low: float, high: float) -> None:
    if not isinstance(value, (list, tuple)) or not shortest <= len(value) <= longest:
        raise LimitError(f"{name} must be a list of {shortest} to {longest} numbers, not {shown(value)}")
    for item in value:
        _check_number(name, item, low, high)


def _check_shapes_fit(values: dict[str, Any]) -> None:
    """Combinations that would build but fail on the first chunk of audio: the layer layout,
    the depth that fits it, compressed residual branches with no channel left, and a
    transformer width the 2-D positional embedding cannot split."""
    for name, official in LAYOUT.items():
        if values[name] != official:
            raise LimitError(f"{name} must be {official} (the layer layout of every Demucs model), not {values[name]}")
    kind = "HTDemucs" if "t_layers" in values else "HDemucs"
    low, high = DEPTHS[kind]
    if not low <= values["depth"] <= high:
        raise LimitError(f"depth must be from {low} to {high} for {kind}, not {values['depth']}")
    if kind == "HTDemucs" and values["growth"] != int(values["growth"]):
        raise LimitError(
            f"growth must be a whole number in HT Demucs (its transformer width is "
            f"channels x growth^(depth-1)), not {values['growth']:g}"
        )
    if kind == "HTDemucs" and values["channels_time"] not in (None, values["channels"]):
        raise LimitError(
            "channels_time must equal channels in HT Demucs: its transformer joins the two "
            f"branches ({values['channels_time']} and {values['channels']})"
        )
    narrowest = min(values["channels"], values.get("channels_time") or values["channels"])
    if values["dconv_mode"] and values["dconv_depth"] and narrowest < values["dconv_comp"]:
        raise LimitError(
            f"dconv_comp={values['dconv_comp']:g} leaves no channel of {narrowest} in the residual branches"
        )
    if not values.get("t_layers"):
        return
    width = values.get("bottom_channels") or int(values["channels"] * values["growth"] ** (values["depth"] - 1))
    if width % 4:
        raise LimitError(f"the transformer width ({width} channels) must be divisible by 4")


def fraction(numerator: Any, denominator: Any = 1) -> Fraction:
    """``Fraction`` from a file, refusing what would take unbounded time or memory to convert
    (``Fraction('1e1000000000')`` runs for hours): short decimal ``p/q`` text or small integers."""
    if isinstance(numerator, str) and denominator == 1:
        if len(numerator) > 2 * MAX_FRACTION_DIGITS + 2 or not re.fullmatch(r"-?\d+(/\d+)?", numerator):
            raise LimitError(f"a fraction must be short 'p/q' text, not {shown(numerator)}")
        numerator, _, text = numerator.partition("/")
        numerator, denominator = int(numerator), int(text or 1)
    for part in (numerator, denominator):
        if not isinstance(part, int) or isinstance(part, bool) or abs(part) >= 10**MAX_FRACTION_DIGITS:
            raise LimitError(f"a fraction needs integers below 10^{MAX_FRACTION_DIGITS}, not {shown(part)}")
    if denominator <= 0:
        raise LimitError(f"a fraction needs a positive denominator, not {denominator}")
    return Fraction(numerator, denominator)
