"""Audio files in and out: libsndfile formats, strict checks, atomic writes.

Arrays are ``(channels, frames)`` float32 everywhere in stemdeck.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

MAX_CHANNELS = 2
# MPEG decoders may return up to one frame's worth of samples less than the header promises.
MPEG_FRAME_TOLERANCE = 2304


class AudioError(Exception):
    """An audio file that cannot be used; the message names the file, the problem and a fix."""


@dataclass(frozen=True)
class OutputFormat:
    """How stems are written: container, sample format and what to do about overs."""

    extension: str = "wav"
    bits: str = "24"
    clip: str = "rescale"

    FORMATS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3"}
    SUBTYPES = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}

    def __post_init__(self) -> None:
        if self.extension not in self.FORMATS:
            raise ValueError(f"unknown format {self.extension!r}; choose wav, flac or mp3")
        if self.bits not in self.SUBTYPES:
            raise ValueError(f"unknown bit depth {self.bits!r}; choose 16, 24 or 32f")
        if self.extension == "flac" and self.bits == "32f":
            raise ValueError("FLAC holds 16 or 24-bit integers; use --bits 16 or 24, or --format wav")
        if self.clip not in ("rescale", "clamp"):
            raise ValueError(f"unknown clip mode {self.clip!r}; choose rescale or clamp")

    @property
    def subtype(self) -> str:
        return "MPEG_LAYER_III" if self.extension == "mp3" else self.SUBTYPES[self.bits]


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a whole file as ``(channels, frames)`` float32 and its sample rate.

    Refuses directories, empty, unreadable or truncated files and more than two channels, each
    with a one-line :class:`AudioError`.
    """
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path} is a directory; pass audio files (WAV, FLAC, OGG, MP3)")
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes); re-export or re-download it")
    try:
        info = sf.info(str(path), verbose=True)
        _check_header(path, info)
        data, samplerate = sf.read(str(path), dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        reason = str(exc).split(": ", 1)[-1].strip()
        raise AudioError(f"{path}: not a readable audio file ({reason}); convert it to WAV or FLAC") from None
    except (RuntimeError, OSError) as exc:
        raise AudioError(f"{path}: could not be decoded ({exc}); the file is damaged") from None
    _check_complete(path, info, data.shape[0])
    if data.shape[0] == 0:
        raise AudioError(f"{path} holds no audio (0 frames)")
    if data.shape[1] > MAX_CHANNELS:
        raise AudioError(f"{path} has {data.shape[1]} channels; stemdeck separates mono or stereo: "
                         "downmix it first (e.g. sox in.wav -c 2 out.wav)")
    return np.ascontiguousarray(data.T), samplerate


def _check_header(path: Path, info) -> None:
    """libsndfile reads a truncated WAV silently but logs the size its header promised."""
    for stated, actual in re.findall(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", info.extra_info, re.M):
        if int(actual) < int(stated) < 0xFFFFFF00:  # streamed WAVs write a placeholder size
            raise AudioError(f"{path} is truncated: its header promises {int(stated)} bytes of audio, "
                             f"the file holds {int(actual)}; re-export or re-download it")


def _check_complete(path: Path, info, frames_read: int) -> None:
    tolerance = MPEG_FRAME_TOLERANCE if info.format == "MP3" else 0
    if 0 < info.frames and frames_read < info.frames - tolerance:
        raise AudioError(f"{path} is truncated: it declares {info.frames} frames but only "
                         f"{frames_read} could be decoded; re-export or re-download it")


def prepare_for_output(audio: np.ndarray, clip: str) -> np.ndarray:
    """Keep samples inside [-1, 1]: scale the whole stem down, or clamp."""
    if clip == "rescale":
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        return audio / max(1.01 * peak, 1.0)
    return np.clip(audio, -0.99, 0.99)


def write_stems_atomically(stems: dict[str, np.ndarray], samplerate: int, folder: Path,
                           fmt: OutputFormat) -> list[Path]:
    """Write every stem or none: all go to temporary files first, then are renamed into place."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AudioError(f"cannot create {folder}: {exc.strerror}; choose another output directory (-o)") from None
    pending: list[tuple[Path, Path]] = []
    try:
        for name, audio in stems.items():
            final = folder / f"{name}.{fmt.extension}"
            handle, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=f".{fmt.extension}.partial", dir=folder)
            os.close(handle)
            pending.append((Path(tmp_name), final))
            sf.write(tmp_name, prepare_for_output(audio, fmt.clip).T, samplerate,
                     format=fmt.FORMATS[fmt.extension], subtype=fmt.subtype)
        for tmp, final in pending:
            os.replace(tmp, final)
    except OSError as exc:
        raise AudioError(f"cannot write stems to {folder}: {exc.strerror or exc}; "
                         "choose another output directory (-o) or free some space") from None
    except sf.LibsndfileError as exc:
        raise AudioError(f"cannot encode stems in {folder}: {exc}") from None
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
    return [final for _, final in pending]
