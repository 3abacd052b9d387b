"""Audio files in and out: libsndfile formats, strict checks, atomic writes.

Arrays are ``(channels, frames)`` float32 everywhere in stemdeck. What a file's header declares
(rate, channels, length) is checked before anything is allocated for it; non-finite samples are
read as silence; no non-finite sample is ever written.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile as sf

MAX_CHANNELS = 2
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 384_000
MAX_DURATION_S = 3 * 3600  # a declared length beyond this is refused before anything is allocated
# MPEG decoders may return up to one frame's worth of samples less than the header promises.
MPEG_FRAME_TOLERANCE = 2304
# Stem names become file names: a short identifier, never a path.
STEM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
PARTIAL_SUFFIX = ".partial"
STALE_PARTIAL_S = 24 * 3600  # a temporary without a live owner, or older than this, is removed


NONE_NEEDS_FLOAT = (
    "--clip none keeps samples beyond full scale, which only 32-bit float WAV holds; "
    "add --bits 32f, or choose --clip rescale or clamp"
)


class AudioError(Exception):
    """An audio file that cannot be used; the message names the file, the problem and a fix."""


CLIP_MODES = ("rescale", "clamp", "none")  # none: as separated, for 32-bit float stems only
MP3_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # MPEG-1, 2 and 2.5's


@dataclass(frozen=True)
class OutputFormat:
    """How stems are written: container, sample format and what to do about overs."""

    extension: str = "wav"
    bits: str = "24"
    clip: str = "rescale"

    FORMATS: ClassVar[dict[str, str]] = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3"}
    SUBTYPES: ClassVar[dict[str, str]] = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}

    def __post_init__(self) -> None:
        if self.extension not in self.FORMATS:
            raise ValueError(f"unknown format {self.extension!r}; choose wav, flac or mp3")
        if self.bits not in self.SUBTYPES:
            raise ValueError(f"unknown bit depth {self.bits!r}; choose 16, 24 or 32f")
        if self.extension == "flac" and self.bits == "32f":
            raise ValueError("FLAC holds 16 or 24-bit integers; use --bits 16 or 24, or --format wav")
        if self.clip not in CLIP_MODES:
            raise ValueError(f"unknown clip mode {self.clip!r}; choose {', '.join(CLIP_MODES)}")
        if self.clip == "none" and self.subtype != "FLOAT":
            raise ValueError(NONE_NEEDS_FLOAT)

    @property
    def subtype(self) -> str:
        return "MPEG_LAYER_III" if self.extension == "mp3" else self.SUBTYPES[self.bits]

    def check_rate(self, path: Path, samplerate: int) -> None:
        """Stems keep the input's rate; MP3 has only its standard rates up to 48 kHz. Refused
        before the separation, not at the first write after it (the encoder's own words)."""
        if self.extension == "mp3" and samplerate not in MP3_RATES_HZ:
            raise AudioError(
                f"{path}: MP3 holds {', '.join(f'{rate / 1000:g}' for rate in MP3_RATES_HZ)} kHz audio, "
                f"not {samplerate} Hz; use --format flac or wav"
            )


def _hours_minutes(seconds: float) -> str:
    """Hours and minutes, as in "3 h 01 min" ("3.0 hours" said a file of 3 h 01 min was over
    a limit of 3 hours)."""
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def read_audio(path: str | Path, report: Callable[[str], None] | None = None) -> tuple[np.ndarray, int]:
    """Read a whole file as ``(channels, frames)`` float32 and its sample rate.

    Refuses directories, empty, unreadable, damaged or truncated files, sample rates outside
    8-384 kHz, more than two channels and declared lengths over three hours, each with a
    one-line :class:`AudioError`, before reading the audio. Non-finite samples (NaN, infinity,
    which only float files can hold) are read as silence; ``report`` is told so in one line.
    """
    path = Path(path)
    _check_file(path)
    name = os.fsencode(path)  # libsndfile takes bytes: file names need not be valid UTF-8
    try:
        info = sf.info(name, verbose=True)
    except sf.LibsndfileError as exc:
        raise AudioError(f"{path}: not a readable audio file ({_reason(exc)}); convert it to WAV or FLAC") from None
    _check_header(path, info)
    try:
        data, samplerate = sf.read(name, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(
            f"{path} is damaged or truncated: decoding failed ({_reason(exc)}); re-export or re-download it"
        ) from None
    _check_complete(path, info, data.shape[0])
    if data.shape[0] == 0:
        raise AudioError(f"{path} holds no audio (0 frames)")
    audio = np.ascontiguousarray(data.T)
    replaced = silence_non_finite(audio)
    if replaced and report is not None:
        report(f"{path}: {replaced} non-finite sample(s) (NaN or infinity) read as silence")
    return audio, samplerate


def silence_non_finite(audio: np.ndarray) -> int:
    """Set NaN and infinite samples to 0 in place; return how many there were."""
    bad = ~np.isfinite(audio)
    count = int(np.count_nonzero(bad))
    if count:
        audio[bad] = 0.0
    return count


def _reason(exc: BaseException) -> str:
    return str(exc).split(": ", 1)[-1].strip().rstrip(".") or type(exc).__name__


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise AudioError(f"{path} is a directory; pass audio files (WAV, FLAC, OGG, MP3)")
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    mode = path.stat().st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode):  # it said "is empty (0 bytes)"
        raise AudioError(f"{path} is a pipe or a device, not a file: save the audio to a file and pass that")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes); re-export or re-download it")


