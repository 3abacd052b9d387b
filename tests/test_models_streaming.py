"""Separation block by block (models.streaming) against the whole track in memory (models.separate).

Tolerance: 1e-4 absolute on every stem sample (the issue's bar); in practice the two agree to
float rounding (< 1e-8), since every chunk sees the same samples and the band split's filters
have decayed far below that within their context.
"""

import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import stemdeck_command

from stemdeck.models import BagOfModels, separate
from stemdeck.models.audio import AudioError, open_audio, read_audio
from stemdeck.models.nets.passthrough import PassThrough
from stemdeck.models.registry import load_named
from stemdeck.models.separate import MixStatistics, normalisation, resample
from stemdeck.models.streaming import ArraySource, FrameQueue, Resampler, Settings, separate_stream

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def bundled_tiny():
    """The shipped 22.05 kHz model: resampling both ways and the band split are all exercised."""
    return load_named("tiny")


def music(channels: int, samplerate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A tone, a bass and gated noise (energy above 11 kHz), ``(channels, frames)`` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * samplerate)) / samplerate
    gate = np.floor(t * 4) % 2 == 0
    voices = [
        0.2 * np.sin(2 * np.pi * (220 + 30 * c) * t)
        + 0.3 * np.sin(2 * np.pi * 55 * t)
        + 0.08 * rng.standard_normal(t.size) * gate
        for c in range(channels)
    ]
    return np.stack(voices).astype(np.float32)


def streamed(model, source, **kwargs) -> dict[str, np.ndarray]:
    blocks = list(separate_stream(model, source, Settings(precision="fp32", **kwargs)))
    return {name: np.concatenate([block[name] for block in blocks], axis=-1) for name in model.sources}


