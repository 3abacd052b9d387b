"""Named pretrained models: where their files live, fetching them, and finding them offline.

Files are looked for, in order, in ``$STEMDECK_MODEL_DIR`` and in the user cache directory.
``stemdeck models fetch`` downloads from the official release location (or from
``$STEMDECK_MODEL_URL``, e.g. a ``file://`` mirror), verifies the checksum in the file name
(the first hex digits of its SHA-256) and renames it into the cache only when it matches.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from torch import nn

from stemdeck.models.bag import BagOfModels
from stemdeck.models.checkpoint import CheckpointError, container_readable, load_checkpoint
from stemdeck.models.limits import shown

OFFICIAL_ROOT_URL = "https://dl.fbaipublicfiles.com/demucs/"
FOUR_SOURCES = ("drums", "bass", "other", "vocals")
SIX_SOURCES = FOUR_SOURCES + ("guitar", "piano")


class ModelNotAvailableError(Exception):
    """A named model whose weights are neither cached nor downloadable right now."""


@dataclass(frozen=True)
class RemoteFile:
    folder: str  # below the release root
    filename: str  # "<signature>-<sha256 prefix>.th"

    @property
    def signature(self) -> str:
        return self.filename.split("-", 1)[0]

    @property
    def checksum_prefix(self) -> str:
        return Path(self.filename).stem.split("-", 1)[1]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    sources: tuple[str, ...]
    files: tuple[RemoteFile, ...]
    description: str
    weights: tuple[tuple[float, ...], ...] | None = None
    segment: float | None = None


def _ht(filename: str) -> RemoteFile:
    return RemoteFile("hybrid_transformer", filename)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "htdemucs",
            FOUR_SOURCES,
            (_ht("955717e8-8726e21a.th"),),
            "HT Demucs trained on MUSDB-HQ plus 800 extra songs (the default)",
        ),
        ModelSpec(
            "htdemucs_ft",
            FOUR_SOURCES,
            tuple(
                _ht(f)
                for f in (
                    "f7e0c4bc-ba3fe64a.th",
                    "d12395a8-e57c48e6.th",
                    "92cfc3b6-ef3bcb9c.th",
                    "04573f0d-f3cf25b2.th",
                )
            ),
            "bag of 4 fine-tuned HT Demucs, one per source (best quality, 4x slower)",
            weights=((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)),
        ),
        ModelSpec(
            "htdemucs_6s",
            SIX_SOURCES,
            (_ht("5c90dfd2-34c22ccb.th"),),
            "HT Demucs with guitar and piano stems (experimental)",
        ),
        ModelSpec(
            "hdemucs_mmi",
            FOUR_SOURCES,
            (_ht("75fc33f5-1941ce65.th"),),
            "Hybrid Demucs v3 retrained on MUSDB-HQ plus extra songs",
            segment=44,
        ),
    )
}


# Shipped inside the package: separates with no download (trained by models/recipes/<name>.toml).
BUNDLED_DIR = Path(__file__).parent / "weights"
BUNDLED = {
    "tiny": (
        "tiny.safetensors",
        FOUR_SOURCES,
        "small HT Demucs (2 M parameters) trained by stemdeck on generated songs; no download",
    )
}


# Built into the code, no weights: a stand-in whose stems are fixed fractions of the input
# (models.passthrough), for checking routing, latency and gains. Name -> (sources, description).
PASSTHROUGH = "passthrough"
BUILT_IN = {
    PASSTHROUGH: (FOUR_SOURCES, "stand-in whose stems are fixed fractions of the input (checks routing; no separation)")
}


def model_names() -> tuple[str, ...]:
    """Every model a name loads: the downloadable ones, the bundled ones, the built-in stand-in."""
    return (*REGISTRY, *BUNDLED, *BUILT_IN)


def declared_sources(name: str | None) -> tuple[str, ...] | None:
    """The stems a model name gives, known before it loads (None: a checkpoint file's, which only
    loading tells). No name: the default model, or the bundled one that stands in for it."""
    if name is None:
        return FOUR_SOURCES
    if name in REGISTRY:
        return REGISTRY[name].sources
    if name in BUNDLED:
        return BUNDLED[name][1]
    if name in BUILT_IN:
        return BUILT_IN[name][0]
    return None


def bundled_path(name: str) -> Path | None:
    entry = BUNDLED.get(name)
    path = BUNDLED_DIR / entry[0] if entry else None
    return path if path is not None and path.is_file() else None


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("stemdeck")) / "models"


def search_dirs() -> list[Path]:
    dirs = [cache_dir()]
    if os.environ.get("STEMDECK_MODEL_DIR"):
        dirs.insert(0, Path(os.environ["STEMDECK_MODEL_DIR"]))
    return dirs


def root_url() -> str:
    """The mirror's root: ``$STEMDECK_MODEL_URL`` (a URL, or a local folder's path: that gave
    "unknown url type"), else the official one."""
    url = os.environ.get("STEMDECK_MODEL_URL", OFFICIAL_ROOT_URL)
    if "://" not in url:
        url = Path(url).expanduser().resolve().as_uri()
    return url if url.endswith("/") else url + "/"


def find_file(remote: RemoteFile) -> Path | None:
    """A local copy of ``remote``: its official name, or ``<signature>.th/.safetensors``."""
    names = (remote.filename, f"{remote.signature}.th", f"{remote.signature}.safetensors")
    for folder in search_dirs():
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def is_cached(spec: ModelSpec) -> bool:
    return all(find_file(remote) is not None for remote in spec.files)


def damaged_files(spec: ModelSpec) -> list[Path]:
    """Cached files that cannot be this model's: under their official name, a SHA-256 that does
    not match it (a copy cut short, a file overwritten; ``fetch`` replaces them); renamed to the
    signature (no checksum to check against), a container that does not read."""
    found = [(remote, find_file(remote)) for remote in spec.files]
    return [path for remote, path in found if path is not None and not _intact(path, remote)]


def _intact(path: Path, remote: RemoteFile) -> bool:
    if path.name == remote.filename:
        return _checksum_ok(path, remote)
    return container_readable(path)


def cached_size_bytes(spec: ModelSpec) -> int:
    return sum(path.stat().st_size for path in map(find_file, spec.files) if path is not None)


def unknown_name_message(name: str) -> str:
    return (
        f"unknown model {shown(name)}; known models: {', '.join(model_names())} "
        "(or pass the path of a .th, .safetensors or .yaml file)"
    )


def load_named(name: str) -> nn.Module:
    if name in BUILT_IN:
        from stemdeck.models.nets.passthrough import PassThrough

        return PassThrough(BUILT_IN[name][0])
    if name in BUNDLED:
        path = bundled_path(name)
        if path is None:
            raise ModelNotAvailableError(
                f"the bundled model {name!r} is missing from this install ({BUNDLED_DIR / BUNDLED[name][0]}); "
                f"reinstall stemdeck or rebuild it with `stemdeck recipe models/recipes/{name}.toml`"
            )
        return load_checkpoint(path)
    spec = REGISTRY.get(name)
    if spec is None:
        raise ModelNotAvailableError(unknown_name_message(name))
    paths = [find_file(remote) for remote in spec.files]
    missing = [remote.filename for remote, path in zip(spec.files, paths, strict=True) if path is None]
    if missing:
        raise ModelNotAvailableError(
            f"model {name!r} is not downloaded: run `stemdeck models fetch {name}`, or put "
            f"{', '.join(missing)} in $STEMDECK_MODEL_DIR or {cache_dir()}"
        )
    models = [load_checkpoint(path) for path in paths]
    if len(models) == 1 and spec.segment is None:
        return models[0]
    weights = [list(row) for row in spec.weights] if spec.weights else None
    return BagOfModels(models, weights, spec.segment).eval()


def fetch(name: str, progress: bool = True) -> list[Path]:
    """Download every file of ``name`` that is not cached yet; return the local paths."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise ModelNotAvailableError(unknown_name_message(name))
    paths = []
    for index, remote in enumerate(spec.files):
        local = find_file(remote)
        if local is None or not _checksum_ok(local, remote):
            try:
                local = _download(remote, progress)
            except ModelNotAvailableError as exc:
                still = [later.filename for later in spec.files[index:] if find_file(later) is None]
                if len(still) < 2:
                    raise
                raise ModelNotAvailableError(f"{exc}; {name} needs {len(still)} files: {', '.join(still)}") from None
        paths.append(local)
    return paths


