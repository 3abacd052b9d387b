"""Faults while playing: the music never stops and nothing non-finite reaches the device.

Issue 11's classes, each with its input built here: a model that outputs NaN, NaN gains, a
stems cache that cannot be written or holds damaged entries, a separation process killed
mid-play or dying at start, shared memory left by a SIGKILLed session. The output is recorded
from the engine's own callback, block by block.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from stemdeck.engine.audio.mixer import OUTPUT_LIMIT, mix_block
from stemdeck.engine.audio.state import PLAYHEAD, SharedState, gain_state
from stemdeck.engine.config import EngineConfig, WindowConfig
from stemdeck.engine.engine import Engine
from stemdeck.engine.worker import cache as stems_cache
from stemdeck.engine.worker.process import SharedBlock, WorkerError, WorkerProcess, clean_stale_segments
from stemdeck.models.nets.passthrough import PassThrough

SR = 44100
BLOCK = 256
FAST_PLAN = WindowConfig(window_s=0.5, hop_s=0.1, lookahead_s=0.05, span_s=0.2)
MUTED_VOCALS = 0.6  # the pass-through's stems without vocals (0.4): the mix is 0.6 x the track


@pytest.fixture(autouse=True)
def _fresh_cache_reports():
    stems_cache._reported.clear()
    yield
    stems_cache._reported.clear()


def tone(seconds: float) -> np.ndarray:
    wave = 0.5 * np.sin(2 * np.pi * 441 * np.arange(int(seconds * SR)) / SR).astype(np.float32)
    return np.stack([wave, wave])


def deck_engine(model=None, worker="thread", **config) -> Engine:
    """A deck on short windows (many per track), so faults land inside a track."""
    config = {"deck_window": FAST_PLAN, **config}
    engine = Engine(
        model or PassThrough(), EngineConfig(precision="fp32", inference_budget_s=0.0, worker=worker, **config)
    )
    engine.prepare(FAST_PLAN, block_frames=BLOCK, calibrate_plan=False)
    return engine


def play_through(engine: Engine, track: np.ndarray, wait: bool = True) -> np.ndarray:
    """Pull the deck's blocks to the end of the track; return them ``(frames, 2)``."""
    engine.play()
    blocks, out = [], np.zeros((BLOCK, 2), np.float32)
    while int(engine.shared.audio[PLAYHEAD]) < track.shape[-1]:
        if wait:
            assert engine.wait_separated(min(track.shape[-1], int(engine.shared.audio[PLAYHEAD]) + BLOCK), 30)
        engine.process_deck_block(out)
        blocks.append(out.copy())
    return np.concatenate(blocks)


