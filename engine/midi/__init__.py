"""MIDI control of the engine: messages, bindings, mapping files, ports and the controller."""

from .bindings import Binding, Mapping, Scene, cc_to_db, db_to_cc, default_mapping, relative_delta
from .controller import LearnResult, MidiConfig, MidiController
from .mapping_file import MappingError, load_mapping, load_user_mapping, save_mapping, user_mapping_path
from .messages import Message, parse
from .ports import MidiError, list_ports

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
    "save_mapping",
    "user_mapping_path",
]
