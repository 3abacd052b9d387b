"""Audio files: every libsndfile format in, strict errors, atomic stem writing."""

import os

import numpy as np
import pytest
import soundfile as sf
from conftest import write_tone

from stemdeck.models.audio import (
    AudioError,
    OutputFormat,
    StemWriter,
    open_audio,
    prepare_for_output,
    read_audio,
    write_stems_atomically,
)


@pytest.mark.parametrize("ext,kwargs", [("wav", {}), ("flac", {}), ("ogg", {}), ("mp3", {"format": "MP3"})])
def test_reads_common_formats(tmp_path, ext, kwargs):
    path = tmp_path / f"tone.{ext}"
    original = write_tone(path, seconds=1.0, **kwargs)
    audio, samplerate = read_audio(path)
    assert samplerate == 44100 and audio.dtype == np.float32 and audio.shape[0] == 2
    assert abs(audio.shape[1] - original.shape[1]) <= 2304  # MP3 adds encoder padding


def test_reads_mono_at_any_rate(tmp_path):
    write_tone(tmp_path / "m.wav", seconds=0.5, samplerate=22050, channels=1)
    audio, samplerate = read_audio(tmp_path / "m.wav")
    assert audio.shape == (1, 11025) and samplerate == 22050


def test_truncated_wav_is_refused(tmp_path):
    path = tmp_path / "t.wav"
    write_tone(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="is truncated: its header promises 529200 bytes"):
        read_audio(path)


def test_truncated_flac_is_refused(tmp_path):
    path = tmp_path / "t.flac"
    write_tone(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="truncated|not a readable|damaged"):
        read_audio(path)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "is empty"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt garbage garbage", "not a readable audio file"),
        (b"hello, I am a text file" * 40, "not a readable audio file"),
    ],
)
def test_bad_files_get_one_line(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=message) as info:
        read_audio(path)
    assert "\n" not in str(info.value)


