"""A library to separate: the audio files under folders, where each one's stems go, and a
manifest of what is done, so that a run skips what an earlier one finished and resumes after
an interruption.

Files are known by their content (BLAKE2b of their bytes, streamed), not by their name: a file
renamed or moved is not separated again, a file whose audio changed is. The manifest sits in
the output folder (``.stemdeck-library.sqlite``) and is written by one process only, the one
that plans the work (the workers, local or on a cluster, only write stems).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MANIFEST_NAME = ".stemdeck-library.sqlite"
HASH_BLOCK_BYTES = 1 << 20
# What libsndfile (stemdeck's reader, models.audio.open_audio) decodes, by file extension.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".w64", ".rf64", ".caf"}
    | {".au", ".snd", ".voc"}  # libsndfile's too (a folder of them was skipped without a word)
)
# Audio that libsndfile cannot read: counted and named, never silently ignored.
OTHER_AUDIO_EXTENSIONS = frozenset(
    {".m4a", ".aac", ".alac", ".wma", ".ape", ".wv", ".mp4", ".mpc", ".dsf"}
    | {".mka", ".webm", ".m4b", ".dff", ".amr", ".ac3"}
)


@dataclass(frozen=True)
class JobOptions:
    """What a worker needs to separate one file, besides the model: the ``stemdeck separate``
    options by the names :func:`models.cli.separate_file` reads. Picklable (sent to workers)."""

    format: str = "wav"
    codec: str = "alac"
    bits: str = "24"
    clip: str = "rescale"
    stems: str | None = None
    two_stems: str | None = None
    overlap: float = 0.25
    shifts: int = 0
    segment: float | None = None
    precision: str = "auto"
    backend: str = "auto"
    force: bool = False
    memory: str = "low"  # --memory: how the worker's malloc keeps freed memory; the stems are the same
    verbose: bool = False  # -v: each file says its backend, precision and memory mode

    @classmethod
    def from_args(cls, args) -> JobOptions:
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})

    def key(self, model_name: str) -> str:
        """What makes two separations of the same audio the same: the model and every option that
        changes the stems written (``force``, ``memory`` and ``verbose`` do not; ``backend`` only
        when it is not torch)."""
        options = dataclasses.asdict(self)
        for unchanging in ("force", "memory", "verbose"):
            options.pop(unchanging)
        if options["backend"] in ("auto", "torch"):
            options.pop("backend")  # torch's stems, as before the key had a backend: earlier runs' rows still match
        return json.dumps({"model": model_name, **options}, sort_keys=True)


@dataclass(frozen=True)
class Job:
    """One file to separate: where it is, where its stems go, its content hash and length."""

    index: int
    path: Path
    folder: Path  # OUTDIR/<relative folders>/<track>; a stem file is <folder>.stem.mp4
    content: str
    seconds: float
    overwrite: bool = False  # the outputs there are the manifest's own (an earlier or interrupted run's)


# -- walking --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """The audio files to separate, each with the folder given on the command line it was found
    under (``None`` for a file named directly), and the files in formats stemdeck cannot read."""

    files: list[tuple[Path, Path | None]]
    unreadable: dict[str, int]


def find_audio(inputs: Sequence[Path], out: Path) -> Found:
    """Files as given, folders walked (sorted, hidden entries and the output folder skipped)."""
    out_real = Path(os.path.realpath(out))
    files: list[tuple[Path, Path | None]] = []
    unreadable: dict[str, int] = {}
    for item in inputs:
        if not item.is_dir():
            files.append((item, None))
            continue
        for path in _walk(item, out_real):
            suffix = path.suffix.lower()
            if suffix in AUDIO_EXTENSIONS and not path.name.lower().endswith(".stem.mp4"):
                files.append((path, item))
            elif suffix in OTHER_AUDIO_EXTENSIONS and not path.name.lower().endswith(".stem.mp4"):
                unreadable[suffix] = unreadable.get(suffix, 0) + 1
    return Found(files, unreadable)


def _walk(folder: Path, out_real: Path) -> Iterator[Path]:
    for root, dirs, names in os.walk(folder, onerror=None):
        if Path(os.path.realpath(root)) == out_real:
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                path = Path(root) / name
                if path.is_file():
                    yield path


def library_folders(found: Found, out: Path, loose_folders: dict[Path, Path]) -> dict[Path, Path]:
    """Each file's output folder: a file named directly gets ``loose_folders``' (the one-file
    rule, ``OUTDIR/<track>``); a file found in a folder keeps its place under that folder:
    ``DIR/a/b/song.wav`` goes to ``OUTDIR/a/b/song``. Where two would still meet (``song.wav``
    beside ``song.flac``, or two folders given with the same layout), a short hash of the
    input's path is added to the track name, so no output is ever written twice."""
    from stemdeck.models.track_job import _hashed, _track_name

    folders: dict[Path, Path] = {}
    for path, root in found.files:
        if root is None:
            folders[path] = loose_folders[path]
        else:
            relative = path.relative_to(root).parent
            folders[path] = out / relative / _track_name(path)
    for clash in (group for group in _groups(folders).values() if len(group) > 1):
        suffixes = [path.suffix.lower() for path in clash]
        by_suffix = len(set(suffixes)) == len(clash) and all(suffixes)  # song.wav, song.flac: song-flac
        for path, suffix in zip(clash, suffixes, strict=True):
            name = f"{_track_name(path)}-{suffix[1:]}" if by_suffix else _hashed(path, _track_name(path))
            folders[path] = folders[path].with_name(name)
    for clash in (group for group in _groups(folders).values() if len(group) > 1):  # met another's own name
        for path in clash:
            folders[path] = folders[path].with_name(_hashed(path, _track_name(path)))
    return folders


