"""Issue 16: NI STEM files (.stem.mp4) written from a generated song and read back — five stereo
streams in NI's order, the stem box's JSON, sample-exact lengths (ALAC bit-exact at 24 bits,
AAC with its encoder delay trimmed), the input's tags carried over, and broken files refused in
one line."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from mutagen.flac import FLAC, Picture
from mutagen.mp4 import MP4

from stemdeck.models.demo import SAMPLERATE, demo_stems
from stemdeck.models.mp4_boxes import find_child, iter_boxes, put_udta_box, read_udta_box, top_level_boxes
from stemdeck.models.stem_file import (
    MASTERING_DSP,
    NI_STEMS,
    STREAMS,
    StemFileError,
    StemTags,
    is_stem_file,
    ni_stems,
    read_stem_file,
    read_stem_manifest,
    read_tags,
    write_stem_file,
    write_stem_track,
)

SECONDS = 2.0
ODD_FRAMES = 777  # not a multiple of ALAC's 4096 nor AAC's 1024: the last packet is partial


@pytest.fixture(scope="module")
def song() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    frames = int(SECONDS * SAMPLERATE) + ODD_FRAMES
    stems = {name: stem[:, :frames] for name, stem in demo_stems(SECONDS + 1).items()}
    return sum(stems.values()), stems


@pytest.fixture(scope="module")
def alac_file(tmp_path_factory, song) -> Path:
    path = tmp_path_factory.mktemp("stem") / "song.stem.mp4"
    master, stems = song
    assert write_stem_file(path, master, stems, SAMPLERATE) is None  # four stems: nothing to say
    return path


def _quantised(audio: np.ndarray, bits: int = 24) -> np.ndarray:
    scale = 2 ** (bits - 1)
    return (np.clip(np.round(audio.astype(np.float64) * scale), -scale, scale - 1) / scale).astype(np.float32)


def _snr_db(reference: np.ndarray, actual: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum((actual - reference) ** 2.0)))


def test_alac_round_trip_is_bit_exact_at_24_bits(alac_file, song):
    master, stems = song
    master_read, stems_read, samplerate = read_stem_file(alac_file)
    assert samplerate == SAMPLERATE
    assert list(stems_read) == list(NI_STEMS)
    assert master_read.shape == master.shape and master_read.dtype == np.float32
    assert np.array_equal(master_read, _quantised(master))
    for name in NI_STEMS:
        assert stems_read[name].shape == stems[name].shape
        assert np.array_equal(stems_read[name], _quantised(stems[name])), name
    assert np.abs(stems_read["vocals"]).max() > 0.05  # not silence that agrees


def test_alac_at_16_bits_is_exact_at_16_bits_and_smaller(tmp_path, alac_file, song):
    master, stems = song
    path = tmp_path / "song16.stem.mp4"
    write_stem_file(path, master, stems, SAMPLERATE, bits=16)
    master_read, stems_read, _ = read_stem_file(path)
    assert np.array_equal(master_read, _quantised(master, 16))
    assert all(np.array_equal(stems_read[name], _quantised(stems[name], 16)) for name in NI_STEMS)
    assert path.stat().st_size < 0.8 * alac_file.stat().st_size
    with pytest.raises(ValueError, match="16 or 24-bit"):
        write_stem_file(tmp_path / "x.stem.mp4", master, stems, SAMPLERATE, bits=32)


def test_five_stereo_streams_in_ni_order_only_the_master_enabled(alac_file, song):
    """What ffprobe would list: five ALAC stereo streams named master, drums, bass, other, vocals,
    each as long as the input; only the master's track is enabled (ordinary players play it)."""
    with av.open(str(alac_file)) as container:
        streams = list(container.streams)
        assert [s.type for s in streams] == ["audio"] * 5
        assert [s.codec_context.name for s in streams] == ["alac"] * 5
        assert [s.codec_context.channels for s in streams] == [2] * 5
        assert [s.metadata.get("handler_name") for s in streams] == list(STREAMS)
        ends = [0] * 5
        for packet in container.demux():
            if packet.pts is not None:
                ends[packet.stream.index] = max(ends[packet.stream.index], packet.pts + packet.duration)
    assert ends == [song[0].shape[-1]] * 5
    assert _track_enabled_flags(alac_file) == [True, False, False, False, False]
    assert [box.type for box in top_level_boxes(alac_file)][-1] == b"moov"  # grows without moving samples