def test_directory_missing_and_seven_channels(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        read_audio(tmp_path)
    with pytest.raises(AudioError, match="no such file"):
        read_audio(tmp_path / "nope.wav")
    sf.write(str(tmp_path / "7.wav"), np.zeros((100, 7), np.float32), 44100)
    with pytest.raises(AudioError, match="has 7 channels; .* downmix"):
        read_audio(tmp_path / "7.wav")


@pytest.mark.parametrize(
    "fmt,subtype",
    [
        (OutputFormat("wav", "16"), "PCM_16"),
        (OutputFormat("flac", "24"), "PCM_24"),
        (OutputFormat("wav", "32f"), "FLOAT"),
        (OutputFormat("mp3"), "MPEG_LAYER_III"),
    ],
)
def test_writes_every_stem_in_the_asked_format(tmp_path, fmt, subtype):
    stems = {"vocals": np.full((2, 1000), 0.5, np.float32), "bass": np.zeros((2, 1000), np.float32)}
    written = write_stems_atomically(stems, 44100, tmp_path / "song", fmt)
    assert [p.name for p in written] == [f"vocals.{fmt.extension}", f"bass.{fmt.extension}"]
    assert sf.info(str(written[0])).subtype == subtype
    assert sorted(os.listdir(tmp_path / "song")) == sorted(p.name for p in written)


def test_rescale_and_clamp_keep_samples_in_range(tmp_path):
    loud = {"x": np.full((1, 100), 3.0, np.float32)}
    for clip, expected in (("rescale", 3.0 / 3.03), ("clamp", 0.99)):
        path = write_stems_atomically(loud, 44100, tmp_path / clip, OutputFormat("wav", "32f", clip))[0]
        data, _ = sf.read(str(path))
        assert data.max() == pytest.approx(expected, abs=1e-6)


def test_clip_none_writes_float_stems_as_they_are_and_only_those(tmp_path):
    loud = {"x": np.full((1, 100), 3.0, np.float32)}
    path = write_stems_atomically(loud, 44100, tmp_path / "none", OutputFormat("wav", "32f", "none"))[0]
    assert sf.read(str(path))[0].max() == 3.0
    for extension, bits in (("wav", "24"), ("wav", "16"), ("flac", "24"), ("mp3", "24")):
        with pytest.raises(ValueError, match="only 32-bit float WAV holds; add --bits 32f"):
            OutputFormat(extension, bits, "none")


def test_unwritable_output_location_fails_cleanly(tmp_path):
    """A file where the track folder should go: the write is refused in one line, nothing made."""
    blocker = tmp_path / "song"
    blocker.write_text("not a folder")
    with pytest.raises(AudioError, match="cannot create .*song: File exists; choose another output"):
        write_stems_atomically({"x": np.zeros((1, 10), np.float32)}, 44100, blocker, OutputFormat())
    assert blocker.read_text() == "not a folder"


def test_failure_midway_leaves_no_partial_stems(tmp_path, monkeypatch):
    calls = []

    def failing_write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return original(path, *args, **kwargs)

    original = sf.write
    monkeypatch.setattr(sf, "write", failing_write)
    stems = {"a": np.zeros((1, 10), np.float32), "b": np.zeros((1, 10), np.float32)}
    with pytest.raises(AudioError, match="No space left on device"):
        write_stems_atomically(stems, 44100, tmp_path / "song", OutputFormat())
    assert os.listdir(tmp_path / "song") == []


def test_invalid_format_combinations():
    with pytest.raises(ValueError, match="FLAC holds 16 or 24-bit"):
        OutputFormat("flac", "32f")
    with pytest.raises(ValueError, match="unknown format"):
        OutputFormat("aiff")


# -- hostile and damaged input (issue 11 items 2, 4, 6; issue 10 item 6) ---------------------------


def _refuse_reads(monkeypatch):
    """Fail the test if the audio itself is read: the header alone must decide."""

    def no_read(*args, **kwargs):
        raise AssertionError("the audio was read before the header was checked")

    monkeypatch.setattr(sf, "read", no_read)


@pytest.mark.parametrize("samplerate", [1, 7999, 384001])
def test_sample_rates_outside_8_to_384_khz_are_refused_from_the_header(tmp_path, monkeypatch, samplerate):
    path = tmp_path / "odd.wav"
    sf.write(str(path), np.zeros((5, 2), np.float32), samplerate)
    _refuse_reads(monkeypatch)
    with pytest.raises(AudioError, match=f"declares a sample rate of {samplerate} Hz; stemdeck reads 8-384 kHz"):
        read_audio(path)


@pytest.mark.parametrize("samplerate", [8000, 384000])
def test_the_edges_of_the_sample_rate_range_are_read(tmp_path, samplerate):
    sf.write(str(tmp_path / "edge.wav"), np.full((10, 1), 0.25, np.float32), samplerate)
    audio, rate = read_audio(tmp_path / "edge.wav")
    assert rate == samplerate and audio.shape == (1, 10)


def test_channel_count_is_refused_from_the_header(tmp_path, monkeypatch):
    sf.write(str(tmp_path / "7.wav"), np.zeros((100, 7), np.float32), 44100)
    _refuse_reads(monkeypatch)
    with pytest.raises(AudioError, match="has 7 channels; stemdeck separates mono or stereo: downmix"):
        read_audio(tmp_path / "7.wav")


def test_non_finite_samples_are_read_as_silence_and_said_once(tmp_path):
    data = np.full((1000, 2), 0.5, np.float32)
    data[10, 0], data[20, 1], data[30, 0] = np.nan, np.inf, -np.inf
    sf.write(str(tmp_path / "bad.wav"), data, 44100, subtype="FLOAT")
    notes = []
    audio, _ = read_audio(tmp_path / "bad.wav", report=notes.append)
    assert np.all(np.isfinite(audio))
    assert audio[0, 10] == audio[1, 20] == audio[0, 30] == 0.0
    assert np.count_nonzero(audio == 0.5) == 2000 - 3
    assert len(notes) == 1 and "3 non-finite sample(s) (NaN or infinity) read as silence" in notes[0]


def test_a_clean_file_reports_nothing(tmp_path):
    write_tone(tmp_path / "ok.wav", seconds=0.1)
    notes = []
    read_audio(tmp_path / "ok.wav", report=notes.append)
    assert notes == []


def test_truncated_flac_is_called_damaged_not_unreadable(tmp_path):
    path = tmp_path / "t.flac"
    write_tone(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError) as info:
        read_audio(path)
    message = str(info.value)
    assert "t.flac is damaged or truncated" in message and "re-export or re-download it" in message
    assert "convert it" not in message and "\n" not in message


def test_truncated_mp3_is_called_truncated(tmp_path):
    path = tmp_path / "t.mp3"
    write_tone(path, format="MP3")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"t\.mp3 (is truncated|is damaged or truncated)") as info:
        read_audio(path)
    assert "convert it" not in str(info.value)


