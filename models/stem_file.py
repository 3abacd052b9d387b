"""NI STEM files (``.stem.mp4``), the stems format Traktor (2.9 on) and Mixxx (2.6 on) play.

An MP4 with five stereo audio streams in a fixed order — the master (what an ordinary player or a
CDJ plays: only its track is enabled), then drums, bass, other, vocals — and a ``moov/udta/stem``
box holding the JSON manifest: ``version`` 1, ``mastering_dsp`` (the compressor and limiter a
stem player applies to the summed stems) and the four stems' ``name`` and ``color``. The field
names and NI's own default values come from NI's public stem creator script; Mixxx reads the
same fields (``src/track/steminfoimporter.cpp``).

PyAV (ffmpeg's libraries, bundled in its wheel) encodes and muxes; mutagen carries the input's
tags over; ``models.mp4_boxes`` writes the manifest box. ALAC (lossless, 24-bit) is the
default, AAC an option for smaller files.
"""

from __future__ import annotations

import errno
import fractions
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stemdeck.models.mp4_boxes import BoxError, put_udta_box, read_udta_box

NI_STEMS = ("drums", "bass", "other", "vocals")
STREAMS = ("master", *NI_STEMS)
CODECS = ("alac", "aac")
# the rates AAC's sampling-frequency index can name (ffmpeg's encoder refuses others)
AAC_RATES_HZ = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
ALAC_BITS = (16, 24)  # what ffmpeg's ALAC codes; 24 (the default) keeps a 16- or 24-bit master exact
ALAC_FORMATS = {16: "s16p", 24: "s32p"}  # s32p: ALAC codes its top 24 bits
AAC_BIT_RATE = 320_000  # per stereo stream
ENCODE_BLOCK_FRAMES = 4096  # ALAC's frame; the five streams are fed in lockstep so the muxer interleaves them
# gui/theme.py's STEM_COLOURS (models must not import the GUI; a test checks they agree).
STEM_COLOURS = {"drums": "#f5a623", "bass": "#4a90e2", "other": "#7ed321", "vocals": "#e94b8a"}
# NI stem creator's defaults, both effects off: the master stays the input as it is, and stems
# played together sum to it with no dynamics added.
MASTERING_DSP = {
    "compressor": {
        "enabled": False,
        "input_gain": 0.5,
        "output_gain": 0.5,
        "threshold": 0,
        "dry_wet": 0,
        "attack": 0.01,
        "release": 0.1,
        "ratio": 2,
        "hp_cutoff": 300,
    },
    "limiter": {"enabled": False, "threshold": 0, "ceiling": 0, "release": 0.05},
}
MANIFEST_VERSION = 1  # the version Traktor writes and Mixxx accepts
# Sizes read from an untrusted file, checked before anything is allocated from them.
MAX_MANIFEST_BYTES = 64 * 1024  # NI's manifest is about 600 bytes
MAX_STREAMS = 16  # five audio streams, a cover picture, and room for a chapter or data track
MAX_DURATION_S = 3600  # five float32 stereo streams of an hour at 48 kHz: about 7 GB in memory
MAX_NAME_CHARS = 64
LENGTH_SLACK_FRAMES = 8192  # streams whose lengths differ by more are not stems of one track
MAX_COVER_BYTES = 16 * 1024**2


class StemFileError(ValueError):
    """A stem file that cannot be written or read; the message names the file and the problem."""


def check_rate(path: Path, codec: str, samplerate: int) -> None:
    """Stems keep the input's rate; AAC has only its standard rates up to 96 kHz. Refused before
    the separation, not at the encoder after it (as :meth:`models.audio.OutputFormat.check_rate`
    does for MP3)."""
    if codec == "aac" and samplerate not in AAC_RATES_HZ:
        raise StemFileError(
            f"{path}: AAC holds audio up to 96 kHz at its standard rates, not {samplerate} Hz; "
            "use --codec alac (lossless, any rate)"
        )


