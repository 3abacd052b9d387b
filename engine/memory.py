"""What the deck remembers per track: hot cues, the loop and the last position, in SQLite.

A track is known by its audio content, a hash of its decoded samples (with their rate and
shape), not by its path or file bytes: the same song renamed, moved, retagged or re-encoded
losslessly keeps its cues, and the deck's engine rate (which follows the sound card) does not
change the key. Times are stored in seconds, so they survive a change of rate too.

The memory is a convenience and nothing more: a damaged, locked or unwritable database is
logged once and the deck plays on without it. Rows are plain numbers and JSON; nothing is
unpickled, and a value that is not a finite time is ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import platformdirs

from stemdeck.engine.practice import NUM_HOT_CUES

log = logging.getLogger("stemdeck.memory")
DATA_DIR_ENV = "STEMDECK_DATA_DIR"
LOCK_TIMEOUT_S = 0.1  # a database another program holds locked is given up on at once, not waited for
HASH_CHUNK_FRAMES = 1 << 20
_SCHEMA = """CREATE TABLE IF NOT EXISTS tracks (
    key TEXT PRIMARY KEY,
    cues TEXT NOT NULL,
    loop_in REAL,
    loop_out REAL,
    last_position REAL
)"""


def memory_path() -> Path:
    """``$STEMDECK_DATA_DIR/tracks.sqlite``, else in the user data folder."""
    folder = os.environ.get(DATA_DIR_ENV) or platformdirs.user_data_dir("stemdeck")
    return Path(folder) / "tracks.sqlite"


def audio_key(audio: np.ndarray, samplerate: int) -> str:
    """A track's identity: BLAKE2b of its decoded ``(channels, frames)`` samples as float32."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{samplerate}:{audio.shape}".encode())
    for channel in audio:
        for start in range(0, channel.shape[-1], HASH_CHUNK_FRAMES):
            digest.update(np.ascontiguousarray(channel[start : start + HASH_CHUNK_FRAMES], np.float32).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class TrackRecord:
    """One track's memory, in seconds."""

    cues: tuple[float | None, ...] = field(default=(None,) * NUM_HOT_CUES)
    loop_in_s: float | None = None
    loop_out_s: float | None = None
    last_position_s: float | None = None


def _time_or_none(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def _cues_from_json(text) -> tuple[float | None, ...]:
    try:
        values = json.loads(text) if isinstance(text, str) else []
    except ValueError:
        values = []
    values = values if isinstance(values, list) else []
    cues = [_time_or_none(v) for v in values[:NUM_HOT_CUES]]
    return tuple(cues + [None] * (NUM_HOT_CUES - len(cues)))


class TrackMemory:
    """Reads and writes :class:`TrackRecord` rows; every failure is one logged line, then silence."""

    def __init__(self, path: Path | None = None):
        self.path = path or memory_path()
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the GUI and MIDI threads may both ask; the audio thread never does
        self.failed: str | None = None  # why the memory is off, after a failure that will not pass
        self._said = False

    def load(self, key: str) -> TrackRecord | None:
        row = self._run("SELECT cues, loop_in, loop_out, last_position FROM tracks WHERE key = ?", (key,))
        if not row:
            return None
        cues, loop_in, loop_out, last = row[0]
        return TrackRecord(_cues_from_json(cues), _time_or_none(loop_in), _time_or_none(loop_out), _time_or_none(last))

    def save(self, key: str, record: TrackRecord) -> None:
        self._run(
            "INSERT OR REPLACE INTO tracks (key, cues, loop_in, loop_out, last_position) VALUES (?, ?, ?, ?, ?)",
            (key, json.dumps(list(record.cues)), record.loop_in_s, record.loop_out_s, record.last_position_s),
        )

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except sqlite3.Error:
                pass

    def _run(self, sql: str, parameters: tuple) -> list | None:
        with self._lock:
            if self.failed is not None:
                return None
            try:
                return self._execute(sql, parameters)
            except (sqlite3.Error, OSError) as exc:
                self._fail(exc)
                return None

    def _execute(self, sql: str, parameters: tuple) -> list:
        connection = self._connect()
        with connection:
            return connection.execute(sql, parameters).fetchall()

    def _fail(self, exc: Exception) -> None:
        """Said once. A lock held by another program may pass: later calls try again; anything
        else (a damaged file, no permission) would fail every call the same way: stop trying."""
        reason = f"{self.path}: {exc}"
        if not self._said:
            log.warning("stemdeck: track memory (hot cues, loops): %s; playing on without it", reason)
            self._said = True
        self.close()
        if not (isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)):
            self.failed = reason

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(str(self.path), timeout=LOCK_TIMEOUT_S, check_same_thread=False)
            try:
                connection.execute(_SCHEMA)
            except sqlite3.Error:
                connection.close()
                raise
            self._connection = connection
        return self._connection