def _groups(folders: dict[Path, Path]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = {}
    for path, folder in folders.items():
        groups.setdefault(str(folder).casefold(), []).append(path)
    return groups


# -- content ----------------------------------------------------------------------------------------------


def content_hash(path: Path) -> str:
    """BLAKE2b (128 bits) of the file's bytes, read a block at a time."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def output_paths(folder: Path, names: Iterable[str], options: JobOptions) -> list[Path]:
    """The files one separation writes."""
    if options.format == "stem":
        return [folder.with_name(f"{folder.name}.stem.mp4")]
    return [folder / f"{name}.{options.format}" for name in names]


# -- the manifest ---------------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS done (
    content TEXT NOT NULL, key TEXT NOT NULL, source TEXT NOT NULL, outputs TEXT NOT NULL,
    finished_s REAL NOT NULL, PRIMARY KEY (content, key));
CREATE TABLE IF NOT EXISTS owned (path TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS seen (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER, content TEXT, seconds REAL);
"""


@dataclass(frozen=True)
class Done:
    """A finished separation: the file it was made from (as it was named then) and its outputs."""

    source: str
    outputs: list[Path]
    finished_s: float


class Manifest:
    """What the library queue finished, in SQLite in the output folder (each change one transaction:
    a run killed at any point leaves it as it was before that change).

    ``done``: (content hash, model and options) -> outputs; ``owned``: output paths the queue
    writes (an earlier or interrupted run's outputs may be overwritten, the user's own files not);
    ``seen``: each input's hash and length by its path, size, mtime and inode, so an unchanged
    library is not read again in full on every run. Paths are stored relative to the output folder.
    """

    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(out / MANIFEST_NAME, isolation_level=None, timeout=30)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _relative(self, path: Path) -> str:
        return os.path.relpath(path, self.out)

    def lookup(self, content: str, key: str) -> Done | None:
        row = self._db.execute(
            "SELECT source, outputs, finished_s FROM done WHERE content = ? AND key = ?", (content, key)
        ).fetchone()
        if row is None:
            return None
        return Done(row[0], [self.out / name for name in json.loads(row[1])], row[2])

    def owns(self, path: Path) -> bool:
        return self._db.execute("SELECT 1 FROM owned WHERE path = ?", (self._relative(path),)).fetchone() is not None

    def claim(self, outputs: Sequence[Path]) -> None:
        """Before a file is separated: its outputs are the queue's to (over)write from now on."""
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO owned VALUES (?)", [(self._relative(path),) for path in outputs]
            )

    def finish(self, content: str, key: str, source: Path, outputs: Sequence[Path]) -> None:
        """Record the separation; one of the same audio with other options whose outputs these
        overwrote no longer describes the files, and is forgotten (a rerun with those options
        would skip, keeping these stems)."""
        names = [self._relative(path) for path in outputs]
        with self._db:
            earlier = self._db.execute("SELECT key, outputs FROM done WHERE content = ? AND key != ?", (content, key))
            overwritten = [(content, other) for other, listed in earlier if set(json.loads(listed)) & set(names)]
            self._db.executemany("DELETE FROM done WHERE content = ? AND key = ?", overwritten)
            self._db.execute(
                "INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?, ?)",
                (content, key, os.fsdecode(source), json.dumps(names), time.time()),
            )

    def identify(self, path: Path) -> tuple[str, float]:
        """The file's content hash and length in seconds, read again only if the file changed."""
        stat = path.stat()
        where = os.fsdecode(os.path.realpath(path))
        row = self._db.execute("SELECT size, mtime_ns, inode, content, seconds FROM seen WHERE path = ?", (where,))
        known = row.fetchone()
        if known is not None and tuple(known[:3]) == (stat.st_size, stat.st_mtime_ns, stat.st_ino):
            return known[3], known[4]
        content, seconds = content_hash(path), audio_seconds(path)
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?, ?, ?)",
                (where, stat.st_size, stat.st_mtime_ns, stat.st_ino, content, seconds),
            )
        return content, seconds


def audio_seconds(path: Path) -> float:
    """The length its header declares (0 where there is none: the file fails later, in one line)."""
    import soundfile as sf

    try:
        info = sf.info(os.fsencode(path))
    except Exception:  # noqa: BLE001 (any unreadable file: its separation says why)
        return 0.0
    return info.frames / info.samplerate if info.samplerate > 0 else 0.0