def _checksum_ok(path: Path, remote: RemoteFile) -> bool:
    if path.name != remote.filename:
        return True  # renamed by the user: nothing to check against
    return _sha256(path).startswith(remote.checksum_prefix)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(remote: RemoteFile, progress: bool) -> Path:
    url = f"{root_url()}{remote.folder}/{remote.filename}"
    target_dir = cache_dir()
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only home, $XDG_CACHE_HOME a file: not a crash, and tiny stands in
        raise ModelNotAvailableError(
            f"cannot make the model cache {target_dir} ({exc.strerror or exc}); fix its permissions, "
            "or put the model's files in $STEMDECK_MODEL_DIR"
        ) from None
    target = target_dir / remote.filename
    partial = target.with_name(target.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            _copy_with_progress(
                response, out, int(response.headers.get("Content-Length") or 0), remote.filename, progress
            )
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise ModelNotAvailableError(
            f"cannot download {url} ({reason}); with no network, get that file elsewhere and put "
            f"it in {target_dir} or in $STEMDECK_MODEL_DIR"
        ) from None
    if not _sha256(partial).startswith(remote.checksum_prefix):
        partial.unlink(missing_ok=True)
        raise CheckpointError(
            f"{url}: checksum mismatch (expected SHA-256 starting with "
            f"{remote.checksum_prefix}); the download is corrupt, try again"
        )
    partial.replace(target)
    return target


def _copy_with_progress(source, out, total: int, label: str, progress: bool) -> None:
    if not progress:
        shutil.copyfileobj(source, out, 1 << 20)
        return
    from tqdm import tqdm

    with tqdm(total=total or None, unit="B", unit_scale=True, desc=label, ncols=100) as bar:
        for block in iter(lambda: source.read(1 << 20), b""):
            out.write(block)
            bar.update(len(block))