def wait_finished(engine: Engine, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not engine.backend.worker.finished.is_set():
        assert time.monotonic() < deadline, "the deck worker never finished"
        time.sleep(0.01)


# -- item 4: the mixer ------------------------------------------------------------------------------


def test_mix_kernel_silences_non_finite_and_limits_huge_samples():
    stems = np.full((4, 2, 64), 0.1, np.float32)
    stems[0, :, 10] = np.nan
    stems[1, :, 20] = np.inf
    stems[2, :, 30] = 1e30
    dry = np.full((2, 64), 0.1, np.float32)
    dry[:, 40] = -np.inf
    state = gain_state(4)
    state[0, 3] = state[1, 3] = np.nan  # a NaN gain that got into the ramp state
    for use_stems in (True, False):
        out = np.zeros((64, 10), np.float32)
        levels = np.zeros((2, 5), np.float32)
        mix_block(out, stems, 0, dry, 0, state, use_stems, levels)
        assert np.isfinite(out).all() and np.abs(out).max() <= OUTPUT_LIMIT
        assert np.isfinite(levels).all()
    assert out[40, 0] == 0.0  # the dry Inf is silence, not full scale


class NaNWindows(PassThrough):
    """The third and fourth windows of music come out NaN, then +Inf (a model gone wrong)."""

    calls = 0  # on the class: the separator runs a copy of the model

    def forward(self, mix):
        stems = super().forward(mix)
        if mix.abs().max() > 0:
            NaNWindows.calls += 1
            if NaNWindows.calls == 3:
                stems = stems * float("nan")
            elif NaNWindows.calls == 4:
                stems = stems + float("inf")
        return stems


def test_nan_from_the_model_from_the_track_and_in_gains_never_reaches_the_output():
    NaNWindows.calls = 0
    engine = deck_engine(NaNWindows(), cache_stems=False)
    track = tone(2.0)
    track[:, SR // 2] = np.nan  # a damaged sample in the track itself
    track[:, SR // 2 + 7] = np.inf
    engine.load_array(track)
    with pytest.raises(ValueError, match="not a number"):
        engine.set_gain("bass", float("nan"))
    engine.set_gain("drums", float("inf"))  # the top of the fader
    engine.set_gain("other", float("-inf"))  # silence
    engine.shared.user_gain[1] = np.nan  # as if a control path skipped the API
    out = play_through(engine, track)
    status = engine.status()
    engine.stop()
    assert out.shape[0] >= track.shape[-1]
    assert np.isfinite(out).all() and np.abs(out).max() <= OUTPUT_LIMIT
    assert NaNWindows.calls >= 4 and status.worker_error is None
    assert engine.mixer().gain_db[0] == pytest.approx(12.0) and engine.mixer().gain_db[2] == -60.0
    # away from the broken windows the music is the stems: drums at +12 dB, vocals 0.4
    last = out[track.shape[-1] - SR // 4 : track.shape[-1], 0]
    expected = (0.1 * 10 ** (12 / 20) + 0.4) * track[0, track.shape[-1] - SR // 4 :]
    assert np.allclose(last, expected, atol=1e-4)


# -- item 8: the stems cache ----------------------------------------------------------------------


def cache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "stemdeck.cache"]


def assert_music_went_on(out: np.ndarray, track: np.ndarray, engine_status) -> None:
    assert engine_status.worker_error is None
    assert out.shape[0] >= track.shape[-1] and np.isfinite(out).all()
    settled = slice(SR // 10, track.shape[-1])  # the stems after the mute's 10 ms ramp
    assert np.allclose(out[settled, 0], MUTED_VOCALS * track[0, settled], atol=2e-3)


@pytest.mark.parametrize("breakage", ["folder-is-a-file", "disk-full"])
def test_a_cache_that_cannot_be_written_is_logged_once_and_the_music_goes_on(tmp_path, monkeypatch, caplog, breakage):
    if breakage == "folder-is-a-file":  # root ignores permissions: a file where the folder should be
        (tmp_path / "blocked").write_text("not a folder")
        monkeypatch.setattr(stems_cache, "cache_folder", lambda: tmp_path / "blocked" / "stems")
        folder = tmp_path / "blocked"
    else:
        folder = tmp_path / "stems"
        monkeypatch.setattr(stems_cache, "cache_folder", lambda: folder)

        def full_disk(file, data):
            file.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(stems_cache.np, "save", full_disk)
    caplog.set_level(logging.WARNING, logger="stemdeck.cache")
    track = tone(1.5)
    for _ in range(2):  # two tracks' worth of failures: still one line
        engine = deck_engine()
        engine.load_array(track)
        engine.set_mute("vocals")
        out = play_through(engine, track)
        wait_finished(engine)
        status = engine.status()
        engine.stop()
        assert_music_went_on(out, track, status)
    warnings = cache_warnings(caplog)
    assert len(warnings) == 1 and "cannot write" in warnings[0]
    if breakage == "disk-full":
        assert "No space left on device" in warnings[0]
    assert not list(folder.rglob("*.tmp")) and not list(folder.rglob("*.npy"))


def _separate_and_cache(track: np.ndarray) -> Path:
    engine = deck_engine()
    engine.load_array(track)
    assert engine.wait_separated(track.shape[-1], 30)
    wait_finished(engine)
    engine.stop()
    [entry] = list(stems_cache.cache_folder().glob("*.npy"))
    return entry


def _damage(entry: Path, how: str) -> None:
    sidecar = entry.with_suffix(".json")
    if how == "json-garbage":
        sidecar.write_bytes(b'{"from": [0], "until": "a lot"')
    elif how == "json-wrong-types":
        sidecar.write_text(json.dumps([{"from": 0}]))
    elif how == "json-huge-interval":
        meta = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps(dict(meta, until=10**30)))
    elif how == "npy-zip":
        entry.write_bytes(b"PK\x03\x04" + os.urandom(2000))
    elif how == "npy-huge-shape":
        header = "{'descr': '<f2', 'fortran_order': False, 'shape': (4, 2, 10000000000000), }"
        entry.write_bytes(b"\x93NUMPY\x01\x00" + len(header + "\n").to_bytes(2, "little") + header.encode() + b"\n")
    elif how in ("nan-data", "random-data"):
        raw = bytearray(entry.read_bytes())
        data_bytes = 4 * 2 * (len(raw) // 16)  # well inside the sample data, past the header
        noise = (
            np.full(data_bytes // 2, np.nan, np.float16)
            if how == "nan-data"
            else np.random.default_rng(0).uniform(-1, 1, data_bytes // 2).astype(np.float16)
        )
        raw[-data_bytes:] = noise.tobytes()
        entry.write_bytes(bytes(raw))  # the sidecar's checksum is now stale
    elif how == "truncated":
        entry.write_bytes(entry.read_bytes()[:-1000])


@pytest.mark.parametrize(
    "how",
    [
        "json-garbage",
        "json-wrong-types",
        "json-huge-interval",
        "npy-zip",
        "npy-huge-shape",
        "nan-data",
        "random-data",
        "truncated",
    ],
)
def test_a_damaged_cache_entry_is_ignored_and_the_track_separated_again(caplog, how):
    caplog.set_level(logging.WARNING, logger="stemdeck.cache")
    track = tone(1.5)
    entry = _separate_and_cache(track)
    _damage(entry, how)
    for attempt in range(2):  # every later play works, and each fixes the entry for the next
        engine = deck_engine()
        engine.load_array(track)
        engine.set_mute("vocals")
        out = play_through(engine, track)
        status = engine.status()
        wait_finished(engine)
        engine.stop()
        assert_music_went_on(out, track, status)
        assert (status.windows_done > 0) == (attempt == 0)  # separated again, then cached again
    warnings = cache_warnings(caplog)
    assert len(warnings) == 1 and entry.name in warnings[0]


def test_a_cached_track_plays_its_stems_and_mutes_from_the_first_block():
    """With the whole track in the stems cache, the dry track played (the vocals heard through a
    mute) for 0.4-2.2 s while the separation process started and read the cache, and that wait
    was counted as late windows, with a "fell behind" warning, though nothing was separated."""
    track = tone(1.5)
    _separate_and_cache(track)
    engine = deck_engine(worker="process")
    try:
        engine.load_array(track)
        engine.set_mute("vocals")
        out = play_through(engine, track, wait=False)  # no waiting for the worker: as the sound card
        status = engine.status()
    finally:
        engine.stop()
    settled = slice(SR // 10, track.shape[-1])  # after the mute's 10 ms ramp: the whole track
    assert np.allclose(out[settled, 0], MUTED_VOCALS * track[0, settled], atol=2e-3)
    assert status.windows_done == 0 and status.late_windows == 0
    assert status.first_stems_s == pytest.approx(0.0, abs=BLOCK / SR)


def test_cache_is_kept_under_its_size_limit_least_recently_used_first(tmp_path):
    stems = np.random.default_rng(1).uniform(-1, 1, (4, 2, 10_000)).astype(np.float32)
    entry_bytes = stems.size * 2 + 128 + 60  # float16 samples, the .npy header, the sidecar
    limit = 2 * entry_bytes + 100  # room for two entries
    entries = [stems_cache.CacheEntry(tmp_path / f"{k}.npy", limit) for k in "abc"]
    for k, entry in enumerate(entries[:2]):
        assert stems_cache.save_stems(entry, stems, 0, stems.shape[-1])
        os.utime(entry.path, (1000 + k, 1000 + k))
    target = np.zeros_like(stems)
    assert stems_cache.load_stems(entries[0], target) == (0, 10_000)  # "a" is now the most recent
    assert np.abs(target - stems).max() < 1e-3
    assert stems_cache.save_stems(entries[2], stems, 0, stems.shape[-1])
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["a.npy", "c.npy"]  # "b" went
    assert not (tmp_path / "b.json").exists()
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= limit


def test_cache_temporaries_of_dead_writers_are_removed_at_the_next_start():
    folder = stems_cache.cache_folder()
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = folder / f".0123.npy.{int(dead.stdout)}.tmp"
    ours = folder / f".4567.npy.{os.getpid()}.tmp"  # a write in progress in this process
    for path in (stale, ours):
        path.write_bytes(b"partial")
    Engine(PassThrough(), EngineConfig(worker="thread")).stop()
    assert not stale.exists() and ours.exists()


def test_a_cue_past_the_end_never_stops_the_track_from_being_cached():
    track = tone(1.0)
    first = deck_engine()
    first.load_array(track, cue_s=100.0)  # clamped to the last frame, as a seek is
    assert first.wait_separated(track.shape[-1], 30)
    wait_finished(first)
    first.stop()
    second = deck_engine()
    second.load_array(track)
    assert second.wait_separated(track.shape[-1], 30)
    wait_finished(second)
    second.stop()
    sidecars = [json.loads(p.read_text()) for p in stems_cache.cache_folder().glob("*.json")]
    assert [(m["from"], m["until"]) for m in sidecars] == [(0, track.shape[-1])]


# -- item 9: a separation process killed mid-play ----------------------------------------------------


def _classify(out: np.ndarray, reference: np.ndarray) -> str:
    if np.allclose(out, MUTED_VOCALS * reference, atol=1e-4):
        return "stems"
    if np.allclose(out, reference, atol=1e-4):
        return "dry"
    return "other"


class TwiceRealTime(PassThrough):
    """A slow machine: each 0.1-s hop of the fast plan takes 0.05 s, so the deck is never far
    ahead of the playhead (module level: the separation process imports it)."""

    def forward(self, mix):
        if mix.abs().max() > 0:
            time.sleep(0.05)
        return super().forward(mix)


def test_killed_separation_process_plays_dry_restarts_and_the_stems_come_back():
    track = tone(40.0)
    engine = deck_engine(TwiceRealTime(), worker="process", cache_stems=False)
    engine.load_array(track)
    engine.set_mute("vocals")
    assert engine.wait_separated(SR, 60)
    engine.play()
    out, kinds, killed_at, block_s = np.zeros((BLOCK, 2), np.float32), [], None, BLOCK / SR
    started = time.monotonic()
    try:
        while int(engine.shared.audio[PLAYHEAD]) + BLOCK < track.shape[-1]:
            playhead = int(engine.shared.audio[PLAYHEAD])
            engine.process_deck_block(out)  # in real time, as a sound card pulls them
            assert np.isfinite(out).all()
            kinds.append(_classify(out[:, 0], track[0, playhead : playhead + BLOCK]))
            if killed_at is None and len(kinds) == int(0.5 / block_s):
                os.kill(engine.backend.process.pid, signal.SIGKILL)
                killed_at = len(kinds)
            if killed_at and kinds[-1] == "stems" and "dry" in kinds[killed_at:]:
                break
            time.sleep(max(0.0, started + len(kinds) * block_s - time.monotonic()))
        deadline = time.monotonic() + 10  # the supervisor records the restart just after the stems resume
        while "restarted" not in (engine.status().worker_notice or "") and time.monotonic() < deadline:
            time.sleep(0.01)
        status = engine.status()
    finally:
        engine.stop()
    after = kinds[killed_at:]
    before = kinds[20:killed_at]  # past the mute's ramp
    assert "other" not in before and before.count("stems") >= 0.9 * len(before)  # a late block may play dry
    assert "other" not in after  # never silence, never garbage: dry, then the stems again
    assert after.count("dry") > 0  # the outage outlasted what was separated ahead of the kill
    first_dry = after.index("dry")
    assert after[first_dry:].index("stems") == after[first_dry:].count("dry")  # one dry stretch
    assert after[-1] == "stems", f"no stems within {len(after) * block_s:.1f} s of the kill"
    assert status.worker_error is None
    assert status.worker_notice.startswith("the separation process failed (it exited with code -9); restarted it in")
    dry_s = after.count("dry") * block_s
    print(
        f"after SIGKILL: {after.count('dry')} dry blocks ({dry_s:.2f} s of audio), "
        f"restart took {engine.backend.restart_s:.2f} s"
    )


def test_killed_separation_process_keeps_live_input_playing_latency_aligned():
    engine = Engine(TwiceRealTime(), EngineConfig(precision="fp32", inference_budget_s=0.2, worker="process"))
    engine.prepare(FAST_PLAN, block_frames=BLOCK, calibrate_plan=False)
    engine.start_live_headless()
    engine.set_mute("vocals")
    signal_in, latency, block_s = tone(60.0), engine.latency_frames, BLOCK / SR
    out, kinds, killed_at = np.zeros((BLOCK, 2), np.float32), [], None
    started = time.monotonic()
    try:
        for start in range(0, signal_in.shape[-1] - BLOCK, BLOCK):
            engine.process_live_block(np.ascontiguousarray(signal_in[:, start : start + BLOCK].T), out)
            assert np.isfinite(out).all()
            if start >= latency + SR // 10:  # past the silence before the first output and the mute's ramp
                kinds.append(_classify(out[:, 0], signal_in[0, start - latency : start - latency + BLOCK]))
            if killed_at is None and kinds.count("stems") >= int(1.0 / block_s):
                os.kill(engine.backend.process.pid, signal.SIGKILL)
                killed_at = len(kinds)
            if killed_at and kinds[-1] == "stems" and "dry" in kinds[killed_at:]:
                break
            time.sleep(max(0.0, started + (start + BLOCK) / SR - time.monotonic()))
        status = engine.status()
    finally:
        engine.stop()
    after = kinds[killed_at:]
    assert "other" not in kinds  # only the stems or the dry input, each exactly `latency` late
    assert after.count("dry") > 0 and after[-1] == "stems"
    assert status.worker_error is None and "exited with code -9" in status.worker_notice
    print(
        f"live, after SIGKILL: {after.count('dry')} dry blocks ({after.count('dry') * block_s:.2f} s), "
        f"restart took {engine.backend.restart_s:.2f} s"
    )


class FailsOnMusic(PassThrough):
    """Every window of music raises (a model that cannot run here), in every process."""

    def forward(self, mix):
        if mix.abs().max() > 0:
            raise RuntimeError("out of memory")
        return super().forward(mix)


def test_a_failing_session_is_restarted_a_bounded_number_of_times_while_the_deck_plays_dry(monkeypatch):
    import stemdeck.engine.backends

    monkeypatch.setattr(stemdeck.engine.backends, "MAX_WORKER_RESTARTS", 1)
    track = tone(60.0)
    deck = deck_engine(FailsOnMusic(), worker="process", cache_stems=False)
    deck.load_array(track)
    deck.play()
    out, notices, kinds = np.zeros((BLOCK, 2), np.float32), set(), []
    deadline = time.monotonic() + 90
    try:
        while deck.status().worker_error is None and time.monotonic() < deadline:
            playhead = int(deck.shared.audio[PLAYHEAD])
            deck.process_deck_block(out)
            kinds.append(_classify(out[:, 0], track[0, playhead : playhead + BLOCK]))
            notices.add(deck.status().worker_notice)
            time.sleep(0.005)
        status = deck.status()
    finally:
        deck.stop()
    assert set(kinds) == {"dry"}  # the music went on, dry, all along
    assert any(
        n
        and n.startswith(
            "the separation process failed (RuntimeError: out of memory); playing the dry "
            "signal while it restarts (1 of 1)"
        )
        for n in notices
    )
    assert status.worker_error.startswith(
        "the separation process failed 2 times within 60 s (last: RuntimeError: out of memory); the dry signal plays on"
    )


# -- item 10: a separation process that dies while starting -------------------------------------------


def _exit_at_once(payload) -> None:
    os._exit(7)


def _sleep_then_pass(seconds: float):
    time.sleep(seconds)
    return PassThrough()


class DiesWhenUnpickled(PassThrough):
    """Unpickling it in the separation process ends that process, after a 4 MB transfer (more
    than a pipe holds: the size that used to block the parent for ever)."""

    def __reduce__(self):
        return _exit_at_once, (np.zeros(1 << 20, np.float32),)


class SlowToUnpickle(PassThrough):
    def __reduce__(self):
        return _sleep_then_pass, (30.0,)


def _in_thread(function, timeout_s: float):
    """Run ``function``; fail (instead of hanging the suite) when it does not return in time."""
    result = {}

    def run():
        try:
            result["value"] = function()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"still waiting on the separation process after {timeout_s} s"
    return result


def test_a_process_dying_at_start_is_one_line_error_not_a_hang():
    engine = Engine(DiesWhenUnpickled(), EngineConfig(precision="fp32", worker="process"))
    result = _in_thread(lambda: engine.prepare(FAST_PLAN, block_frames=BLOCK), timeout_s=120)
    engine.stop()
    error = result.get("error")
    assert isinstance(error, WorkerError)
    assert str(error).startswith("the separation process exited (code 7) while loading the model")
    assert "\n" not in str(error)


def test_a_process_that_never_answers_times_out_and_is_ended():
    state = SharedBlock(SharedState.specs(4))
    result = _in_thread(
        lambda: WorkerProcess(SlowToUnpickle(), state.spec, "fp32", 1, SR, ready_timeout_s=3.0), timeout_s=60
    )
    state.close()
    error = result.get("error")
    assert isinstance(error, WorkerError)
    assert "did not answer within 3 s (loading the model)" in str(error)


# -- item 6 (part): shared memory left by a SIGKILLed process group ----------------------------------

SESSION = """
import sys, time
sys.path.insert(0, {root!r})
from stemdeck.engine.worker.process import SharedBlock
block = SharedBlock({{"x": ((1024,), "float32")}})
print(block.spec.name, flush=True)
time.sleep(60)
"""


def test_segments_of_a_killed_session_are_removed_at_the_next_start():
    root = str(Path(__file__).resolve().parents[1])
    session = subprocess.Popen(
        [sys.executable, "-c", SESSION.format(root=root)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    name = session.stdout.readline().strip()
    os.killpg(session.pid, signal.SIGKILL)  # the session and its resource tracker, at once
    session.wait(10)
    ours = SharedBlock({"y": ((16,), "float32")})  # a living owner's segment stays
    try:
        assert name.startswith(f"stemdeck-{session.pid}-") and (Path("/dev/shm") / name).exists()
        Engine(PassThrough(), EngineConfig(worker="process")).stop()  # the next start
        assert not (Path("/dev/shm") / name).exists()
        assert (Path("/dev/shm") / ours.spec.name).exists()
        assert clean_stale_segments() == []
    finally:
        ours.close()


DROPPED = """
import gc, sys, weakref
sys.path.insert(0, {root!r})
from stemdeck.engine.worker.process import SharedBlock, close_unused_mappings
block = SharedBlock({{"x": ((1 << 20,), "float32")}})
array, memory = block.arrays["x"], weakref.ref(block.memory)
array[:] = 1.0
del block
gc.collect()  # SharedMemory.__del__ unmapped the segment here, under the array
print(memory() is not None, float(array.sum()), flush=True)
del array
close_unused_mappings()
gc.collect()
print(memory() is None, flush=True)
"""


def test_a_block_dropped_without_close_stays_mapped_while_an_array_views_it():
    """A GUI test segfaulted: a block collected on one thread unmapped arrays another thread read.
    In its own process: the bug, back, would end it with SIGSEGV."""
    root = str(Path(__file__).resolve().parents[1])
    result = subprocess.run(
        [sys.executable, "-c", DROPPED.format(root=root)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "1048576.0", "True"]


# -- item 11 and issue 10 item 6: the command line checks its inputs before the model loads ------------


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: every check here must come first."""
    import stemdeck.models.cli
    import stemdeck.models.loading

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(stemdeck.models.cli, "load_for_command", loaded)
    monkeypatch.setattr(stemdeck.models.loading, "load_or_fetch", loaded)


@pytest.fixture
def song(tmp_path) -> Path:
    from conftest import write_tone

    path = tmp_path / "song.wav"
    write_tone(path, seconds=12.0)
    return path


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--start", "100"], "--start 100: song.wav lasts 12.0 s; give a cue point before its end"),
        (["--start", "-5"], "--start -5.0: give a cue point in seconds from 0 to the track's length"),
        (["--start", "nan"], "--start nan: give a cue point"),
        (["--blocksize", "-256"], "--blocksize -256: give a block of 32 to 4096 frames"),
        (["--blocksize", "0"], "--blocksize 0: give a block of 32 to 4096 frames"),
        (["--blocksize", "100000"], "--blocksize 100000: give a block of 32 to 4096 frames"),
        (["--duration", "0"], "--duration 0.0: give a positive number of seconds"),
        (["--duration", "inf"], "--duration inf: give a positive number of seconds"),
        (["--latency", "-1"], "--latency -1 shapes live input's windows (`stemdeck live`); a file deck"),
        (["--preset", "quality"], "--preset quality shapes live input's windows"),
        (["--midi-out", "leds"], "--midi-out needs --midi-in or --midi-virtual"),
    ],
)
def test_play_refuses_bad_numbers_in_one_line_before_loading_the_model(
    song, no_model_load, capsys, monkeypatch, args, expected
):
    from stemdeck.cli import main

    monkeypatch.chdir(song.parent)
    assert main(["play", song.name, "--model", "passthrough", *args]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stemdeck: error: {expected}"), lines


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--blocksize", "-256"], "--blocksize -256: give a block"),
        (["--latency", "0"], "--latency 0.0: give a target latency"),
        (["--duration", "-1"], "--duration -1.0: give a positive number"),
    ],
)
def test_live_refuses_bad_numbers_in_one_line_before_loading_the_model(no_model_load, capsys, args, expected):
    from stemdeck.cli import main

    assert main(["live", "--model", "passthrough", *args]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stemdeck: error: {expected}"), lines


@pytest.mark.parametrize(
    "make,expected",
    [
        (
            lambda d: (d / "notaudio.wav").write_bytes(b"not audio " * 100) and d / "notaudio.wav",
            "notaudio.wav: not a readable audio file",
        ),
        (lambda d: d / "missing.wav", "missing.wav: no such file"),
        (lambda d: Path("/proc/self/mem"), "/proc/self/mem: cannot read it (Input/output error)"),  # an I/O error
    ],
)
def test_play_says_what_is_wrong_with_the_file_before_loading_the_model(
    tmp_path, no_model_load, capsys, make, expected
):
    from stemdeck.cli import main

    path = make(tmp_path)
    assert main(["play", str(path), "--model", "passthrough"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and expected in lines[0] and "System error" not in lines[0], lines


def test_play_with_an_unknown_midi_port_says_so_before_loading_the_model(song, jack_server):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stemdeck",
            "play",
            str(song),
            "--model",
            "passthrough",
            "--midi-in",
            "nosuchport",
            "--midi-api",
            "jack",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 1
    assert lines == [lines[0]] and lines[0].startswith("stemdeck: error: no MIDI input matches 'nosuchport'; inputs:")
    assert "calibrating" not in result.stderr  # the model never loaded


def test_play_with_an_unknown_output_device_says_so_before_loading_the_model(song, no_model_load, capsys):
    from stemdeck.cli import main

    assert main(["play", str(song), "--model", "passthrough", "--output", "nosuchdevice"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["stemdeck: error: no output device matches 'nosuchdevice'; run `stemdeck devices` to list them"]