@dataclass(frozen=True)
class StemTags:
    """The tags a stem file carries over from its input (what DJ software shows)."""

    title: str | None = None
    artist: str | None = None
    album: str | None = None
    cover: bytes | None = None
    cover_mime: str | None = None  # "image/jpeg" or "image/png"


def is_stem_file(path: str | Path) -> bool:
    """Named as NI STEM files are (``.stem.mp4``, or ``.stem.m4a`` as some tools write them), or
    an MP4 by any name holding the ``stem`` box (what Mixxx probes for)."""
    name = Path(path).name.lower()
    if name.endswith((".stem.mp4", ".stem.m4a")):
        return True
    if not name.endswith((".mp4", ".m4a")):
        return False
    try:
        return read_udta_box(Path(path), b"stem") is not None
    except (BoxError, OSError):
        return False


# -- the four NI stems ----------------------------------------------------------------------------


def ni_stems(stems: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str | None]:
    """Any model's stems mapped onto NI's four: drums, bass and vocals by name, everything else
    (a 6-stem model's guitar and piano) summed into other; a slot the model lacks is silence.
    Returns the four stems and a note saying what was summed or missing (None when nothing was)."""
    if not stems:
        raise ValueError("no stems to write")
    silence = np.zeros_like(next(iter(stems.values())), dtype=np.float32)
    mapped = {name: np.asarray(stems[name], np.float32) for name in ("drums", "bass", "vocals") if name in stems}
    extra = [name for name in stems if name not in mapped]
    mapped["other"] = sum((np.asarray(stems[name], np.float32) for name in extra), silence.copy())
    missing = [name for name in ("drums", "bass", "vocals") if name not in mapped]
    notes = []
    if [name for name in extra if name != "other"]:
        notes.append(f"{' + '.join(extra)} summed into other (an NI STEM file holds four stems)")
    if missing:
        notes.append(f"the model has no {', '.join(missing)}: silent in the stem file")
    return {name: mapped.get(name, silence) for name in NI_STEMS}, "; ".join(notes) or None


def stem_manifest(names: Mapping[str, str] | None = None) -> dict:
    """The ``stem`` box's JSON: NI's field names, stemdeck's colours, names Title-cased as NI's."""
    names = names or {}
    stems = [{"name": names.get(stem, stem.capitalize()), "color": STEM_COLOURS[stem]} for stem in NI_STEMS]
    return {"version": MANIFEST_VERSION, "mastering_dsp": MASTERING_DSP, "stems": stems}


# -- writing --------------------------------------------------------------------------------------


def write_stem_file(
    path: str | Path,
    master: np.ndarray,
    stems: Mapping[str, np.ndarray],
    samplerate: int,
    *,
    codec: str = "alac",
    tags: StemTags | None = None,
    bits: int = 24,
) -> str | None:
    """Write an NI STEM file at ``path`` (in place: ``write_stem_track`` is the atomic one).
    ``master`` and each stem are ``(channels, frames)`` float, mono or stereo, all one length;
    ``stems`` may be any model's (see ``ni_stems``). Returns the note about summed or missing
    stems, or None. ``bits`` (16 or 24) is ALAC's sample size (AAC takes none)."""
    with StemFileWriter(path, samplerate, codec, bits) as writer:
        writer.write(master, stems)
        return writer.finish(tags)