def _track_enabled_flags(path: Path) -> list[bool]:
    data = path.read_bytes()
    moov = next(box for box in iter_boxes(data) if box.type == b"moov")
    flags = []
    for trak in iter_boxes(data, moov.payload_start, moov.end):
        if trak.type == b"trak":
            tkhd = find_child(data, trak, b"tkhd")
            flags.append(bool(struct.unpack(">I", data[tkhd.payload_start : tkhd.payload_start + 4])[0] & 1))
    return flags


def test_stem_box_holds_ni_manifest_with_stemdecks_colours(alac_file):
    from stemdeck.gui.theme import STEM_COLOURS

    manifest = json.loads(read_udta_box(alac_file, b"stem"))
    assert manifest == read_stem_manifest(alac_file)
    assert manifest["version"] == 1
    assert set(manifest["mastering_dsp"]) == {"compressor", "limiter"}
    compressor, limiter = manifest["mastering_dsp"]["compressor"], manifest["mastering_dsp"]["limiter"]
    assert set(compressor) == {
        "enabled",
        "input_gain",
        "output_gain",
        "threshold",
        "dry_wet",
        "attack",
        "release",
        "ratio",
        "hp_cutoff",
    }
    assert set(limiter) == {"enabled", "threshold", "ceiling", "release"}
    assert compressor["enabled"] is False and limiter["enabled"] is False  # stems sum to the master untouched
    assert manifest["mastering_dsp"] == MASTERING_DSP
    assert [stem["name"] for stem in manifest["stems"]] == ["Drums", "Bass", "Other", "Vocals"]
    assert [stem["color"] for stem in manifest["stems"]] == [STEM_COLOURS[name] for name in NI_STEMS]
    assert all(len(stem["color"]) == 7 and stem["color"][0] == "#" for stem in manifest["stems"])


def test_aac_lengths_equal_the_input_encoder_delay_trimmed(tmp_path, song):
    """AAC puts 1024 frames of encoder delay before the audio (a packet at pts -1024) and pads
    the last frame: the reader lays frames at their timestamps from 0 and ends where the last
    packet's duration says, so the length is the input's and the stems line up with it."""
    master, stems = song
    path = tmp_path / "song.stem.mp4"
    write_stem_file(path, master, stems, SAMPLERATE, codec="aac")
    with av.open(str(path)) as container:
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"] * 5
        first_pts = next(iter(container.demux(container.streams.audio[0]))).pts
    assert first_pts == -1024  # the delay is there to trim
    master_read, stems_read, samplerate = read_stem_file(path)
    assert samplerate == SAMPLERATE and master_read.shape == master.shape
    assert _snr_db(master, master_read) > 20.0
    for name in NI_STEMS:
        assert stems_read[name].shape == stems[name].shape
        assert _snr_db(stems[name], stems_read[name]) > 20.0, name
    # one frame of misalignment costs the bass most of its accuracy: it is aligned to the sample
    shifted = _snr_db(stems["bass"][:, 1:], stems_read["bass"][:, :-1])
    assert _snr_db(stems["bass"], stems_read["bass"]) > shifted + 10.0


