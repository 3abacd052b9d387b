"""Audio files: every libsndfile format in, strict errors, atomic stem writing."""
import os

import numpy as np
import pytest
import soundfile as sf

from conftest import write_tone
from models.audio import AudioError, OutputFormat, read_audio, write_stems_atomically


@pytest.mark.parametrize("ext,kwargs", [("wav", {}), ("flac", {}), ("ogg", {}),
                                        ("mp3", {"format": "MP3"})])
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


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"RIFF\x10\x00\x00\x00WAVEfmt garbage garbage", "not a readable audio file"),
    (b"hello, I am a text file" * 40, "not a readable audio file"),
])
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


@pytest.mark.parametrize("fmt,subtype", [(OutputFormat("wav", "16"), "PCM_16"),
                                         (OutputFormat("flac", "24"), "PCM_24"),
                                         (OutputFormat("wav", "32f"), "FLOAT"),
                                         (OutputFormat("mp3"), "MPEG_LAYER_III")])
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
