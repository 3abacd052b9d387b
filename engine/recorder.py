"""The recorder's writer: a thread that drains the callback's record ring into a WAV or FLAC file.

What is written is what the callback played, block for block (the master output after mute,
solo, gain and the crossfader), so the file equals what the listener heard. The writer never
makes the callback wait: if it falls a whole ring behind, the callback drops blocks and counts
them, and the result says how many. A file that cannot be written (disk full, folder gone) ends
the take with one logged line; playback goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from stemdeck.engine.audio.record import DROPPED, TAKE_SEEN, TAKE_START, WRITTEN, RecordBuffers

log = logging.getLogger("stemdeck.recorder")

# extension -> (soundfile format, subtype): WAV keeps the float samples as they are (bit for bit);
# FLAC stores integers, 24 bits being its finest
RECORD_FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24")}


@dataclass(frozen=True)
class RecorderConfig:
    poll_s: float = 0.02  # how often the writer drains the ring
    acknowledge_timeout_s: float = 1.0  # how long a start or stop waits for the callback's next block


@dataclass(frozen=True)
class Take:
    """A finished recording."""

    path: Path
    frames: int
    dropped_frames: int  # blocks the writer had no room for (it fell a whole ring behind)
    error: str | None = None  # why the take ended early, if it did


def record_format(path: str | Path) -> tuple[str, str]:
    """The file format for ``path``'s extension, or one line saying what to name it."""
    suffix = Path(path).suffix.lower()
    if suffix not in RECORD_FORMATS:
        raise ValueError(f"cannot record to {Path(path).name}: stemdeck records WAV or FLAC; name it .wav or .flac")
    return RECORD_FORMATS[suffix]


class Recorder:
    """One take at a time from the engine's record ring; ``start`` then ``stop``."""

    def __init__(self, buffers: RecordBuffers, samplerate: int, config: RecorderConfig = RecorderConfig()):
        self.buffers, self.samplerate, self.config = buffers, samplerate, config
        self._serial = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._file: sf.SoundFile | None = None
        self._path: Path | None = None
        self._frames = 0
        self._error: str | None = None

    @property
    def recording(self) -> bool:
        return self._thread is not None

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def dropped_frames(self) -> int:
        """Frames of this take the callback had to drop so far."""
        counters = self.buffers.counters
        return int(counters[DROPPED]) if self.recording and counters[TAKE_SEEN] == self._serial else 0

    def start(self, path: str | Path, callback_running: bool) -> None:
        """Open ``path`` (refusing an existing file or another format) and arm the callback."""
        if self.recording:
            raise RuntimeError("a recording is under way; stop it first")
        path = Path(path)
        fmt, subtype = record_format(path)
        if path.exists():
            raise ValueError(f"{path} exists; choose another name (stemdeck never records over a file)")
        channels = self.buffers.ring.shape[0]
        try:
            self._file = sf.SoundFile(str(path), "x", self.samplerate, channels, subtype, format=fmt)
        except (OSError, sf.LibsndfileError) as exc:
            raise ValueError(f"cannot record to {path}: {exc}") from None
        self._path, self._frames, self._error = path, 0, None
        self._serial += 1
        self.buffers.armed[0] = self._serial
        start = self._acknowledged(self._serial, callback_running)
        self.buffers.read[0] = start
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stemdeck-recorder", daemon=True)
        self._thread.start()

    def stop(self, callback_running: bool) -> Take | None:
        """Disarm, wait for the callback to see it, write what is left and close the file."""
        if not self.recording:
            return None
        dropped = self.dropped_frames
        self.buffers.armed[0] = 0
        self._acknowledged(0, callback_running)
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._close()
        return Take(self._path, self._frames, dropped, self._error)

    def _acknowledged(self, serial: int, callback_running: bool) -> int:
        """Where the take starts in the ring, once the callback has seen ``serial``. Without a
        running callback (headless, or the stream stopped) nothing else writes the ring, so the
        next block (if any) starts it: the take starts at what is written now."""
        counters = self.buffers.counters
        deadline = time.perf_counter() + self.config.acknowledge_timeout_s
        while callback_running and counters[TAKE_SEEN] != serial and time.perf_counter() < deadline:
            time.sleep(0.001)
        return int(counters[TAKE_START]) if counters[TAKE_SEEN] == serial else int(counters[WRITTEN])

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain()
            self._stop.wait(self.config.poll_s)
        self._drain()

    def _drain(self) -> None:
        """Write what the callback has put in the ring since the last drain."""
        buffers = self.buffers
        ring, capacity = buffers.ring, buffers.ring.shape[1]
        read, written = int(buffers.read[0]), int(buffers.counters[WRITTEN])
        if self._error is not None:  # the file is gone: make room, so the callback counts no drops
            buffers.read[0] = written
            return
        while read < written and self._error is None:
            at = read % capacity
            count = min(written - read, capacity - at)
            self._write(ring[:, at : at + count])
            read += count
            buffers.read[0] = read  # room for the callback only once the frames are in the file

    def _write(self, block: np.ndarray) -> None:
        if self._file is None:
            return
        try:
            self._file.write(np.ascontiguousarray(block.T))
            self._frames += block.shape[1]
        except (OSError, sf.LibsndfileError, RuntimeError) as exc:
            self._error = f"recording to {self._path} stopped: {exc}"
            log.warning("stemdeck: %s; playing on", self._error)

    def _close(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.close()
        except (OSError, sf.LibsndfileError, RuntimeError) as exc:
            self._error = self._error or f"recording to {self._path} could not be finished: {exc}"
            log.warning("stemdeck: %s", self._error)
