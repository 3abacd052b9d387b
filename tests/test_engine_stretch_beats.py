"""The beat tracker's Numba kernels come from Numba's on-disk cache: librosa 0.11 compiles one of
them with the cache off, which every process paid for (6.6 s on 2 cores) before its first search."""

import os
from pathlib import Path

from stemdeck.engine.stretch.beats import import_beat_tracker


def test_librosas_beat_kernel_compiled_without_a_cache_is_kept_in_numbas_disk_cache():
    beat = import_beat_tracker()
    folders = [Path(beat.__file__).parent / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        folders += list(Path(os.environ["NUMBA_CACHE_DIR"]).rglob("librosa*"))
    index = [path for folder in folders for path in folder.glob("beat.__beat_local_score-*.nbi")]
    assert index, f"no cache index for librosa.beat.__beat_local_score in {folders}"
    assert import_beat_tracker() is beat