@pytest.mark.parametrize("codec", ["aac", "alac"])
def test_each_streams_edit_list_gives_its_length_to_the_frame(tmp_path, song, codec):
    """Players that honour MP4 edit lists (the way to mark AAC's padding past the end as not
    audio) end each stream where the song ends: the edit's duration is the written length in
    frames (ffmpeg's default movie timescale, 1000, rounds it to the millisecond), and AAC's
    edit starts after its 1024 frames of encoder delay."""
    master, stems = song
    path = tmp_path / "song.stem.mp4"
    write_stem_file(path, master, stems, SAMPLERATE, codec=codec)
    data = path.read_bytes()
    edits = _edit_lists(data)
    assert len(edits) == len(STREAMS)
    movie_timescale = struct.unpack(">I", data[data.find(b"mvhd") + 16 : data.find(b"mvhd") + 20])[0]
    assert movie_timescale == SAMPLERATE
    delay = 1024 if codec == "aac" else 0
    assert edits == [(master.shape[-1], delay)] * len(STREAMS)


def _edit_lists(data: bytes) -> list[tuple[int, int]]:
    """Each ``elst`` box's one edit: (segment duration in movie timescale, media time)."""
    edits, at = [], data.find(b"elst")
    while at >= 0:
        version, count = data[at + 4], struct.unpack(">I", data[at + 8 : at + 12])[0]
        assert count == 1
        layout = ">Qq" if version else ">Ii"
        edits.append(struct.unpack(layout, data[at + 12 : at + 12 + struct.calcsize(layout)]))
        at = data.find(b"elst", at + 1)
    return edits


def _png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _tagged_flac(path: Path, audio: np.ndarray, cover: bytes) -> None:
    sf.write(str(path), audio.T, SAMPLERATE, subtype="PCM_16")
    flac = FLAC(str(path))
    flac["title"], flac["artist"], flac["album"] = "Demo Song", "stemdeck", "Tests"
    picture = Picture()
    picture.type, picture.mime, picture.data = 3, "image/png", cover
    flac.add_picture(picture)
    flac.save()


def test_tags_and_cover_carried_over_from_a_flac_input(tmp_path, song):
    master, stems = song
    cover = _png()
    source = tmp_path / "song.flac"
    _tagged_flac(source, master, cover)
    tags = read_tags(source)
    assert tags == StemTags("Demo Song", "stemdeck", "Tests", cover, "image/png")
    audio, samplerate = sf.read(str(source), dtype="float32", always_2d=True)
    path = tmp_path / "song.stem.mp4"
    write_stem_file(path, audio.T, stems, samplerate, tags=tags)
    mp4 = MP4(str(path))
    assert mp4.tags["\xa9nam"] == ["Demo Song"] and mp4.tags["\xa9ART"] == ["stemdeck"]
    assert mp4.tags["\xa9alb"] == ["Tests"]
    assert bytes(mp4.tags["covr"][0]) == cover
    master_read, stems_read, _ = read_stem_file(path)  # the tags moved nothing the reader needs
    assert np.array_equal(master_read, audio.T)  # a 16-bit master is exact in a 24-bit ALAC
    assert np.array_equal(stems_read["bass"], _quantised(stems["bass"]))


def test_tags_from_ogg_style_comments_and_untagged_files(tmp_path, song):
    untagged = tmp_path / "plain.wav"
    sf.write(str(untagged), song[0].T, SAMPLERATE)
    assert read_tags(untagged) == StemTags()
    assert read_tags(tmp_path / "missing.flac") == StemTags()
    ogg = tmp_path / "song.ogg"
    sf.write(str(ogg), song[0][:, :4410].T, SAMPLERATE, format="OGG", subtype="VORBIS")
    from mutagen.oggvorbis import OggVorbis

    vorbis = OggVorbis(str(ogg))
    picture = Picture()
    picture.type, picture.mime, picture.data = 3, "image/png", _png()
    vorbis["title"], vorbis["metadata_block_picture"] = "Ogg Song", base64.b64encode(picture.write()).decode()
    vorbis.save()
    assert read_tags(ogg) == StemTags("Ogg Song", None, None, _png(), "image/png")


def test_six_stem_model_sums_guitar_and_piano_into_other(tmp_path, song):
    _, stems = song
    six = {**stems, "guitar": stems["other"] * 0.5, "piano": stems["vocals"] * 0.25}
    four, note = ni_stems(six)
    assert list(four) == list(NI_STEMS)
    assert np.allclose(four["other"], stems["other"] * 1.5 + stems["vocals"] * 0.25, atol=1e-6)
    assert np.array_equal(four["vocals"], stems["vocals"])
    assert note == "other + guitar + piano summed into other (an NI STEM file holds four stems)"
    path = tmp_path / "six.stem.mp4"
    assert write_stem_file(path, sum(six.values()), six, SAMPLERATE) == note
    _, read, _ = read_stem_file(path)
    assert np.array_equal(read["other"], _quantised(four["other"]))
    _, note = ni_stems({"vocals": stems["vocals"], "accompaniment": stems["bass"]})
    assert note == (
        "accompaniment summed into other (an NI STEM file holds four stems); "
        "the model has no drums, bass: silent in the stem file"
    )


def _decode_all(path: Path, streams: int = 2) -> list[np.ndarray]:
    decoded = []
    for index in range(streams):  # one pass per stream: a decode reads the container to its end
        with av.open(str(path)) as container:
            decoded.append(np.concatenate([f.to_ndarray() for f in container.decode(audio=index)], axis=1))
    return decoded


def test_box_writer_fixes_chunk_offsets_when_moov_comes_first(tmp_path):
    """A 'faststart' MP4 (moov before the samples): growing moov moves every sample, so the
    chunk offsets must move with it or every decoder reads garbage."""
    path = tmp_path / "faststart.mp4"
    tone = (0.25 * np.sin(np.arange(30000) / 7.0)).astype(np.float32)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as container:
        streams = [container.add_stream("alac", rate=SAMPLERATE, layout="stereo", format="s32p") for _ in range(2)]
        for stream, gain in zip(streams, (1.0, 0.5), strict=True):
            block = (np.stack([tone, tone]) * gain * 2**23).astype(np.int32) << 8
            frame = av.AudioFrame.from_ndarray(block, format="s32p", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = SAMPLERATE, 0, Fraction(1, SAMPLERATE)
            container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    assert [box.type for box in top_level_boxes(path)].index(b"moov") < [
        box.type for box in top_level_boxes(path)
    ].index(b"mdat")
    before = _decode_all(path)
    put_udta_box(path, b"stem", b'{"version":1}')
    put_udta_box(path, b"stem", b'{"version":1,"again":true}' + b" " * 5000)  # replaced, not added
    assert read_udta_box(path, b"stem").rstrip() == b'{"version":1,"again":true}'
    after = _decode_all(path)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    expected = (np.stack([tone, tone]) * 2**23).astype(np.int32) << 8
    assert np.array_equal(after[0], expected)  # the samples written, not two garbage reads that agree
    data = path.read_bytes()
    moov = next(box for box in iter_boxes(data) if box.type == b"moov")
    udta = find_child(data, moov, b"udta")
    assert [box.type for box in iter_boxes(data, udta.payload_start, udta.end)].count(b"stem") == 1


# -- broken and hostile files: one line naming the file ----------------------------------------


def _one_line_error(path: Path, *phrases: str) -> str:
    with pytest.raises(StemFileError) as caught:
        read_stem_file(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert isinstance(caught.value, ValueError)
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_truncated_stem_file_is_one_line(tmp_path, alac_file):
    cut = tmp_path / "cut.stem.mp4"
    cut.write_bytes(alac_file.read_bytes()[: alac_file.stat().st_size // 2])
    _one_line_error(cut, "not a readable MP4 file")
    header_only = tmp_path / "header.stem.mp4"
    header_only.write_bytes(alac_file.read_bytes()[:6])
    _one_line_error(header_only, "cut short")


def test_moov_with_truncated_samples_is_one_line(tmp_path, alac_file):
    """The index intact, the samples it points at gone (a copy that stopped early, moov first)."""
    data = alac_file.read_bytes()
    boxes = top_level_boxes(alac_file)
    mdat = next(box for box in boxes if box.type == b"mdat")
    moov = next(box for box in boxes if box.type == b"moov")
    short = bytearray(data[: mdat.start]) + data[moov.start : moov.end]  # mdat dropped: offsets point nowhere
    path = tmp_path / "nosamples.stem.mp4"
    path.write_bytes(bytes(short))
    _one_line_error(path)


def test_stem_box_with_bad_json_is_one_line(tmp_path, alac_file):
    path = tmp_path / "badjson.stem.mp4"
    path.write_bytes(alac_file.read_bytes())
    put_udta_box(path, b"stem", b'{"version": 1, "stems": [')
    _one_line_error(path, "stem box is not valid JSON")
    put_udta_box(path, b"stem", json.dumps({"version": 1, "stems": [{"name": "a"}] * 3}).encode())
    _one_line_error(path, "lists 3 stems")
    put_udta_box(path, b"stem", b" " * 70_000)
    _one_line_error(path, "70000 bytes")
    put_udta_box(path, b"stem", b'["version"]')
    _one_line_error(path, "not a JSON object")


def test_three_streams_and_no_stem_box_are_one_line(tmp_path, song):
    path = tmp_path / "three.stem.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        for stream in [container.add_stream("aac", rate=SAMPLERATE, layout="stereo") for _ in range(3)]:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(song[0][:, :8192]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = SAMPLERATE, 0, Fraction(1, SAMPLERATE)
            container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    _one_line_error(path, "no moov/udta/stem box")
    put_udta_box(path, b"stem", read_udta_box(path.parent / "three.stem.mp4", b"stem") or b"")
    manifest = {"version": 1, "mastering_dsp": MASTERING_DSP, "stems": [{"name": n} for n in NI_STEMS]}
    put_udta_box(path, b"stem", json.dumps(manifest).encode())
    _one_line_error(path, "3 audio streams, an NI STEM file has 5")


def test_not_an_mp4_and_a_lying_box_size_are_one_line(tmp_path, song, alac_file):
    wav = tmp_path / "song.wav"
    sf.write(str(wav), song[0][:, :1000].T, SAMPLERATE)
    _one_line_error(wav, "not a readable MP4 file")
    data = bytearray(alac_file.read_bytes())
    moov = next(box for box in top_level_boxes(alac_file) if box.type == b"moov")
    struct.pack_into(">I", data, moov.start, 0xFFFFFFF0)  # moov claims 4 GB
    lying = tmp_path / "lying.stem.mp4"
    lying.write_bytes(bytes(data))
    _one_line_error(lying, "beyond its container")
    _one_line_error(tmp_path / "absent.stem.mp4", "cannot read it")


def test_stem_files_are_known_by_name_or_by_their_box(tmp_path, alac_file):
    renamed = tmp_path / "song.mp4"
    renamed.write_bytes(alac_file.read_bytes())
    assert is_stem_file(alac_file) and is_stem_file(renamed)
    assert is_stem_file(tmp_path / "absent.stem.m4a")  # by name: its reader says what is wrong
    plain = tmp_path / "plain.m4a"
    with av.open(str(plain), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=SAMPLERATE, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.zeros((2, 2048), np.float32), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLERATE, 0, Fraction(1, SAMPLERATE)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert not is_stem_file(plain) and not is_stem_file(tmp_path / "song.flac")


def _blocks(audio: np.ndarray, sizes: tuple[int, ...]):
    start, index = 0, 0
    while start < audio.shape[-1]:
        size = sizes[index % len(sizes)]
        yield audio[:, start : start + size]
        start, index = start + size, index + 1


@pytest.mark.parametrize("codec", ["alac", "aac"])
def test_streamed_track_equals_the_whole_array_file(tmp_path, song, alac_file, codec):
    """`separate --format stem` hands over stems block by block (any sizes) with the master read
    alongside in blocks of its own: the file reads back as the one written from whole arrays."""
    master, stems = song
    target = tmp_path / "out" / "song.stem.mp4"
    stem_blocks = (
        {name: part for name, part in zip(stems, parts, strict=True)}
        for parts in zip(*(_blocks(stem, (3000, 777, 5000)) for stem in stems.values()), strict=True)
    )
    note = write_stem_track(target, _blocks(master, (1000, 65536)), stem_blocks, SAMPLERATE, codec=codec)
    assert note is None and [p.name for p in target.parent.iterdir()] == ["song.stem.mp4"]
    master_read, stems_read, _ = read_stem_file(target)
    whole = alac_file if codec == "alac" else tmp_path / "whole.stem.mp4"
    if codec == "aac":
        write_stem_file(whole, master, stems, SAMPLERATE, codec="aac")
    reference, reference_stems, _ = read_stem_file(whole)
    assert np.array_equal(master_read, reference)  # the encoder was fed the same frames
    assert all(np.array_equal(stems_read[name], reference_stems[name]) for name in NI_STEMS)


def test_stem_track_never_overwrites_without_force_nor_leaves_half_a_file(tmp_path, song):
    master, stems = song
    target = tmp_path / "song.stem.mp4"
    target.write_bytes(b"keep me")
    with pytest.raises(StemFileError, match="already exists; use --force"):
        write_stem_track(target, [master], [stems], SAMPLERATE)
    assert target.read_bytes() == b"keep me"

    def failing():
        yield {name: stem[:, :10000] for name, stem in stems.items()}
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError, match="the model failed"):
        write_stem_track(target, [master], failing(), SAMPLERATE, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["song.stem.mp4"] and target.read_bytes() == b"keep me"
    stale = tmp_path / ".song.999999999.0badc0de.mp4.partial"  # a killed run's (no such process)
    stale.write_bytes(b"half")
    write_stem_track(target, [master], [stems], SAMPLERATE, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["song.stem.mp4"]
    assert read_stem_file(target)[0].shape == master.shape


def _five_streams(path: Path, layouts: list[str], frames: list[int]) -> None:
    """Five ALAC streams of the given layouts and lengths, with a valid stem box."""
    with av.open(str(path), "w", format="mp4") as container:
        streams = [container.add_stream("alac", rate=SAMPLERATE, layout=layout, format="s16p") for layout in layouts]
        for stream, layout, length in zip(streams, layouts, frames, strict=True):
            channels = 1 if layout == "mono" else 2
            frame = av.AudioFrame.from_ndarray(
                np.full((channels, length), 1000, np.int16), format="s16p", layout=layout
            )
            frame.sample_rate, frame.pts, frame.time_base = SAMPLERATE, 0, Fraction(1, SAMPLERATE)
            container.mux(stream.encode(frame))
        for stream in streams:
            container.mux(stream.encode(None))
    manifest = {"version": 1, "mastering_dsp": MASTERING_DSP, "stems": [{"name": n} for n in NI_STEMS]}
    put_udta_box(path, b"stem", json.dumps(manifest).encode())


def test_a_mono_stream_lengths_apart_and_an_overlong_file_are_one_line(tmp_path, monkeypatch):
    mono = tmp_path / "mono.stem.mp4"
    _five_streams(mono, ["stereo"] * 3 + ["mono", "stereo"], [20000] * 5)
    _one_line_error(mono, "stream 3 (other) has 1 channel(s); NI STEM streams are stereo")
    apart = tmp_path / "apart.stem.mp4"
    _five_streams(apart, ["stereo"] * 5, [40000, 40000, 40000, 40000, 20000])
    _one_line_error(apart, "stream 4 (vocals) decodes 20000 of 20000 frames (the master has 40000)")
    fine = tmp_path / "fine.stem.mp4"
    _five_streams(fine, ["stereo"] * 5, [40000] * 5)
    assert read_stem_file(fine)[0].shape == (2, 40000)
    monkeypatch.setattr("stemdeck.models.stem_file.MAX_DURATION_S", 0.5)  # the cap, checked while decoding
    _one_line_error(fine, "minutes, the most stemdeck reads")


# -- `stemdeck separate --format stem` ------------------------------------------------------------


@pytest.mark.slow  # three separations with the tiny model: about 40 s on a loaded 2-core machine
def test_separate_format_stem_writes_one_file_with_the_input_as_master(
    tmp_path, song, tiny_checkpoint, tiny_model, capsys
):
    """The CLI end to end with a small checkpoint: <OUTDIR>/<track>.stem.mp4, the master the
    input (a 16-bit FLAC: exact in 24-bit ALAC), the stems the model's, the tags carried over,
    no per-stem files, and no overwrite without --force."""
    from stemdeck.cli import main
    from stemdeck.models.separate import separate

    master, _ = song
    source = tmp_path / "song.flac"
    _tagged_flac(source, master, _png())
    out = tmp_path / "out"
    argv = ["separate", str(source), "-o", str(out), "--model", str(tiny_checkpoint), "--precision", "fp32"]
    argv += ["--format", "stem"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["song.stem.mp4"]
    target = out / "song.stem.mp4"
    master_read, stems_read, samplerate = read_stem_file(target)
    audio, _ = sf.read(str(source), dtype="float32", always_2d=True)
    assert samplerate == SAMPLERATE and np.array_equal(master_read, audio.T)
    expected = separate(tiny_model, audio.T, SAMPLERATE, precision="fp32")
    for name in NI_STEMS:
        assert np.abs(stems_read[name] - _quantised(expected[name])).max() < 1e-3, name
    assert np.abs(stems_read["vocals"]).max() > 0.01
    tags = MP4(str(target)).tags
    assert tags["\xa9nam"] == ["Demo Song"] and bytes(tags["covr"][0]) == _png()
    before = target.read_bytes()
    assert main(argv) == 1  # exists: kept, said in one line
    assert target.read_bytes() == before
    assert main([*argv, "--codec", "aac", "--force"]) == 0
    with av.open(str(target)) as container:
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"] * 5
    assert read_stem_file(target)[0].shape == master_read.shape
    capsys.readouterr()
    assert main([*argv, "--two-stems", "vocals"]) == 1 and main([*argv, "--bits", "32f"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "stemdeck: error: --format stem writes drums, bass, other and vocals; drop --stems/--two-stems",
        "stemdeck: error: --format stem holds 16 or 24-bit ALAC (or AAC); use --bits 16 or 24",
    ]


def test_separate_format_stem_of_a_mono_song(tmp_path):
    """A mono song's master, (1, n), was joined onto a stereo empty start: a numpy error, no file.
    Its five streams are stereo, both channels the song."""
    from stemdeck.cli import main

    t = np.arange(2 * SAMPLERATE) / SAMPLERATE
    mono = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    source = tmp_path / "mono.wav"
    sf.write(str(source), mono, SAMPLERATE, subtype="PCM_16")
    out = tmp_path / "out"
    assert main(["separate", str(source), "-o", str(out), "--model", "passthrough", "--format", "stem"]) == 0
    master, stems, samplerate = read_stem_file(out / "mono.stem.mp4")
    heard, _ = sf.read(str(source), dtype="float32")
    assert samplerate == SAMPLERATE and master.shape == (2, len(mono))
    assert np.array_equal(master[0], heard) and np.array_equal(master[1], heard)
    for name, fraction in zip(NI_STEMS, (0.1, 0.2, 0.3, 0.4), strict=True):
        assert np.abs(stems[name] - fraction * heard).max() < 1e-3, name


def test_a_full_disk_is_one_line_that_says_so_and_leaves_no_partial(tmp_path, song, monkeypatch):
    """ENOSPC while encoding was reported as "separation failed (OSError ...); this is a bug in
    stemdeck" (WAV stems already said "free some space")."""
    import errno

    from stemdeck.models import stem_file

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stem_file.StemFileWriter, "write", full)
    master, stems = song
    target = tmp_path / "song.stem.mp4"
    with pytest.raises(StemFileError, match=r"^cannot write .*song.stem.mp4: No space left on device; free some space"):
        write_stem_track(target, iter([master]), iter([stems]), SAMPLERATE)
    assert list(tmp_path.iterdir()) == []
