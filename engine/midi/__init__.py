"""MIDI control of the engine: messages, bindings, mapping files, ports and the controller."""

from stemdeck.engine.midi.bindings import (
    Binding,
    Mapping,
    Scene,
    cc_to_db,
    db_to_cc,
    default_mapping,
    relative_delta,
    two_deck_mapping,
)
from stemdeck.engine.midi.controller import LearnResult, MidiConfig, MidiController
from stemdeck.engine.midi.mapping_file import (
    MappingError,
    load_mapping,
    load_user_mapping,
    save_mapping,
    user_mapping_path,
)
from stemdeck.engine.midi.messages import Message, parse
from stemdeck.engine.midi.ports import MidiError, list_ports

__all__ = [
    "Binding",
    "LearnResult",
    "Mapping",
    "MappingError",
    "Message",
    "MidiConfig",
    "MidiController",
    "MidiError",
    "Scene",
    "cc_to_db",
    "db_to_cc",
    "default_mapping",
    "list_ports",
    "load_mapping",
    "load_user_mapping",
    "parse",
    "relative_delta",
    "two_deck_mapping",
    "save_mapping",
    "user_mapping_path",
]