def test_file_names_that_are_not_utf8_are_read(tmp_path):
    path = tmp_path / os.fsdecode(b"caf\xe9 \xff.wav")  # Latin-1 bytes: not valid UTF-8
    sf.write(os.fsencode(path), np.full((4410, 2), 0.25, np.float32), 44100)
    audio, rate = read_audio(path)
    assert audio.shape == (2, 4410) and rate == 44100
    written = write_stems_atomically({"vocals": audio}, rate, tmp_path / path.stem, OutputFormat())
    assert sf.info(os.fsencode(written[0])).frames == 4410


@pytest.mark.parametrize("name", ["../escaped", "a/b", "", ".hidden", "x" * 65, "vocals\n", "bass.wav"])
def test_stem_names_that_are_not_identifiers_are_refused(tmp_path, name):
    folder = tmp_path / "out" / "song"
    with pytest.raises(AudioError, match="is not a short identifier"):
        write_stems_atomically(
            {"vocals": np.zeros((1, 10), np.float32), name: np.zeros((1, 10), np.float32)},
            44100,
            folder,
            OutputFormat(),
        )
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


@pytest.mark.parametrize("fmt", [OutputFormat("wav", "24"), OutputFormat("flac", "16"), OutputFormat("wav", "32f")])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_stems_are_never_written(tmp_path, fmt, bad):
    stems = {"vocals": np.zeros((2, 100), np.float32), "bass": np.zeros((2, 100), np.float32)}
    stems["bass"][1, 50] = bad
    with pytest.raises(AudioError, match="stem bass .* has non-finite samples .* nothing written"):
        write_stems_atomically(stems, 44100, tmp_path / "song", fmt)
    assert not (tmp_path / "song").exists() or os.listdir(tmp_path / "song") == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_finished_stems_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        written = write_stems_atomically(
            {"vocals": np.zeros((1, 10), np.float32)}, 44100, tmp_path / "song", OutputFormat()
        )
    finally:
        os.umask(old)
    assert written[0].stat().st_mode & 0o777 == mode


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process has it now (a reuse within the test is vanishingly rare)


def test_stale_partials_are_removed_by_the_next_write(tmp_path):
    folder = tmp_path / "song"
    folder.mkdir()
    stale = [folder / f".vocals.{_dead_pid()}.0a1b2c3d.wav.partial", folder / ".bass.k2j3h4.wav.partial"]
    live = folder / f".drums.{os.getpid()}.0a1b2c3d.wav.partial"  # a write in progress: kept
    for path in (*stale, live):
        path.write_bytes(b"RIFF half a stem")
    write_stems_atomically({"vocals": np.zeros((1, 10), np.float32)}, 44100, folder, OutputFormat())
    assert sorted(p.name for p in folder.iterdir()) == sorted([live.name, "vocals.wav"])


KILLED_WRITER = r"""
import os, sys, time
import numpy as np, soundfile as sf
from pathlib import Path
from stemdeck.models.audio import OutputFormat, write_stems_atomically

original = sf.write
def write_then_hang(path, *args, **kwargs):
    original(path, *args, **kwargs)
    if Path(os.fsdecode(path)).name.startswith(".bass."):  # the second stem: the first is complete
        Path(sys.argv[2]).write_text("ready")
        time.sleep(60)
sf.write = write_then_hang
stems = {name: np.full((2, 44100), 0.1, np.float32) for name in ("vocals", "bass", "drums")}
write_stems_atomically(stems, 44100, Path(sys.argv[1]), OutputFormat())
"""


def test_a_killed_write_leaves_no_finished_looking_file_and_the_next_cleans_up(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    folder, ready = tmp_path / "song", tmp_path / "ready"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(folder), str(ready)], cwd=os.path.dirname(os.path.dirname(__file__))
    )
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    assert ready.exists(), "the writer never reached its second stem"
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = sorted(p.name for p in folder.iterdir())
    assert len(left) == 2 and all(name.startswith(".") and name.endswith(".wav.partial") for name in left)
    write_stems_atomically({"other": np.zeros((1, 10), np.float32)}, 44100, folder, OutputFormat())
    assert sorted(p.name for p in folder.iterdir()) == ["other.wav"]


# -- block by block ------------------------------------------------------------------------------------


def write_in_blocks(folder, stems, fmt, block_frames=1000):
    channels = next(iter(stems.values())).shape[0]
    with StemWriter(folder, list(stems), 44100, channels, fmt) as writer:
        for start in range(0, next(iter(stems.values())).shape[1], block_frames):
            writer.write({name: audio[:, start : start + block_frames] for name, audio in stems.items()})
        return writer.finish()


