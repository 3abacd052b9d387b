"""Separated stems kept on disk per (audio content, model, settings), so a reload is instant.

The cache is an optimisation and nothing more: a failure to read or write it is logged once
and the deck goes on separating. An entry is ``<key>.npy`` (float16 stems, ``(S, C, frames)``)
with a ``<key>.json`` sidecar holding the interval it covers and the SHA-256 of the sample
bytes; an entry whose header, size, checksum or samples do not match is a miss. The folder is
kept under a size limit by evicting the least recently used entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs
from torch import nn

from stemdeck.engine.runtime import pid_alive

DEFAULT_MAX_BYTES = 4 * 1024**3
SIDECAR_MAX_BYTES = 4096
CACHE_DTYPE = np.dtype(np.float16)  # half the disk, far below audible error
_TEMPORARY = re.compile(r"\..+\.(\d+)\.tmp")

log = logging.getLogger("stemdeck.cache")
_reported: set[str] = set()


@dataclass(frozen=True)
class CacheEntry:
    """Where one track's stems live, and the folder's size limit (picklable for the worker)."""

    path: Path  # <folder>/<key>.npy
    max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")


class CacheMiss(Exception):
    """An entry that is absent or not to be trusted; the message says which."""


def cache_folder() -> Path:
    return Path(platformdirs.user_cache_dir("stemdeck")) / "stems"


def model_fingerprint(model: nn.Module) -> str:
    """Identifies a model's architecture and weights without hashing every parameter."""
    digest = hashlib.sha256(type(model).__name__.encode())
    digest.update(repr(sorted(getattr(model, "init_kwargs", {}).items())).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def stems_key(track: np.ndarray, fingerprint: str, settings: tuple) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(track).tobytes())
    digest.update(fingerprint.encode())
    digest.update(repr(settings).encode())
    return digest.hexdigest()[:32]


def _report_once(kind: str, message: str) -> None:
    """One line per kind of failure and process: a broken disk must not flood the log."""
    if kind not in _reported:
        _reported.add(kind)
        log.warning("stemdeck: stems cache: %s; playing on without it", message)


# -- reading --------------------------------------------------------------------------------------


def load_stems(entry: CacheEntry, stems: np.ndarray) -> tuple[int, int] | None:
    """Fill ``stems`` ``(S, C, frames)`` from the cache; return the interval it held, or None.

    Never raises: a missing entry is silent, an unreadable or damaged one is logged once.
    """
    try:
        begin, end = _read_entry(entry, stems)
    except (FileNotFoundError, NotADirectoryError):  # nothing stored (the writer reports a bad folder)
        return None
    except CacheMiss as exc:
        _report_once("damaged", f"{entry.path.name} ignored ({exc})")
        return None
    except Exception as exc:  # noqa: BLE001 - any failure of an optimisation is a miss
        _report_once("read", f"cannot read {entry.path.name} ({type(exc).__name__}: {exc})")
        return None
    _touch(entry.path)
    return begin, end


def load_whole_track(entry: CacheEntry, stems: np.ndarray) -> bool:
    """Fill ``stems`` from the cache where it holds the whole track (the sidecar says so before
    anything is read); False, ``stems`` untouched, otherwise. Never raises, as :func:`load_stems`."""
    length = stems.shape[-1]
    try:
        interval = _read_sidecar(entry.sidecar, length)[:2]
    except (OSError, CacheMiss):  # absent, or damaged: load_stems reports that when the worker meets it
        return False
    return interval == (0, length) and load_stems(entry, stems) == (0, length)


def _read_entry(entry: CacheEntry, stems: np.ndarray) -> tuple[int, int]:
    begin, end, checksum = _read_sidecar(entry.sidecar, stems.shape[-1])
    shape = (*stems.shape[:-1], end - begin)
    with open(entry.path, "rb") as file:
        header_shape, dtype = _read_npy_header(file)
        if header_shape != shape or dtype != CACHE_DTYPE:
            raise CacheMiss(f"holds {header_shape} {dtype}, expected {shape} {CACHE_DTYPE}")
        count = int(np.prod(shape))
        data = np.fromfile(file, CACHE_DTYPE, count)
    if data.size != count:
        raise CacheMiss(f"truncated: {data.size} of {count} samples")
    if hashlib.sha256(data.data).hexdigest() != checksum:
        raise CacheMiss("checksum mismatch")
    data = data.reshape(shape)
    if not np.isfinite(data).all():
        raise CacheMiss("non-finite samples")
    stems[..., begin:end] = data
    return begin, end


