"""The beat tracker's Numba kernels come from Numba's on-disk cache: librosa 0.11 compiles one of
them with the cache off, which every process paid for (6.6 s on 2 cores) before its first search."""

import os
from pathlib import Path

import pytest

from stemdeck.engine.stretch.beats import import_beat_tracker


def test_librosas_beat_kernel_compiled_without_a_cache_is_kept_in_numbas_disk_cache():
    beat = import_beat_tracker()
    folders = [Path(beat.__file__).parent / "__pycache__"]
    if os.environ.get("NUMBA_CACHE_DIR"):
        folders += list(Path(os.environ["NUMBA_CACHE_DIR"]).rglob("librosa*"))
    index = [path for folder in folders for path in folder.glob("beat.__beat_local_score-*.nbi")]
    assert index, f"no cache index for librosa.beat.__beat_local_score in {folders}"
    assert import_beat_tracker() is beat


IMPORTS_THE_TRACKER = """
import time
from stemdeck.engine.stretch.beats import import_beat_tracker
import_beat_tracker()
print(time.time())
"""
LOCK_HELD_S = 8.0  # longer than the import takes with a warm cache (4.7 s on 2 cores, whole process)


def test_a_process_importing_the_tracker_waits_while_another_compiles_it(tmp_path):
    """Numba issue 10128: two processes compiling the tracker at once could leave a mismatched
    cache, and then every beat search crashed. The second one now waits for the first."""
    import subprocess
    import sys
    import time

    from stemdeck.engine.stretch.beats import tracker_compile_lock

    import_beat_tracker()  # a warm cache, so the child's import alone is quick
    with tracker_compile_lock():
        child = subprocess.Popen([sys.executable, "-c", IMPORTS_THE_TRACKER], stdout=subprocess.PIPE, text=True)
        time.sleep(LOCK_HELD_S)
        released_at = time.time()
    output, _ = child.communicate(timeout=120)
    assert child.returncode == 0
    assert float(output) > released_at  # it imported only after the lock was let go


@pytest.mark.parametrize("death", ["SIGSEGV", "SIGKILL"])
def test_a_crashed_beat_process_clears_the_trackers_cache_and_the_next_one_finds_the_grid(monkeypatch, capsys, death):
    """A crash (as a damaged cache makes) clears the cache; a kill (out of memory) does not."""
    import signal
    import time

    import numpy as np

    from stemdeck.engine.stretch import beats as beats_module
    from stemdeck.engine.stretch import control
    from stemdeck.engine.stretch.beats import ANALYSIS_RATE

    damaged = [Path(os.environ.get("TMPDIR", "/tmp")) / f"guf-beat.stand-in-{os.getpid()}.{n}.nbc" for n in (1, 2)]
    for path in damaged:
        path.write_bytes(b"a mismatched pair")
    monkeypatch.setattr(beats_module, "tracker_cache_files", lambda: damaged)  # the real cache stays
    control.start_beat_process()
    process = control._beat_process._process
    os.kill(process.pid, getattr(signal, death))
    process.join(10)
    mono = np.zeros(ANALYSIS_RATE * 12, np.float32)
    mono[(np.arange(0.25, 11.9, 0.5) * ANALYSIS_RATE).astype(int)] = 1.0  # clicks at 120 BPM
    started = time.monotonic()
    found = control.search_beats(mono)
    assert found is not None and abs(found.bpm - 120.0) < 1.2, found
    assert time.monotonic() - started < 120
    if death == "SIGKILL":
        assert all(path.exists() for path in damaged) and capsys.readouterr().err == ""
        return
    assert not any(path.exists() for path in damaged)
    assert capsys.readouterr().err == (
        "stemdeck: the beat tracker crashed; its compiled cache (2 files) was cleared and is being rebuilt\n"
    )


@pytest.mark.parametrize("minutes", [0.5, 3.0, 10.0, 60.0])
def test_the_grids_tempo_stays_exact_over_a_long_track(minutes):
    """A 10-minute track of 120.002 BPM was given 120.215 BPM (0.18 % off: a 16-beat loop 14 ms
    short, Sync drifting): beats numbered from the first by the median gap, measured on the
    2.9 ms grid, were misnumbered once that small error added up to half a period."""
    import numpy as np

    from stemdeck.engine.stretch.beats import FINE_HOP, fit_grid

    bpm, grid_s = 120.002, FINE_HOP / 22050
    true_times = 0.3 + np.arange(int(minutes * bpm)) * 60.0 / bpm
    found = np.round(true_times / grid_s) * grid_s  # where the fine grid puts each beat
    found = np.delete(found, [5, 20, 21])  # a few beats the tracker missed
    period_s, first_s = fit_grid(found)
    assert 60.0 / period_s == pytest.approx(bpm, rel=2e-5)
    assert first_s == pytest.approx(0.3, abs=grid_s)