@pytest.mark.parametrize("clip", ["rescale", "clamp", "none"])
def test_stems_written_in_blocks_equal_the_whole_stem_written(tmp_path, clip):
    rng = np.random.default_rng(0)
    stems = {
        "loud": (rng.standard_normal((2, 4321)) * 0.8).astype(np.float32),  # peaks near 3
        "quiet": np.full((2, 4321), 0.1, np.float32),
    }
    fmt = OutputFormat("wav", "32f", clip)
    written = write_in_blocks(tmp_path / "song", stems, fmt)
    assert [p.name for p in written] == ["loud.wav", "quiet.wav"]
    for name, audio in stems.items():
        data, rate = sf.read(tmp_path / "song" / f"{name}.wav", dtype="float32", always_2d=True)
        assert rate == 44100 and np.array_equal(data.T, prepare_for_output(audio, clip))
    assert sorted(os.listdir(tmp_path / "song")) == ["loud.wav", "quiet.wav"]  # no temporaries left


def test_a_failure_while_writing_blocks_leaves_no_stem_and_keeps_the_old_one(tmp_path):
    folder = tmp_path / "song"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"the user's file")
    with (
        pytest.raises(RuntimeError, match="interrupted"),
        StemWriter(folder, ["a", "b"], 44100, 1, OutputFormat()) as writer,
    ):
        writer.write({"a": np.zeros((1, 10), np.float32), "b": np.zeros((1, 10), np.float32)})
        assert len(os.listdir(folder)) == 3  # two hidden temporaries beside the user's file
        raise RuntimeError("interrupted")
    assert os.listdir(folder) == ["a.wav"] and (folder / "a.wav").read_bytes() == b"the user's file"


def test_a_failed_track_leaves_no_empty_folder(tmp_path):
    with pytest.raises(RuntimeError), StemWriter(tmp_path / "song", ["a"], 44100, 1, OutputFormat()):
        raise RuntimeError("the model failed")
    assert not (tmp_path / "song").exists()


def test_a_non_finite_block_is_never_written(tmp_path):
    with (
        pytest.raises(AudioError, match="non-finite samples"),
        StemWriter(tmp_path / "s", ["a"], 44100, 1, OutputFormat()) as w,
    ):
        w.write({"a": np.zeros((1, 10), np.float32)})
        w.write({"a": np.array([[0.0, np.nan]], np.float32)})
    assert not (tmp_path / "s").exists()


def test_open_audio_checks_like_read_audio_and_blocks_cover_the_file(tmp_path):
    path = tmp_path / "x.wav"
    audio = write_tone(path, seconds=1.0, samplerate=48000, subtype="FLOAT")
    audio[0, 5] = np.nan
    sf.write(path, audio.T, 48000, subtype="FLOAT")
    notes = []
    source = open_audio(path, report=notes.append)
    assert (source.samplerate, source.channels, source.frames, source.non_finite) == (48000, 2, 48000, 1)
    assert notes == [f"{path}: 1 non-finite sample(s) (NaN or infinity) read as silence"]
    blocks = list(source.blocks(block_frames=5000))
    assert [b.shape[1] for b in blocks] == [5000] * 9 + [3000]
    expected = np.nan_to_num(audio, nan=0.0)
    assert np.array_equal(np.concatenate(blocks, axis=1), expected)


def test_open_audio_refuses_a_truncated_file_before_any_work(tmp_path):
    path = tmp_path / "cut.wav"
    write_tone(path, seconds=1.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"cut\.wav is truncated: its header promises"):
        open_audio(path)


def test_a_length_over_the_limit_is_said_in_hours_and_minutes(tmp_path):
    """A 3 h 01 min WAV was "3.0 hours of audio; stemdeck reads up to 3 hours"."""
    import struct

    path = tmp_path / "long.wav"
    sf.write(str(path), np.zeros(8000, np.float32), 8000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    declared = (3 * 3600 + 61) * 8000 * 2  # 3 h 01 min 01 s of 16-bit mono at 8 kHz, in bytes
    at = data.index(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", declared)
    data[4:8] = struct.pack("<I", declared + at)
    path.write_bytes(bytes(data))
    os.truncate(path, at + 8 + declared)  # as long as declared, sparse: no disk used
    with pytest.raises(AudioError, match=r"declares 3 h 01 min of audio; stemdeck reads up to 3 h 00 min: split it$"):
        read_audio(path)


def test_a_pipe_is_named_as_one_not_as_an_empty_file(tmp_path):
    """`cat x.wav | stemdeck separate /dev/stdin` and a FIFO said "is empty (0 bytes)"."""
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioError, match=r"fifo.wav is a pipe or a device, not a file: save the audio to a file"):
        read_audio(fifo)