class StemFileWriter:
    """The five streams encoded block by block as the stems arrive (memory does not grow with
    the track), then the tags and the manifest box; use it in a ``with`` block."""

    def __init__(self, path: str | Path, samplerate: int, codec: str = "alac", bits: int = 24):
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {codec!r}")
        if bits not in ALAC_BITS:
            raise ValueError(f"ALAC holds 16 or 24-bit samples, not {bits!r}")
        self.path, self.samplerate, self.codec, self.bits = Path(path), int(samplerate), codec, bits
        self.frames = 0
        self.note: str | None = None
        self._container = self._streams = None

    def __enter__(self) -> StemFileWriter:
        import av

        # the movie's timescale in frames, not ffmpeg's milliseconds: each track's edit list then
        # gives its length to the frame, so players that honour it (AAC's padding past the end
        # is not audio) end each stream where the song ends, not up to 44 frames off
        options = {"movie_timescale": str(self.samplerate)}
        self._container = av.open(str(self.path), "w", format="mp4", options=options)
        self._streams = [_add_stream(self._container, self.codec, self.samplerate, name, self.bits) for name in STREAMS]
        return self

    def __exit__(self, *exc_info) -> None:
        if self._container is not None:  # left without finish(): close what there is
            self._container.close()
            self._container = None

    def write(self, master: np.ndarray, stems: Mapping[str, np.ndarray]) -> None:
        """The next ``(channels, n)`` frames of the master and of every stem."""
        four, self.note = ni_stems(stems)
        arrays = [_stereo(name, audio) for name, audio in zip(STREAMS, (master, *four.values()), strict=True)]
        lengths = {audio.shape[-1] for audio in arrays}
        if len(lengths) != 1:
            raise ValueError(f"master and stems must be one length, got {sorted(lengths)} frames")
        frames = lengths.pop()
        for start in range(0, frames, ENCODE_BLOCK_FRAMES):  # the streams in lockstep: interleaved
            for stream, audio in zip(self._streams, arrays, strict=True):
                self._encode(stream, audio[:, start : start + ENCODE_BLOCK_FRAMES], self.frames + start)
        self.frames += frames

    def _encode(self, stream, block: np.ndarray, pts: int) -> None:
        import av

        samples = _encoder_samples(block, stream.format.name)
        frame = av.AudioFrame.from_ndarray(samples, format=stream.format.name, layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = self.samplerate, pts, fractions.Fraction(1, self.samplerate)
        self._container.mux(stream.encode(frame))

    def finish(self, tags: StemTags | None = None) -> str | None:
        """Flush the encoders, close the file, add the tags and the ``stem`` box; returns the note."""
        if self.frames == 0:
            raise ValueError("no audio was written")
        for stream in self._streams:
            self._container.mux(stream.encode(None))
        self._container.close()
        self._container = None
        if tags is not None:
            _write_tags(self.path, tags)
        put_udta_box(self.path, b"stem", json.dumps(stem_manifest(), separators=(",", ":")).encode())
        return self.note


def write_stem_track(
    target: Path,
    master_blocks: Iterable[np.ndarray],
    stem_blocks: Iterable[Mapping[str, np.ndarray]],
    samplerate: int,
    *,
    codec: str = "alac",
    tags: StemTags | None = None,
    force: bool = False,
    bits: int = 24,
) -> str | None:
    """``stemdeck separate --format stem``: the stems as they come (each block any length) with
    the master read alongside, written to a hidden temporary beside ``target`` and renamed onto
    it only when complete; an existing ``target`` is kept unless ``force``. Returns the note."""
    from stemdeck.models.audio import remove_stale_partials

    if target.exists() and not force:
        raise StemFileError(f"{target} already exists; use --force to overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent)  # what a killed run left here
    partial = _new_partial(target)
    try:
        with StemFileWriter(partial, samplerate, codec, bits) as writer:
            master = _FrameQueue(iter(master_blocks))
            for stems in stem_blocks:
                frames = next(iter(stems.values())).shape[-1]
                writer.write(master.take(frames), stems)
            note = writer.finish(tags)
        os.replace(partial, target)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StemFileError(f"cannot write {target}: {exc.strerror}; free some space or choose another -o") from None
    finally:
        partial.unlink(missing_ok=True)
    return note


def _new_partial(target: Path) -> Path:
    """``.<name>.<pid>.<random>.mp4.partial``, as models.audio names its temporaries (so its
    clean-up knows a dead run's), created with the default mode (0666 less the umask)."""
    name = target.name.removesuffix(".stem.mp4").replace(".", "_")
    path = target.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}.mp4.partial")
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return path


class _FrameQueue:
    """The master's blocks, handed out in the lengths the stems arrive in."""

    def __init__(self, blocks: Iterator[np.ndarray]):
        # as many channels as the master's blocks: a mono song's master is (1, n)
        self.blocks, self.pending = blocks, None

    def take(self, frames: int) -> np.ndarray:
        parts = [] if self.pending is None else [self.pending]
        have = parts[0].shape[-1] if parts else 0
        while have < frames:
            block = next(self.blocks, None)
            if block is None:
                raise ValueError(f"the master ended {frames - have} frames before the stems")
            parts.append(np.asarray(block, np.float32))
            have += block.shape[-1]
        if not parts:
            return np.zeros((1, 0), np.float32)
        joined = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
        self.pending = joined[:, frames:]
        return joined[:, :frames]


def _stereo(name: str, audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] < 1:
        raise ValueError(f"{name} must be (channels, frames) with 1 or 2 channels, got shape {audio.shape}")
    audio = np.repeat(audio, 2, axis=0) if audio.shape[0] == 1 else audio
    return np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)