def max_error(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert list(a) == list(b)
    for name in a:
        assert a[name].shape == b[name].shape and a[name].dtype == b[name].dtype == np.float32
    return max(float(np.abs(a[name] - b[name]).max()) for name in a)


@pytest.mark.parametrize("channels,samplerate", [(1, 44100), (2, 48000)])
def test_a_file_streamed_equals_the_whole_track_in_memory(tmp_path, bundled_tiny, channels, samplerate):
    path = tmp_path / "song.wav"
    sf.write(path, music(channels, samplerate, 3.1).T[:-7], samplerate, subtype="PCM_24")  # 3.1 s less 7 frames
    audio, _ = read_audio(path)
    whole = separate(bundled_tiny, audio, samplerate, precision="fp32")
    source = open_audio(path)
    assert (source.frames, source.channels) == (audio.shape[1], channels)
    assert max_error(streamed(bundled_tiny, source), whole) < TOLERANCE


@pytest.mark.parametrize("block_frames", [64, 65, 512, 8193])
def test_awkward_block_sizes_give_the_same_stems(block_frames):
    model = PassThrough(samplerate=22050, segment=0.4)
    audio = music(2, 48000, 1.1)[:, :-3]
    whole = separate(model, audio, 48000, precision="fp32")
    assert max_error(streamed(model, ArraySource(audio, 48000, block_frames)), whole) < TOLERANCE


def test_shifts_stream_like_the_whole_track(tiny_model):
    audio = music(2, 44100, 2.2)[:, :-11]
    shifted = separate(tiny_model, audio, 44100, precision="fp32", shifts=2, seed=3)
    assert max_error(streamed(tiny_model, ArraySource(audio, 44100, 10007), shifts=2, seed=3), shifted) < TOLERANCE


def test_bags_with_overlap_and_segment_stream_like_the_whole_track():
    models = [PassThrough(segment=2.0), PassThrough(fractions=(0.4, 0.3, 0.2, 0.1), segment=2.0)]
    bag = BagOfModels(models, [[1, 2, 3, 4], [4, 3, 2, 1]])
    audio = music(2, 48000, 3.1)[:, :-11]
    whole = separate(bag, audio, 48000, precision="fp32", overlap=0.5, segment=1.5, shifts=1, seed=5)
    source = ArraySource(audio, 48000, 10007)
    assert max_error(streamed(bag, source, overlap=0.5, segment=1.5, shifts=1, seed=5), whole) < TOLERANCE


@pytest.mark.parametrize("frames", [1, 50, 500])
def test_tiny_tracks_and_no_normalisation(tiny_model, frames):
    audio = music(2, 48000, 0.02)[:, :frames]
    source = ArraySource(audio, 48000)
    assert max_error(streamed(tiny_model, source), separate(tiny_model, audio, 48000, precision="fp32")) < TOLERANCE
    plain = separate(tiny_model, audio, 48000, precision="fp32", normalise=False, share_band=False)
    assert max_error(streamed(tiny_model, source, normalise=False, share_band=False), plain) < TOLERANCE


def test_an_empty_source_gives_empty_stems(tiny_model):
    stems = streamed(tiny_model, ArraySource(np.zeros((1, 0), np.float32), 44100))
    assert all(stem.shape == (1, 0) for stem in stems.values())


def test_progress_rises_to_one_once_per_chunk():
    model = PassThrough(segment=1.0)
    calls = []
    list(separate_stream(model, ArraySource(music(2, 44100, 3.0), 44100), Settings(), progress=calls.append))
    assert calls == pytest.approx([(i + 1) / 4 for i in range(4)])  # 3 s in 0.75 s strides


def test_mix_statistics_equal_the_whole_track_normalisation():
    rng = np.random.default_rng(2)
    mix = (rng.standard_normal((2, 100_003)) * 3e4 + 1e4).astype(np.float32)  # loud, offset: float64 matters
    stats = MixStatistics()
    for start in range(0, mix.shape[1], 8191):
        stats.add(mix[:, start : start + 8191])
    mean, std = stats.normalisation()
    expected = normalisation(mix)
    assert mean == pytest.approx(expected[0], rel=1e-12) and std == pytest.approx(expected[1], rel=1e-12)
    one = MixStatistics()
    one.add(mix[:, :1])
    assert one.normalisation() == normalisation(mix[:, :1])


@pytest.mark.parametrize("from_rate,to_rate", [(48000, 22050), (22050, 44100), (44100, 44100)])
def test_the_resampling_stream_equals_the_one_shot(from_rate, to_rate):
    audio = music(2, from_rate, 1.0)[:, :-5]
    frames = round(audio.shape[1] * to_rate / from_rate) + 3
    resampler = Resampler(from_rate, to_rate, 2, frames)
    parts = [resampler.feed(audio[:, start : start + 999]) for start in range(0, audio.shape[1], 999)]
    parts.append(resampler.feed(audio[:, :0], last=True))
    assert np.array_equal(np.concatenate(parts, axis=-1), resample(audio, from_rate, to_rate, frames))


def test_frame_queue_hands_out_exact_counts():
    queue = FrameQueue()
    for start in range(0, 10, 3):
        queue.push(np.arange(start, min(start + 3, 10))[None])
    assert queue.pop(4).tolist() == [[0, 1, 2, 3]] and queue.pop(1).tolist() == [[4]]
    assert queue.pop(100).tolist() == [[5, 6, 7, 8, 9]] and queue.frames == 0


# -- peak memory of the command line -------------------------------------------------------------------

RSS_SCRIPT = """
import sys
from pathlib import Path
from stemdeck.cli import main
code = main(sys.argv[1:])
status = Path("/proc/self/status").read_text().splitlines()
print("PEAK_KB", next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")))
sys.exit(code)
"""


def write_long_song(path: Path, minutes: float, samplerate: int = 48000) -> None:
    """A synthetic mono song written 10 s at a time, so the test itself stays small."""
    block = 10 * samplerate
    total = int(minutes * 60 * samplerate) + 1234
    with sf.SoundFile(path, "w", samplerate, 1, "PCM_16") as out:
        for start in range(0, total, block):
            t = (start + np.arange(min(block, total - start))) / samplerate
            x = 0.2 * np.sin(2 * np.pi * 110 * t) + 0.05 * np.sin(2 * np.pi * 7001 * t) * (np.floor(t * 4) % 2 == 0)
            out.write(x.astype(np.float32))


def run_command_then(script: str, args: list, timeout_s: float) -> subprocess.CompletedProcess:
    """``script`` (which runs ``stemdeck`` with ``args``, then measures) in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr
    return result


def peak_rss_mb(tmp_path: Path, song: Path) -> float:
    """Peak RSS of ``stemdeck separate`` on ``song`` in a fresh process (VmHWM: not the parent's)."""
    args = ["separate", song, "-o", tmp_path / "out", "--model", "passthrough", "--stems", "drums", "--bits", "16"]
    result = run_command_then(RSS_SCRIPT, args, timeout_s=300)
    assert (tmp_path / "out" / song.stem / "drums.wav").is_file()
    return int(result.stdout.split("PEAK_KB")[-1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_peak_memory_does_not_grow_with_the_song(tmp_path):
    """10 minutes of 48 kHz mono (resampled to the 44.1 kHz model and back, the band above
    22 kHz split): the whole-track path held the track, its resampled copy, four stems at each
    rate and the band split's float64 arrays at once (about 2 GB). Block by block, 10 minutes
    peak within 80 MB of 2 minutes, under 800 MB."""
    short, long = tmp_path / "two.wav", tmp_path / "ten.wav"
    write_long_song(short, 2)
    write_long_song(long, 10)
    short_mb, long_mb = peak_rss_mb(tmp_path, short), peak_rss_mb(tmp_path, long)
    assert long_mb < 800, f"10 minutes peaked at {long_mb:.0f} MB"
    assert long_mb - short_mb < 80, f"2 minutes: {short_mb:.0f} MB, 10 minutes: {long_mb:.0f} MB"


# After the command, this probe asks glibc's malloc for a block of 2.5 thresholds and frees it
# (under glibc's own policy that raises its mmap threshold past it), then takes 1.5 thresholds,
# touches them and frees them: how much of it the process gives back says which policy the
# command left.
MALLOC_PROBE_SCRIPT = """
import ctypes, sys
from pathlib import Path
from stemdeck.cli import main
from stemdeck.models.streaming import MMAP_THRESHOLD_BYTES
code = main(sys.argv[1:])
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss_kb():
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
libc.free(libc.malloc(5 * MMAP_THRESHOLD_BYTES // 2))
size = 3 * MMAP_THRESHOLD_BYTES // 2
block = libc.malloc(size)
ctypes.memset(block, 1, size)
before = rss_kb()
libc.free(block)
print("RETURNED", (before - rss_kb()) * 1024 / size)
sys.exit(code)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc malloc's")
@pytest.mark.parametrize("mode", ["low", "speed"])
def test_memory_mode_sets_what_malloc_gives_back(tmp_path, mode):
    """--memory low: a freed block above the threshold goes back to the system at once; speed:
    glibc keeps it for the next one. -v says which."""
    song = tmp_path / "song.wav"
    sf.write(song, music(2, 44100, 2.0).T, 44100)
    args = ["separate", song, "-o", tmp_path / "out", "--model", "passthrough", "--memory", mode, "-v"]
    result = run_command_then(MALLOC_PROBE_SCRIPT, args, timeout_s=120)
    returned = float(result.stdout.split("RETURNED")[-1])
    if mode == "low":
        assert returned > 0.95, f"{returned:.0%} of the block given back"
        assert "stemdeck: memory: low (blocks of 8 MB and more go back to the system when freed)" in result.stderr
    else:
        assert returned < 0.05, f"{returned:.0%} of the block given back"
        assert "stemdeck: memory: speed (malloc keeps freed model memory for reuse)" in result.stderr


@pytest.mark.parametrize("backend,threshold_mb", [("torch", 8), ("auto", 8), ("openvino", 2), ("onnx", 2)])
def test_low_memory_returns_smaller_blocks_where_an_exported_network_holds_the_activations(
    monkeypatch, backend, threshold_mb
):
    """OpenVINO and ONNX Runtime keep their activations in buffers of their own, so only the
    stream's blocks come and go: from 2 MB they go back to the system, not into the heap's holes."""
    from stemdeck.models import streaming

    asked = []
    monkeypatch.setattr(streaming, "return_freed_memory_early", lambda threshold: asked.append(threshold) or True)
    monkeypatch.setattr(streaming, "allow_memory_for_speed", lambda allowed: None)  # process-wide: not here
    said = streaming.apply_memory_mode("low", backend)
    assert asked == [threshold_mb << 20]
    assert said == f"low (blocks of {threshold_mb} MB and more go back to the system when freed)"


MODULES_SCRIPT = """
import sys
from stemdeck.cli import main
code = main(sys.argv[1:])
print("HEAVY", sorted({"numba", "llvmlite", "scipy", "PyQt6", "torch._dynamo"} & set(sys.modules)))
sys.exit(code)
"""


@pytest.mark.parametrize("samplerate", [44100, 48000])
def test_separate_imports_no_engine_kernels_and_no_scipy(tmp_path, samplerate):
    """The live engine's kernels (numba, llvmlite) and scipy.signal cost a `stemdeck separate`
    process about 120 MB of its peak; it needs neither, at the model's rate or above it (where
    the band share runs numpy's filters, models.butterworth)."""
    song = tmp_path / "song.wav"
    sf.write(song, music(2, samplerate, 2.0).T, samplerate)
    args = ["separate", song, "-o", tmp_path / "out", "--model", "passthrough"]
    result = run_command_then(MODULES_SCRIPT, args, timeout_s=120)
    assert result.stdout.split("HEAVY")[-1].strip() == "[]"


def test_a_file_cut_short_between_the_passes_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "song.wav"
    sf.write(path, music(2, 44100, 2.0).T, 44100)
    source = open_audio(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # another program truncates it meanwhile
    with pytest.raises(AudioError, match=r"song\.wav changed while it was read: \d+ of its 88200 frames"):
        list(separate_stream(PassThrough(), source, Settings()))


def test_the_command_writes_what_the_whole_track_separation_gives(tmp_path, bundled_tiny):
    path = tmp_path / "song.wav"
    audio = music(2, 48000, 2.1)
    sf.write(path, audio.T, 48000, subtype="FLOAT")
    result = subprocess.run(
        stemdeck_command("separate", path, "-o", tmp_path / "out", "--model", "tiny", "--bits", "32f"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    whole = separate(bundled_tiny, audio, 48000)
    for name, stem in whole.items():
        written, rate = sf.read(tmp_path / "out" / "song" / f"{name}.wav", dtype="float32", always_2d=True)
        peak = float(np.abs(stem).max())
        assert rate == 48000
        assert np.abs(written.T - stem / max(1.01 * peak, 1.0)).max() < TOLERANCE
