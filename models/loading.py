"""Loading a model by name or path for the user's commands, with what happens said through a callback.

The command line passes a printer to stderr, the GUI a signal: the library itself prints nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from torch import nn

from stemdeck.models import DEFAULT_MODEL, load_model
from stemdeck.models.checkpoint import CheckpointError
from stemdeck.models.registry import REGISTRY, ModelNotAvailableError, bundled_path, fetch

FALLBACK_MODEL = "tiny"  # bundled: used when the default cannot be had


class LoadedModel(NamedTuple):
    """A model with the name the user is shown (a registry name, or a checkpoint's file name)."""

    model: nn.Module
    name: str


def _silent(line: str) -> None:
    pass


def load_or_fetch(
    name_or_path: str | None, report: Callable[[str], None] = _silent, progress_bar: bool = False
) -> LoadedModel:
    """Load a model; a registry model that is not cached is downloaded first.

    ``None`` is the default: the official htdemucs when it is cached or can be downloaded,
    otherwise (no network, a failed checksum, a damaged cached file) the bundled tiny model,
    said through ``report`` in one line. A model the user named is never swapped: its failure
    is the error. ``progress_bar`` draws the download's bar on stderr (a terminal's).
    """
    name = name_or_path or DEFAULT_MODEL
    try:
        return LoadedModel(_load_or_download(name, report, progress_bar), display_name(name))
    except (ModelNotAvailableError, CheckpointError) as exc:
        if name_or_path is not None or bundled_path(FALLBACK_MODEL) is None:
            raise
        report(f"stemdeck: using the bundled {FALLBACK_MODEL} model ({str(exc).splitlines()[0]})")
        return LoadedModel(load_model(FALLBACK_MODEL), FALLBACK_MODEL)


def _load_or_download(name: str, report: Callable[[str], None], progress_bar: bool) -> nn.Module:
    try:
        return load_model(name)
    except ModelNotAvailableError:
        if name not in REGISTRY:
            raise
    report(f"model {name} is not cached; downloading it")
    fetch(name, progress=progress_bar)
    return load_model(name)


def display_name(name: str) -> str:
    """A registry name as it is; a checkpoint path by its file name."""
    return Path(name).name if ("/" in name or "." in name) else name