def _check_header(path: Path, info) -> None:
    """What the header declares, before anything is allocated for it."""
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{path} declares a sample rate of {info.samplerate} Hz; stemdeck reads "
            f"{MIN_SAMPLE_RATE // 1000}-{MAX_SAMPLE_RATE // 1000} kHz: the header is damaged, "
            "or resample the file (e.g. sox in.wav -r 44100 out.wav)"
        )
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioError(
            f"{path} has {info.channels} channels; stemdeck separates mono or stereo: "
            "downmix it first (e.g. sox in.wav -c 2 out.wav)"
        )
    if info.frames > MAX_DURATION_S * info.samplerate:
        raise AudioError(
            f"{path} declares {_hours_minutes(info.frames / info.samplerate)} of audio; "
            f"stemdeck reads up to {_hours_minutes(MAX_DURATION_S)}: split it"
        )
    # libsndfile reads a truncated WAV silently but logs the size its header promised.
    for stated, actual in re.findall(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", info.extra_info, re.MULTILINE):
        if int(actual) < int(stated) < 0xFFFFFF00:  # streamed WAVs write a placeholder size
            raise AudioError(
                f"{path} is truncated: its header promises {int(stated)} bytes of audio, "
                f"the file holds {int(actual)}; re-export or re-download it"
            )


def _check_complete(path: Path, info, frames_read: int) -> None:
    tolerance = MPEG_FRAME_TOLERANCE if info.format == "MP3" else 0
    if 0 < info.frames and frames_read < info.frames - tolerance:
        raise AudioError(
            f"{path} is truncated: it declares {info.frames} frames but only "
            f"{frames_read} could be decoded; re-export or re-download it"
        )


def prepare_for_output(audio: np.ndarray, clip: str) -> np.ndarray:
    """Keep samples inside [-1, 1]: scale the whole stem down, or clamp; or, for float stems,
    leave them as separated."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return _fitted(audio, _rescale_divisor(peak, clip), clip)


def _rescale_divisor(peak: float, clip: str) -> float | None:
    """What ``--clip rescale`` divides a stem of this peak by (1 where it fits); None otherwise."""
    return max(1.01 * peak, 1.0) if clip == "rescale" else None


def _fitted(block: np.ndarray, scale: float | None, clip: str) -> np.ndarray:
    """A stem, or a block of one: divided by the whole stem's ``scale`` (rescale), clamped, or
    as it is (none)."""
    if scale is not None:
        return block / scale
    return block if clip == "none" else np.clip(block, -0.99, 0.99)


def check_stem_name(name: str) -> str:
    """Stem names come from the model's checkpoint: only a short identifier may become a file name."""
    if not isinstance(name, str) or not STEM_NAME.fullmatch(name):
        raise AudioError(
            f"stem name {str(name)[:40]!r} is not a short identifier (letters, digits, _ and -); "
            "the model's checkpoint is damaged or hostile, use another model"
        )
    return name


def check_finite(stems: dict[str, np.ndarray], folder: Path) -> None:
    """The last guard: nothing non-finite is ever written as a finished stem."""
    for name, audio in stems.items():
        if not np.all(np.isfinite(audio)):
            raise AudioError(
                f"stem {name} for {folder} has non-finite samples (NaN or infinity); "
                "nothing written: the model produced them, try another model"
            )


def write_stems_atomically(
    stems: dict[str, np.ndarray], samplerate: int, folder: Path, fmt: OutputFormat
) -> list[Path]:
    """Write every stem or none: all go to temporary files first, then are renamed into place.

    The temporaries are ``.<stem>.<pid>.<random>.<ext>.partial`` in ``folder``, where the next
    write there removes those whose process is gone (a run killed with SIGKILL leaves them).
    Finished files get the usual mode (0666 less the umask).
    """
    for name in stems:
        check_stem_name(name)
    check_finite(stems, folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AudioError(f"cannot create {folder}: {exc.strerror}; choose another output directory (-o)") from None
    remove_stale_partials(folder)
    pending: list[tuple[Path, Path]] = []
    try:
        with _write_errors(folder):
            for name, audio in stems.items():
                tmp = _new_partial(folder, name, fmt.extension)
                pending.append((tmp, folder / f"{name}.{fmt.extension}"))
                sf.write(
                    os.fsencode(tmp),
                    prepare_for_output(audio, fmt.clip).T,
                    samplerate,
                    format=fmt.FORMATS[fmt.extension],
                    subtype=fmt.subtype,
                )
            for tmp, final in pending:
                os.replace(tmp, final)
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
    return [final for _, final in pending]


def _new_partial(folder: Path, name: str, extension: str) -> Path:
    """An empty temporary created with the default mode (mkstemp's would be 0600)."""
    path = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.{extension}{PARTIAL_SUFFIX}"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return path


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove the temporaries in ``folder`` that no running process is writing; return them."""
    removed = []
    for path in folder.glob(f".*{PARTIAL_SUFFIX}"):
        if _is_stale(path):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass  # gone meanwhile, or not ours to remove: it stays hidden and harmless
    return removed


def _is_stale(path: Path) -> bool:
    parts = path.name.split(".")  # "", stem, pid, random, ext, "partial"
    pid = int(parts[2]) if len(parts) == 6 and parts[2].isdigit() else None
    try:
        age_s = time.time() - path.stat().st_mtime
    except OSError:
        return False
    return pid is None or age_s > STALE_PARTIAL_S or not _process_alive(pid)


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # someone else's process
    except (ProcessLookupError, OverflowError):
        return False
    return True


# -- block by block: long files in bounded memory ---------------------------------------------------

BLOCK_FRAMES = 1 << 16  # 1.4 s at 48 kHz: big enough that per-block overheads vanish


@dataclass(frozen=True)
class AudioFile:
    """A checked audio file read block by block; ``frames`` is what actually decodes.

    :func:`open_audio` decodes it once (refusing damaged and truncated files before any work
    is done); every :meth:`blocks` pass then reads it again, with non-finite samples as silence.
    """

    path: Path
    samplerate: int
    channels: int
    frames: int
    non_finite: int  # samples read as silence

    def blocks(self, block_frames: int = BLOCK_FRAMES) -> Iterator[np.ndarray]:
        """Consecutive ``(channels, n)`` float32 blocks covering the file."""
        read = 0
        for block in _decode(self.path, block_frames):
            read += block.shape[1]
            silence_non_finite(block)
            yield block
        if read < self.frames:
            raise AudioError(
                f"{self.path} changed while it was read: {read} of its {self.frames} frames "
                "could be decoded the second time; nothing written, run again"
            )


def open_audio(path: str | Path, report: Callable[[str], None] | None = None) -> AudioFile:
    """Check a file as :func:`read_audio` does, decoding it once in blocks, in bounded memory."""
    path = Path(path)
    _check_file(path)
    try:
        info = sf.info(os.fsencode(path), verbose=True)
    except sf.LibsndfileError as exc:
        raise AudioError(f"{path}: not a readable audio file ({_reason(exc)}); convert it to WAV or FLAC") from None
    _check_header(path, info)
    frames = non_finite = 0
    for block in _decode(path, BLOCK_FRAMES):
        frames += block.shape[1]
        non_finite += int(np.count_nonzero(~np.isfinite(block)))
    _check_complete(path, info, frames)
    if frames == 0:
        raise AudioError(f"{path} holds no audio (0 frames)")
    if non_finite and report is not None:
        report(f"{path}: {non_finite} non-finite sample(s) (NaN or infinity) read as silence")
    return AudioFile(path, info.samplerate, info.channels, frames, non_finite)


def _decode(path: Path, block_frames: int) -> Iterator[np.ndarray]:
    """The file's ``(channels, n)`` float32 blocks; a decoding error names the file and where."""
    read = 0
    try:
        with sf.SoundFile(os.fsencode(path)) as handle:
            while True:
                block = handle.read(block_frames, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    return
                read += block.shape[0]
                yield np.ascontiguousarray(block.T)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(
            f"{path} is damaged or truncated: decoding failed after {read} frames ({_reason(exc)}); "
            "re-export or re-download it"
        ) from None


class StemWriter:
    """Stems written block by block as they become final, every stem or none.

    Each stem's float32 samples go to a hidden temporary (``.<stem>.<pid>.<random>.f32.partial``);
    :meth:`finish` encodes them into the asked format in blocks (scaled by the stem's peak for
    ``clip="rescale"``, which only the whole stem knows), each to a second temporary, and renames
    them into place together. A failure, or leaving the ``with`` block without :meth:`finish`,
    removes every temporary: no partial stem ever sits under its final name.
    """

    def __init__(self, folder: Path, names: list[str], samplerate: int, channels: int, fmt: OutputFormat):
        for name in names:
            check_stem_name(name)
        self.folder, self.names, self.samplerate, self.channels, self.fmt = folder, names, samplerate, channels, fmt
        self._raw: dict[str, tuple[Path, object]] = {}
        self._encoded: list[Path] = []
        self._peaks = dict.fromkeys(names, 0.0)
        self._made_folder = not folder.exists()
        self.frames = 0
        self.rescaled: dict[str, tuple[float, float]] = {}  # after finish: stem -> (peak, divisor) of --clip rescale

    def __enter__(self) -> StemWriter:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def _open(self) -> None:
        with _write_errors(self.folder):
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise AudioError(
                    f"cannot create {self.folder}: {exc.strerror}; choose another output directory (-o)"
                ) from None
            remove_stale_partials(self.folder)
            for name in self.names:
                path = _new_partial(self.folder, name, "f32")
                self._raw[name] = (path, None)
                self._raw[name] = (path, open(path, "wb"))  # noqa: SIM115 (closed in close())

    def __exit__(self, *exc_info) -> None:
        self.close()

    def write(self, stems: dict[str, np.ndarray]) -> None:
        """The next ``(channels, n)`` block of every stem."""
        check_finite(stems, self.folder)
        with _write_errors(self.folder):
            for name in self.names:
                block = np.asarray(stems[name], np.float32)
                if block.size:
                    self._peaks[name] = max(self._peaks[name], float(np.max(np.abs(block))))
                self._raw[name][1].write(np.ascontiguousarray(block.T).tobytes())
        self.frames += next(iter(stems.values())).shape[-1] if stems else 0

    def finish(self) -> list[Path]:
        """Encode every stem and rename them all into place; return the finished files."""
        finals = []
        with _write_errors(self.folder):
            for name in self.names:
                self._raw[name][1].close()
                encoded = _new_partial(self.folder, name, self.fmt.extension)
                self._encoded.append(encoded)
                self._encode(name, self._raw[name][0], encoded)
                finals.append(self.folder / f"{name}.{self.fmt.extension}")
            for encoded, final in zip(self._encoded, finals, strict=True):
                os.replace(encoded, final)
        self._encoded = []
        self.close()
        return finals

    def _encode(self, name: str, raw: Path, encoded: Path) -> None:
        scale = _rescale_divisor(self._peaks[name], self.fmt.clip)
        if scale is not None and scale > 1.0:
            self.rescaled[name] = (self._peaks[name], scale)
        fmt = self.fmt
        with (
            open(raw, "rb") as samples,  # read, not mapped: mapped pages would count as resident
            sf.SoundFile(
                os.fsencode(encoded),
                "w",
                self.samplerate,
                self.channels,
                fmt.subtype,
                format=fmt.FORMATS[fmt.extension],
            ) as out,
        ):
            for start in range(0, self.frames, BLOCK_FRAMES):
                count = min(BLOCK_FRAMES, self.frames - start) * self.channels
                block = np.fromfile(samples, np.float32, count).reshape(-1, self.channels)
                out.write(_fitted(block, scale, self.fmt.clip))

    def close(self) -> None:
        """Remove every temporary left (all of them unless :meth:`finish` ran)."""
        for path, handle in self._raw.values():
            if handle is not None:
                handle.close()
            path.unlink(missing_ok=True)
        for path in self._encoded:
            path.unlink(missing_ok=True)
        if self._raw and self._made_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only if empty: a failed track leaves no folder behind
        self._raw, self._encoded = {}, []


@contextlib.contextmanager
def _write_errors(folder: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise AudioError(
            f"cannot write stems to {folder}: {exc.strerror or exc}; "
            "choose another output directory (-o) or free some space"
        ) from None
    except sf.LibsndfileError as exc:
        raise AudioError(f"cannot encode stems in {folder}: {exc}") from None
