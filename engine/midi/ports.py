"""MIDI ports through python-rtmidi: which system, which ports, opened by name or part of it."""

from __future__ import annotations

import re

from stemdeck.engine.device import quiet_stderr

API_NAMES = ("auto", "jack", "alsa")


class MidiError(RuntimeError):
    """A one-line problem with the MIDI system or a port, with what to do."""


def rtmidi():
    try:
        import rtmidi as module
    except ImportError:
        raise MidiError("python-rtmidi is not installed; `pip install python-rtmidi`") from None
    return module


def midi_client_name(base: str, direction: str) -> str:
    """``stemdeck-midi-in`` / ``stemdeck-midi-out``: a name per direction, so the MIDI system
    does not show a ``stemdeck`` and a numbered ``stemdeck-01`` beside the audio client ``stemdeck``."""
    return f"{base}-midi-{direction}"


def _api_constant(name: str) -> int:
    rt = rtmidi()
    return {"jack": rt.API_UNIX_JACK, "alsa": rt.API_LINUX_ALSA}[name]


# Messages an input holds until our dispatcher reads them (rtmidi's default, 1024, overflowed in
# a 0.1 s stall under a 10 000-message/s flood); a queued message takes a few dozen bytes.
INPUT_QUEUE_MESSAGES = 16384


def open_client(direction: str, api: str = "auto", client_name: str = "stemdeck"):
    """An rtmidi MidiIn/MidiOut on ``api``; "auto" takes JACK when a server runs, else ALSA."""
    rt = rtmidi()
    if api not in API_NAMES:
        raise MidiError(f"unknown MIDI system {api!r} (use {', '.join(API_NAMES)})")
    inputs = direction == "in"
    klass, options = (rt.MidiIn, {"queue_size_limit": INPUT_QUEUE_MESSAGES}) if inputs else (rt.MidiOut, {})
    compiled = {rt.get_api_name(a) for a in rt.get_compiled_api()}
    candidates = ["jack", "alsa"] if api == "auto" else [api]
    problems = []
    for name in candidates:
        if name not in compiled:
            problems.append(f"{name}: not compiled into python-rtmidi")
            continue
        try:
            with quiet_stderr():
                client = klass(rtapi=_api_constant(name), name=client_name, **options)
                client.get_port_count()
            return client
        except rt.RtMidiError as exc:
            problems.append(f"{name}: {str(exc).splitlines()[0]}")
    raise MidiError(
        "no MIDI system to open ("
        + "; ".join(problems)
        + "); start a JACK server or load ALSA's sequencer (modprobe snd-seq)"
    )


def is_jack_client(client) -> bool:
    """Whether an rtmidi client talks to a JACK server (not ALSA's sequencer)."""
    return client.get_current_api() == rtmidi().API_UNIX_JACK


def port_names(client) -> list[str]:
    with quiet_stderr():
        return list(client.get_ports())


def queued_messages(client) -> list[list[int]]:
    """The messages an rtmidi input queued since the last call, oldest first. Read from a thread
    of ours: an rtmidi callback would run Python on rtmidi's thread (see engine.midi.controller)."""
    messages = []
    while (event := client.get_message()) is not None:
        messages.append(event[0])
    return messages


def list_ports(api: str = "auto") -> tuple[list[str], list[str]]:
    """(inputs, outputs) as the MIDI system names them."""
    inputs, outputs = open_client("in", api, "stemdeck-list"), open_client("out", api, "stemdeck-list")
    try:
        return port_names(inputs), port_names(outputs)
    finally:
        for client in (inputs, outputs):
            client.delete()


def normalise_port_name(name: str) -> str:
    """A port's name without the numbers the system adds on each plug (ALSA ``20:0``, JACK ``-01``)."""
    name = re.sub(r"\s+\d+:\d+$", "", name.strip())
    client, colon, port = name.partition(":")
    client = re.sub(r"-\d+$", "", client)
    return f"{client}{colon}{port}".lower()


def client_part(name: str) -> str:
    return normalise_port_name(name).partition(":")[0]


def is_own_client(client: str, own_client: str) -> bool:
    own = own_client.lower()
    return client in (own, midi_client_name(own, "in"), midi_client_name(own, "out"))


def find_port(names: list[str], wanted: str, own_client: str = "stemdeck") -> int | None:
    """Index of the port named ``wanted`` (exactly, or part of its name); never one of our own."""
    candidates = [(i, n) for i, n in enumerate(names) if not is_own_client(client_part(n), own_client)]
    for i, name in candidates:
        if name == wanted:
            return i
    key = normalise_port_name(wanted)
    for i, name in candidates:
        if key in normalise_port_name(name):
            return i
    return None


def describe_ports(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names) if names else "none"
