"""Raw MIDI bytes to the few messages stemdeck binds; everything else is dropped, never an error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

NOTE_OFF, NOTE_ON, CONTROL_CHANGE, PROGRAM_CHANGE = 0x80, 0x90, 0xB0, 0xC0
_DATA_BYTES = {NOTE_OFF: 2, NOTE_ON: 2, CONTROL_CHANGE: 2, PROGRAM_CHANGE: 1}


@dataclass(frozen=True)
class Message:
    kind: str  # "note_on", "note_off", "cc" or "program"
    channel: int  # 1-16, as controllers print it
    number: int  # note, controller or program number
    value: int = 0  # velocity or controller value

    @property
    def family(self) -> str:
        """What a binding matches on: a note's on and off are the same key."""
        return "note" if self.kind.startswith("note") else self.kind

    def describe(self) -> str:
        what = {"note": "note", "cc": "CC", "program": "program"}[self.family]
        return f"{what} {self.number} on channel {self.channel}"


def parse(data: Sequence[int]) -> Message | None:
    """A Message, or None for SysEx, clock, pressure, pitch bend, stray data and malformed bytes."""
    if not data or not 0x80 <= data[0] < 0xF0:  # system messages, or data without a status byte
        return None
    status, channel = data[0] & 0xF0, (data[0] & 0x0F) + 1
    needed = _DATA_BYTES.get(status)
    if needed is None or len(data) != needed + 1 or any(not 0 <= b < 0x80 for b in data[1:]):
        return None
    if status == PROGRAM_CHANGE:
        return Message("program", channel, data[1])
    if status == CONTROL_CHANGE:
        return Message("cc", channel, data[1], data[2])
    if status == NOTE_ON and data[2] > 0:
        return Message("note_on", channel, data[1], data[2])
    return Message("note_off", channel, data[1], 0)  # Note On with velocity 0 is a Note Off


def note_on(channel: int, note: int, velocity: int) -> list[int]:
    return [NOTE_ON | (channel - 1), note, velocity]


def control_change(channel: int, controller: int, value: int) -> list[int]:
    return [CONTROL_CHANGE | (channel - 1), controller, value]
