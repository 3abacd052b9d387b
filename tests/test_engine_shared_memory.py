"""A track too long for the shared memory (``/dev/shm``, RAM in a file system of fixed size) is
refused in one line, where the first write to its stems killed the process with SIGBUS (exit 135):
a 60-minute mix's track and stems take 6.4 GB, and a laptop with 8 GB of RAM gives /dev/shm 4."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from stemdeck.engine.config import EngineConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.worker import process
from stemdeck.engine.worker.process import SHM_FOLDER, SharedBlock, SharedMemoryFull
from stemdeck.models.nets.passthrough import PassThrough

SR = 44100
ROOT = Path(__file__).resolve().parent.parent


def _our_segments() -> set[str]:
    return {path.name for path in SHM_FOLDER.glob(f"stemdeck-{os.getpid()}-*")}


def _full_at(monkeypatch, limit_bytes: int) -> None:
    """posix_fallocate as a /dev/shm with ``limit_bytes`` left answers it."""
    reserve = os.posix_fallocate

    def limited(fd, offset, length):
        if length > limit_bytes:
            raise OSError(errno.ENOSPC, "No space left on device")
        return reserve(fd, offset, length)

    monkeypatch.setattr(process.os, "posix_fallocate", limited)


def test_a_block_larger_than_what_is_free_is_refused_and_leaves_no_segment(monkeypatch):
    before = _our_segments()
    _full_at(monkeypatch, 1 << 20)
    with pytest.raises(SharedMemoryFull) as refused:
        SharedBlock({"stems": ((4, 2, SR * 10), "float32")})
    said = str(refused.value)
    assert said.startswith("not enough shared memory for a block: 13 MB needed, ")
    assert f"free in {SHM_FOLDER}; load a shorter track, close other programs, or enlarge it" in said
    assert _our_segments() == before  # unlinked: nothing left in /dev/shm
    small = SharedBlock({"track": ((2, 1024), "float32")})  # what fits is made as before
    assert small.arrays["track"].shape == (2, 1024) and not small.arrays["track"].any()
    small.close()


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_the_deck_refuses_a_track_whose_stems_do_not_fit_and_plays_the_next(monkeypatch, worker):
    """Neither the track's block nor its stems' stays behind, and a track that fits loads after."""
    config = EngineConfig(worker=worker, cache_stems=False, beat_tracking=False)
    with Engine(PassThrough(), config) as engine:
        before = _our_segments()
        _full_at(monkeypatch, 30 * 2**20)  # the track's 21 MB fit, its stems' 85 MB do not
        with pytest.raises(SharedMemoryFull) as refused:
            engine.load_array(np.zeros((2, 60 * SR), np.float32))
        assert str(refused.value).startswith("not enough shared memory for a 1:00 track and its stems: 101 MB needed")
        assert _our_segments() == before
        track = (0.1 * np.random.default_rng(0).standard_normal((2, 3 * SR))).astype(np.float32)
        engine.load_array(track)
        assert engine.wait_separated(track.shape[-1], timeout_s=60)
        stems = engine._deck_buffers.stems
        assert np.allclose(stems.sum(axis=0), track, atol=1e-5)  # the pass-through's fractions add up


SMALL_SHM_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from stemdeck.engine.config import EngineConfig
    from stemdeck.engine.engine import Engine
    from stemdeck.models.nets.passthrough import PassThrough

    if __name__ == "__main__":
        config = EngineConfig(worker="process", cache_stems=False, beat_tracking=False)
        with Engine(PassThrough(), config) as engine:
            try:
                engine.load_array(np.zeros((2, 60 * 44100), np.float32))
            except ValueError as exc:
                print(exc)
            track = np.full((2, 5 * 44100), 0.1, np.float32)
            engine.load_array(track)
            print("short track separated:", engine.wait_separated(track.shape[-1], timeout_s=60))
    """
)


def _can_mount_a_small_shm() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=16m tmpfs /dev/shm"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


def test_a_real_16_mb_dev_shm_refuses_a_minute_in_one_line_and_plays_5_seconds(tmp_path):
    """The engine in a mount namespace whose /dev/shm is a 16 MB tmpfs: before, exit 135 (SIGBUS)."""
    if not _can_mount_a_small_shm():
        pytest.skip("this machine lets no process mount a tmpfs in a mount namespace (unshare -m)")
    script = tmp_path / "small_shm.py"
    script.write_text(SMALL_SHM_SCRIPT)
    command = f"mount -t tmpfs -o size=16m tmpfs /dev/shm && exec {sys.executable} {script}"
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines == [
        "not enough shared memory for a 1:00 track and its stems: 101 MB needed, 16 MB free in /dev/shm; "
        "load a shorter track, close other programs, or enlarge it (sudo mount -o remount,size=1G /dev/shm)",
        "short track separated: True",
    ], result.stderr[-2000:]