def _add_stream(container, codec: str, samplerate: int, name: str, bits: int):
    stream = container.add_stream(codec, rate=samplerate, layout="stereo")
    if codec == "alac":
        stream.format = ALAC_FORMATS[bits]
    else:
        stream.bit_rate = AAC_BIT_RATE
        stream.codec_context.options = {"aac_coder": "fast"}  # 2x faster than twoloop, and closer here
    stream.metadata["handler_name"] = name  # the track's name in MP4 tools (ffprobe, MP4Box)
    return stream


def _encoder_samples(block: np.ndarray, sample_format: str) -> np.ndarray:
    if sample_format in ("s16p", "s32p"):
        bits = 16 if sample_format == "s16p" else 24
        full_scale = 2 ** (bits - 1)
        quantised = np.clip(np.round(block * full_scale), -full_scale, full_scale - 1).astype(np.int32)
        return np.ascontiguousarray(quantised.astype(np.int16) if bits == 16 else quantised << 8)
    return np.ascontiguousarray(np.clip(block, -1.0, 1.0), dtype=np.float32)


# -- tags -----------------------------------------------------------------------------------------


def read_tags(path: str | Path) -> StemTags:
    """Title, artist, album and front cover of a FLAC, Ogg, MP3 (ID3) or MP4 file; empty tags
    for anything else or anything unreadable (tags are a courtesy, never a reason to fail)."""
    import mutagen

    try:
        audio = mutagen.File(str(path))
    except Exception:  # noqa: BLE001 - mutagen raises many kinds for a damaged or unknown file
        return StemTags()
    if audio is None or audio.tags is None:
        return StemTags()
    try:
        return _tags_of(audio)
    except Exception:  # noqa: BLE001 - an odd tag is dropped, the stem file is written anyway
        return StemTags()


def _tags_of(audio) -> StemTags:
    from mutagen.id3 import ID3
    from mutagen.mp4 import MP4Tags

    tags = audio.tags
    if isinstance(tags, ID3):
        text = {key: str(tags[frame].text[0]) for key, frame in _ID3_FRAMES.items() if frame in tags}
        pictures = [(frame.data, frame.mime, frame.type) for frame in tags.getall("APIC")]
    elif isinstance(tags, MP4Tags):
        text = {key: str(tags[atom][0]) for key, atom in _MP4_ATOMS.items() if tags.get(atom)}
        pictures = [(bytes(cover), _MP4_MIME.get(cover.imageformat), 3) for cover in tags.get("covr", [])]
    else:  # Vorbis comments: FLAC, Ogg Vorbis, Opus
        text = {key: tags[key][0] for key in ("title", "artist", "album") if tags.get(key)}
        pictures = [(p.data, p.mime, p.type) for p in _vorbis_pictures(audio)]
    cover, mime = _front_cover(pictures)
    return StemTags(text.get("title"), text.get("artist"), text.get("album"), cover, mime)


_ID3_FRAMES = {"title": "TIT2", "artist": "TPE1", "album": "TALB"}
_MP4_ATOMS = {"title": "\xa9nam", "artist": "\xa9ART", "album": "\xa9alb"}
_MP4_MIME = {13: "image/jpeg", 14: "image/png"}  # MP4Cover.FORMAT_JPEG, FORMAT_PNG