def _read_sidecar(path: Path, length: int) -> tuple[int, int, str]:
    with open(path, "rb") as file:
        raw = file.read(SIDECAR_MAX_BYTES + 1)
    if len(raw) > SIDECAR_MAX_BYTES:
        raise CacheMiss("sidecar too large")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CacheMiss(f"sidecar is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CacheMiss("sidecar is not an object")
    begin, end, checksum = meta.get("from"), meta.get("until"), meta.get("sha256")
    if not all(type(v) is int for v in (begin, end)) or not 0 <= begin < end <= length:
        raise CacheMiss(f"interval {begin!r}..{end!r} outside the track's {length} frames")
    if not (isinstance(checksum, str) and re.fullmatch(r"[0-9a-f]{64}", checksum)):
        raise CacheMiss("no checksum")
    return begin, end, checksum


def _read_npy_header(file) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, checked before anything is allocated."""
    try:
        version = np.lib.format.read_magic(file)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(file)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged header makes numpy raise
        raise CacheMiss(f"not an array file ({type(exc).__name__})") from None
    if fortran:
        raise CacheMiss("unexpected layout")
    return tuple(shape), dtype


def _touch(path: Path) -> None:
    """Mark as recently used (eviction goes by modification time, which noatime mounts keep)."""
    try:
        os.utime(path)
    except OSError:
        pass


# -- writing ---------------------------------------------------------------------------------------


def save_stems(entry: CacheEntry, stems: np.ndarray, begin: int, end: int) -> bool:
    """Store ``stems[..., begin:end]``; then evict down to the size limit. Never raises."""
    if not 0 <= begin < end <= stems.shape[-1]:
        return False
    data = np.ascontiguousarray(stems[..., begin:end], dtype=CACHE_DTYPE)
    if data.nbytes > entry.max_bytes:
        _report_once(
            "too-large",
            f"{data.nbytes / 1e9:.1f} GB of stems exceed the cache limit ({entry.max_bytes / 1e9:.1f} GB); not stored",
        )
        return False
    meta = {"from": int(begin), "until": int(end), "sha256": hashlib.sha256(data.data).hexdigest()}
    try:
        entry.path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(entry.path, lambda file: np.save(file, data))
        _write_atomically(entry.sidecar, lambda file: file.write(json.dumps(meta).encode()))
    except OSError as exc:
        _report_once("write", f"cannot write {entry.path.parent} ({exc.strerror or exc})")
        return False
    evict(entry.path.parent, entry.max_bytes, keep=entry.path)
    return True


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            write(file)
        tmp.replace(path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass  # left for clean_temporaries at the next start
        raise


def evict(folder: Path, max_bytes: int, keep: Path | None = None) -> list[Path]:
    """Remove least recently used entries until the folder's entries fit in ``max_bytes``."""
    try:
        entries = sorted(
            ((p.stat().st_mtime, p, _entry_bytes(p)) for p in folder.glob("*.npy")), key=lambda item: item[0]
        )
    except OSError:
        return []
    total = sum(size for _, _, size in entries)
    removed = []
    for _, path, size in entries:
        if total <= max_bytes:
            break
        if path == keep:
            continue
        try:
            path.unlink()
            path.with_suffix(".json").unlink(missing_ok=True)
        except OSError:
            continue
        total -= size
        removed.append(path)
    return removed


def _entry_bytes(path: Path) -> int:
    sidecar = path.with_suffix(".json")
    return path.stat().st_size + (sidecar.stat().st_size if sidecar.exists() else 0)


def clean_temporaries(folder: Path) -> list[Path]:
    """Remove temporaries left by writers that are gone (a failed write, a killed process)."""
    removed = []
    try:
        candidates = list(folder.glob(".*.tmp"))
    except OSError:
        return removed
    for path in candidates:
        match = _TEMPORARY.fullmatch(path.name)
        if match and not pid_alive(int(match.group(1))):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed
