"""Just enough of the MP4 box ("atom") layout to read and write one custom box under
``moov/udta``: NI STEM files keep their JSON manifest there, and neither PyAV nor mutagen writes
arbitrary boxes.

A box is a 32-bit big-endian size (the header included), a 4-byte type, and its payload; a size
of 1 means a 64-bit size follows the type, a size of 0 means "to the end of the enclosing box".
Growing ``moov`` moves every byte after it: where sample data (``mdat``) comes after ``moov``,
the chunk offsets in ``stco``/``co64`` are shifted by the growth, as MP4Box and mutagen do.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_MOOV_BYTES = 64 * 1024**2  # the index of a 3-hour five-stream file plus a large cover: ~10 MB
MAX_TOP_LEVEL_BOXES = 1024
# Boxes that hold only boxes, on the path from moov to the chunk offset tables.
OFFSET_PATH = (b"trak", b"mdia", b"minf", b"stbl")


class BoxError(ValueError):
    """The file's box layout is broken or beyond what stemdeck reads; the message says how."""


@dataclass(frozen=True)
class Box:
    """One box: where it starts, its header length and its whole size (header included)."""

    type: bytes
    start: int
    header: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def payload_start(self) -> int:
        return self.start + self.header


def box_bytes(box_type: bytes, payload: bytes) -> bytes:
    """A complete box; the 64-bit size form only where 32 bits cannot hold it."""
    size = 8 + len(payload)
    if size < 2**32:
        return struct.pack(">I4s", size, box_type) + payload
    return struct.pack(">I4sQ", 1, box_type, size + 8) + payload


def iter_boxes(data: bytes | bytearray | memoryview, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """The boxes laid end to end in ``data[start:end]``; a size that overruns them raises."""
    end = len(data) if end is None else end
    position = start
    while position < end:
        box = _parse_header(bytes(data[position : position + 16]), position, end)
        yield box
        position = box.end


def _parse_header(head: bytes, position: int, end: int) -> Box:
    if len(head) < 8 or end - position < 8:
        raise BoxError(f"a box header at byte {position} is cut short")
    size, box_type = struct.unpack(">I4s", head[:8])
    header = 8
    if size == 1:
        if len(head) < 16:
            raise BoxError(f"the 64-bit box size at byte {position} is cut short")
        size, header = struct.unpack(">Q", head[8:16])[0], 16
    elif size == 0:
        size = end - position
    if size < header or position + size > end:
        raise BoxError(f"box {_name(box_type)} at byte {position} claims {size} bytes, beyond its container")
    return Box(box_type, position, header, size)


def _name(box_type: bytes) -> str:
    return box_type.decode("latin-1").encode("unicode_escape").decode()


def top_level_boxes(path: Path) -> list[Box]:
    """The file's top-level boxes, read header by header (sample data is never loaded)."""
    boxes: list[Box] = []
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        position = 0
        while position < file_size:
            if len(boxes) >= MAX_TOP_LEVEL_BOXES:
                raise BoxError(f"more than {MAX_TOP_LEVEL_BOXES} top-level boxes")
            file.seek(position)
            box = _parse_header(file.read(16), position, file_size)
            boxes.append(box)
            position = box.end
    return boxes


def read_moov(path: Path) -> tuple[Box, bytes]:
    """The one ``moov`` box and its bytes, refused beyond ``MAX_MOOV_BYTES``."""
    boxes = [box for box in top_level_boxes(path) if box.type == b"moov"]
    if len(boxes) != 1:
        raise BoxError(f"{len(boxes)} moov boxes (an MP4 file has exactly one)")
    moov = boxes[0]
    if moov.size > MAX_MOOV_BYTES:
        raise BoxError(f"its moov box is {moov.size} bytes (stemdeck reads up to {MAX_MOOV_BYTES})")
    with open(path, "rb") as file:
        file.seek(moov.start)
        return moov, file.read(moov.size)


def find_child(data: bytes, parent: Box, box_type: bytes) -> Box | None:
    """The first ``box_type`` directly inside ``parent`` (both in ``data``)."""
    for box in iter_boxes(data, parent.payload_start, parent.end):
        if box.type == box_type:
            return box
    return None


def read_udta_box(path: Path, box_type: bytes) -> bytes | None:
    """The payload of ``moov/udta/<box_type>``, or None where it is absent."""
    moov_at, data = read_moov(path)
    moov = Box(moov_at.type, 0, moov_at.header, moov_at.size)
    udta = find_child(data, moov, b"udta")
    box = find_child(data, udta, box_type) if udta is not None else None
    return None if box is None else data[box.payload_start : box.end]


def put_udta_box(path: Path, box_type: bytes, payload: bytes) -> None:
    """Write ``moov/udta/<box_type>`` (replacing one already there), fixing the sizes of its
    parents and, where sample data follows ``moov``, the chunk offsets that point past it."""
    moov_at, data = read_moov(path)
    new_moov = bytearray(_with_udta_box(data, moov_at.header, box_type, payload))
    growth = len(new_moov) - moov_at.size
    if growth and moov_at.end < os.path.getsize(path):
        _shift_chunk_offsets(new_moov, moov_at.end, growth)
        _rewrite_moov(path, moov_at, bytes(new_moov))
        return
    with open(path, "r+b") as file:  # moov is last: rewrite it in place
        file.seek(moov_at.start)
        file.write(new_moov)
        file.truncate()


def _with_udta_box(moov: bytes, header: int, box_type: bytes, payload: bytes) -> bytes:
    root = Box(b"moov", 0, header, len(moov))
    udta = find_child(moov, root, b"udta")
    new_box = box_bytes(box_type, payload)
    if udta is None:
        children = moov[header:] + box_bytes(b"udta", new_box)
    else:
        kept = b"".join(
            moov[box.start : box.end] for box in iter_boxes(moov, udta.payload_start, udta.end) if box.type != box_type
        )
        children = moov[header : udta.start] + box_bytes(b"udta", kept + new_box) + moov[udta.end :]
    return box_bytes(b"moov", children)


def _shift_chunk_offsets(moov: bytearray, after: int, growth: int) -> None:
    """Add ``growth`` to every chunk offset at or past ``after`` (data that moved)."""
    root = next(iter_boxes(moov))
    for table in _offset_tables(moov, root, 0):
        version_flags = 4
        (count,) = struct.unpack(">I", moov[table.payload_start + 4 : table.payload_start + 8])
        width, code = (4, ">I") if table.type == b"stco" else (8, ">Q")
        first = table.payload_start + version_flags + 4
        if first + count * width > table.end:
            raise BoxError(f"the {table.type.decode()} table claims {count} offsets, beyond its box")
        for index in range(count):
            at = first + index * width
            (offset,) = struct.unpack(code, moov[at : at + width])
            if offset >= after:
                offset += growth
                if width == 4 and offset >= 2**32:
                    raise BoxError("a chunk offset outgrows 32 bits; write the file with moov at its end")
                struct.pack_into(code, moov, at, offset)


def _offset_tables(data: bytearray, parent: Box, depth: int) -> Iterator[Box]:
    for box in iter_boxes(data, parent.payload_start, parent.end):
        if depth < len(OFFSET_PATH) and box.type == OFFSET_PATH[depth]:
            yield from _offset_tables(data, box, depth + 1)
        elif depth == len(OFFSET_PATH) and box.type in (b"stco", b"co64"):
            yield box


def _rewrite_moov(path: Path, moov: Box, new_moov: bytes) -> None:
    """Copy the file with the new moov into a neighbour, then swap it in (never half-written)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.boxes.tmp")
    try:
        with open(path, "rb") as source, open(partial, "wb") as target:
            _copy_range(source, target, 0, moov.start)
            target.write(new_moov)
            source.seek(moov.end)
            shutil.copyfileobj(source, target, 1024**2)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _copy_range(source, target, start: int, length: int) -> None:
    source.seek(start)
    remaining = length
    while remaining:
        chunk = source.read(min(remaining, 1024**2))
        if not chunk:
            raise BoxError("the file ended while it was being copied")
        target.write(chunk)
        remaining -= len(chunk)