def _vorbis_pictures(audio) -> list:
    import base64

    from mutagen.flac import Picture

    if hasattr(audio, "pictures"):  # FLAC's own picture blocks
        return list(audio.pictures)
    return [Picture(base64.b64decode(data)) for data in audio.tags.get("metadata_block_picture", [])]


def _front_cover(pictures: list[tuple[bytes, str | None, int]]) -> tuple[bytes | None, str | None]:
    """The front cover (picture type 3) if any, else the first picture; JPEG or PNG only (the
    two MP4 holds), and none beyond ``MAX_COVER_BYTES``."""
    usable = [(data, mime) for data, mime, _ in sorted(pictures, key=lambda p: p[2] != 3) if data]
    for data, mime in usable:
        mime = _sniff_image(data) or mime
        if mime in ("image/jpeg", "image/png") and len(data) <= MAX_COVER_BYTES:
            return bytes(data), mime
    return None, None


def _sniff_image(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return None


def _write_tags(path: Path, tags: StemTags) -> None:
    from mutagen.mp4 import MP4, MP4Cover

    mp4 = MP4(str(path))
    if mp4.tags is None:
        mp4.add_tags()
    for key, atom in _MP4_ATOMS.items():
        value = getattr(tags, key)
        if value:
            mp4.tags[atom] = [value]
    if tags.cover:
        kind = MP4Cover.FORMAT_PNG if tags.cover_mime == "image/png" else MP4Cover.FORMAT_JPEG
        mp4.tags["covr"] = [MP4Cover(tags.cover, imageformat=kind)]
    mp4.save()


# -- reading --------------------------------------------------------------------------------------


def read_stem_manifest(path: str | Path) -> dict:
    """The ``stem`` box's JSON, checked: version, ``mastering_dsp``, four named, coloured stems."""
    path = Path(path)
    try:
        payload = read_udta_box(path, b"stem")
    except BoxError as exc:
        raise StemFileError(f"{path}: not a readable MP4 file ({exc})") from None
    except OSError as exc:
        raise StemFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if payload is None:
        raise StemFileError(f"{path}: no moov/udta/stem box: an MP4 file, but not an NI STEM file")
    if len(payload) > MAX_MANIFEST_BYTES:
        raise StemFileError(f"{path}: its stem box is {len(payload)} bytes (a manifest is under {MAX_MANIFEST_BYTES})")
    try:
        manifest = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StemFileError(f"{path}: its stem box is not valid JSON ({exc})") from None
    _check_manifest(path, manifest)
    return manifest


def _check_manifest(path: Path, manifest) -> None:
    if not isinstance(manifest, dict):
        raise StemFileError(f"{path}: its stem box holds {type(manifest).__name__}, not a JSON object")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StemFileError(f"{path}: its stem box has no valid version (got {version!r:.40})")
    if not isinstance(manifest.get("mastering_dsp", {}), dict):
        raise StemFileError(f"{path}: its stem box's mastering_dsp is not an object")
    stems = manifest.get("stems")
    if not isinstance(stems, list) or len(stems) != len(NI_STEMS):
        count = len(stems) if isinstance(stems, list) else "no"
        raise StemFileError(f"{path}: its stem box lists {count} stems, an NI STEM file has {len(NI_STEMS)}")
    for index, stem in enumerate(stems):
        name = stem.get("name") if isinstance(stem, dict) else None
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise StemFileError(f"{path}: stem {index + 1} in its stem box has no name of 1-{MAX_NAME_CHARS} chars")


def read_stem_file(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """``(master, {drums, bass, other, vocals}, samplerate)``, each ``(2, frames)`` float32, the
    exact length the writer was given (AAC's encoder delay and padding trimmed by the packets'
    timestamps and durations). Stems are keyed by their NI position whatever the manifest names
    them. Any problem is one ``StemFileError`` line naming the file."""
    path = Path(path)
    read_stem_manifest(path)
    import av

    try:
        with av.open(str(path)) as container:
            streams = _audio_streams(path, container)
            decoded = _decode_all(path, container, streams)
    except av.FFmpegError as exc:
        raise StemFileError(f"{path}: cannot decode it ({exc.strerror or exc})") from None
    master, *stems = _aligned(path, decoded)
    return master, dict(zip(NI_STEMS, stems, strict=True)), int(streams[0].rate)


def _audio_streams(path: Path, container) -> list:
    if len(container.streams) > MAX_STREAMS:
        raise StemFileError(f"{path}: {len(container.streams)} streams (an NI STEM file has 5 audio streams)")
    streams = list(container.streams.audio)
    if len(streams) != len(STREAMS):
        raise StemFileError(f"{path}: {len(streams)} audio streams, an NI STEM file has {len(STREAMS)}")
    for index, stream in enumerate(streams):
        channels = stream.codec_context.channels
        if channels != 2:
            raise StemFileError(
                f"{path}: stream {index} ({STREAMS[index]}) has {channels} channel(s); NI STEM streams are stereo"
            )
        if stream.rate != streams[0].rate or not 8_000 <= (stream.rate or 0) <= 384_000:
            raise StemFileError(f"{path}: stream {index} runs at {stream.rate} Hz, the master at {streams[0].rate}")
    return streams


def _decode_all(path: Path, container, streams: list) -> list[tuple[int, list[tuple[int, np.ndarray]]]]:
    """Per stream: the end its packets declare (in frames) and its decoded ``(start, samples)``."""
    rate = int(streams[0].rate)
    cap = MAX_DURATION_S * rate
    ends = [0] * len(streams)
    blocks: list[list[tuple[int, np.ndarray]]] = [[] for _ in streams]
    decoded = [0] * len(streams)
    for packet in container.demux(*streams):
        index = streams.index(packet.stream)
        if packet.pts is not None and packet.duration:
            ends[index] = max(ends[index], _frames(packet.pts + packet.duration, packet.time_base, rate))
        for frame in packet.decode():
            start = decoded[index] if frame.pts is None else _frames(frame.pts, frame.time_base, rate)
            samples = _float_samples(frame)
            decoded[index] = start + samples.shape[-1]
            if max(decoded[index], ends[index]) > cap:
                raise StemFileError(f"{path}: longer than {MAX_DURATION_S / 60:g} minutes, the most stemdeck reads")
            blocks[index].append((start, samples))
    return [(end or count, found) for end, count, found in zip(ends, decoded, blocks, strict=True)]


def _frames(timestamp: int, time_base, rate: int) -> int:
    return int(round(timestamp * time_base * rate))


def _float_samples(frame) -> np.ndarray:
    """``(2, n)`` float32 from any of ffmpeg's sample formats (ALAC's s32p exactly: 24-bit
    values fit float32's mantissa)."""
    samples = frame.to_ndarray()
    if not frame.format.is_planar:
        samples = samples.reshape(-1, 2).T
    if samples.dtype.kind == "i":
        samples = samples.astype(np.float64) / float(2 ** (8 * samples.dtype.itemsize - 1))
    return samples.astype(np.float32)


def _aligned(path: Path, decoded: list[tuple[int, list[tuple[int, np.ndarray]]]]) -> list[np.ndarray]:
    """Each stream laid at its timestamps and cut to the master's length; a stream shorter
    than what its packets declared, or of another length than the master, is refused."""
    length = decoded[0][0]
    out = []
    for index, (end, blocks) in enumerate(decoded):
        covered = max((start + block.shape[-1] for start, block in blocks), default=0)
        if covered < end or abs(end - length) > LENGTH_SLACK_FRAMES or length <= 0:
            raise StemFileError(
                f"{path}: stream {index} ({STREAMS[index]}) decodes {covered} of {end} frames "
                f"(the master has {length}): the file is cut short or damaged"
            )
        audio = np.zeros((2, length), np.float32)
        for start, block in blocks:
            skip = max(0, -start)  # AAC's priming (before 0) and padding (past the end) dropped
            take = min(block.shape[-1], length - start)
            if take > skip:
                audio[:, start + skip : start + take] = block[:, skip:take]
        out.append(audio)
    return out
