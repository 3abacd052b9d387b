"""``stemdeck midi …`` and the ``--midi-*`` options of the session commands."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from stemdeck.engine.midi.bindings import DECK_NAMES, DECKS_CONTROLS, STEM_NAMES, default_mapping
from stemdeck.engine.midi.controller import MidiConfig, MidiController
from stemdeck.engine.midi.mapping_file import (
    MappingError,
    load_mapping,
    load_user_decks_mapping,
    load_user_mapping,
    mapping_text,
    parse_target,
    save_mapping,
    user_decks_mapping_path,
    user_mapping_path,
)
from stemdeck.engine.midi.ports import API_NAMES, list_ports
from stemdeck.models.paths import kept_file, missing_folder

ESCAPE = "\x1b"


def add_midi_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("MIDI control")
    group.add_argument("--midi-in", metavar="NAME", help="MIDI input port (name or part of it)")
    group.add_argument(
        "--midi-out", metavar="NAME", help="MIDI output for LED feedback (default: the input controller's own output)"
    )
    group.add_argument("--midi-virtual", action="store_true", help="open virtual MIDI ports other apps can use")
    group.add_argument(
        "--midi-api", choices=API_NAMES, default="auto", help="MIDI system (default: JACK if running, else ALSA)"
    )
    group.add_argument(
        "--midi-map",
        type=Path,
        metavar="FILE",
        help=f"mapping file (default: {user_mapping_path()}; two decks: {user_decks_mapping_path()})",
    )


def add_midi_commands(commands) -> None:
    map_help = f"the mapping file (default: {user_mapping_path()})"
    midi = commands.add_parser("midi", help="MIDI ports, bindings and MIDI learn")
    actions = midi.add_subparsers(dest="midi_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list MIDI input and output ports")
    listing.add_argument("--midi-api", choices=API_NAMES, default="auto")
    listing.set_defaults(func=run_list)

    show = actions.add_parser("show", help="check the mapping and print its bindings")
    show.add_argument("--midi-map", type=Path, metavar="FILE", help=map_help)
    show.add_argument("--decks", action="store_true", help="the two-deck sessions' mapping")
    show.set_defaults(func=run_show)

    learn = actions.add_parser("learn", help="bind the next message that arrives to CONTROL (Esc cancels)")
    learn.add_argument(
        "control",
        help="mute:STEM, solo:STEM, gain:STEM, dry, play, cue or tempo (STEM: 1-6 or a name); practice: "
        "loop_in, loop_out, loop, loop_halve, loop_double, loop_beats:N (1, 2, 4, 8, 16), hotcue:N, "
        "hotcue_clear:N (N: 1-8), record, count_in, tempo_reset, key_down, key_up; two decks (with --deck): "
        "crossfader, cue_mix, volume, sync, headphone",
    )
    learn.add_argument(
        "--mode",
        default="",
        help="toggle|momentary (notes), absolute|relative-twos|relative-offset|relative-signbit|button (CCs)",
    )
    learn.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    learn.add_argument(
        "--deck",
        choices=DECK_NAMES,
        help="learn into the two-deck mapping, for this deck (crossfader and cue_mix: either)",
    )
    add_midi_options(learn)
    learn.set_defaults(func=run_learn)

    export = actions.add_parser("export", help="write the mapping to FILE (- prints it)")
    export.add_argument("file", type=Path, help="the TOML file to write, or - for standard output")
    export.add_argument("--midi-map", type=Path, metavar="FILE", help=map_help)
    export.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    export.set_defaults(func=run_export)

    imported = actions.add_parser("import", help="check FILE and make it the mapping")
    imported.add_argument("file", type=Path, help="a TOML mapping (as midi export writes)")
    imported.add_argument("--midi-map", type=Path, metavar="FILE", help=map_help)
    imported.set_defaults(func=run_import)

    reset = actions.add_parser("reset", help="go back to the default mapping")
    reset.add_argument("--midi-map", type=Path, metavar="FILE", help=map_help)
    reset.set_defaults(func=run_reset)


def mapping_path(args: argparse.Namespace, decks: bool = False) -> Path:
    """--midi-map, else the user's mapping (two decks: the two-deck one)."""
    return args.midi_map or (user_decks_mapping_path() if decks else user_mapping_path())


def load_session_mapping(args: argparse.Namespace, decks: bool = False):
    """The mapping a session uses: one deck's, or the two decks' (:func:`two_deck_mapping` by default)."""
    path = mapping_path(args, decks)
    return load_user_decks_mapping(path) if decks else load_user_mapping(path)


def start_midi(controls, args: argparse.Namespace) -> MidiController | None:
    """The session's controller when any --midi-* option asks for one."""
    if not (args.midi_in or args.midi_virtual):
        if args.midi_out:
            raise ValueError("--midi-out needs --midi-in or --midi-virtual to have something to control")
        return None
    decks = hasattr(type(controls), "deck")  # two decks; the class, so the GUI's proxy loads no model to say no
    controller = MidiController(controls, load_session_mapping(args, decks), _config(args, decks), report=_say).start()
    ports = controller.input_names + ([f"LEDs on {controller.output_name}"] if controller.output_name else [])
    _say(f"MIDI: {', '.join(ports)}")
    return controller


def _config(args: argparse.Namespace, decks: bool = False) -> MidiConfig:
    """The --midi-* options; learned bindings are saved to the mapping in use."""
    return MidiConfig(
        input=args.midi_in,
        output=args.midi_out,
        virtual=args.midi_virtual,
        api=args.midi_api,
        mapping_path=mapping_path(args, decks),
    )


def _say(text: str) -> None:
    print(f"stemdeck: {text}", file=sys.stderr)


def run_list(args: argparse.Namespace) -> int:
    inputs, outputs = list_ports(args.midi_api)
    print("MIDI inputs:" if inputs else "MIDI inputs: none")
    for name in inputs:
        print(f"  {name}")
    print("MIDI outputs:" if outputs else "MIDI outputs: none")
    for name in outputs:
        print(f"  {name}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    decks = getattr(args, "decks", False)
    path = mapping_path(args, decks)
    mapping = load_session_mapping(args, decks)
    print(f"mapping: {path}" + ("" if path.exists() else " (not written yet: the default)"))
    for b in mapping.bindings:
        print(f"  {b.describe_message():<24} {b.describe_control():<22} {b.mode:<16} {'LED' if b.feedback else ''}")
    for scene in mapping.scenes:
        print(f"  program {scene.program:<16} scene {scene.name}")
    return 0


class _NoEngine:
    """What learn drives when no session runs: nothing, with every stem a model can have."""

    sources = STEM_NAMES

    def mixer(self):
        from stemdeck.engine.engine import MixerState

        n = len(self.sources)
        return MixerState((0.0,) * n, (False,) * n, (False,) * n, 0.0, False)


def run_learn(args: argparse.Namespace) -> int:
    control, stem, slot = parse_target(args.control)
    if not (args.midi_in or args.midi_virtual):
        raise ValueError("name the controller to learn from: --midi-in NAME (see `stemdeck midi list`)")
    deck = DECK_NAMES.index(args.deck) if getattr(args, "deck", None) is not None else None
    decks = deck is not None or control in DECKS_CONTROLS  # the crossfader: only two decks have one
    path = mapping_path(args, decks)
    mapping = load_session_mapping(args, decks)
    with MidiController(_NoEngine(), mapping, _config(args, decks), report=_say) as controller:
        controller.learn(control, stem, args.mode, slot, deck)
        _say(f"move a control or press a pad on {', '.join(controller.input_names)} (Esc cancels)")
        _watch_for_escape(controller)
        result = controller.wait_learned(args.timeout)
    if result is None:
        _say(
            "MIDI learn cancelled; nothing changed"
            if not controller.learning
            else f"nothing arrived in {args.timeout:g} s; nothing changed"
        )
        return 1
    _say(f"saved to {path}")
    return 0


def _watch_for_escape(controller: MidiController) -> None:
    """Esc on the terminal (or on a pipe to stdin) cancels learn mode."""

    def read() -> None:
        import termios
        import tty

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd) if sys.stdin.isatty() else None
        try:
            if saved is not None:
                tty.setcbreak(fd)
            while controller.learning:
                char = sys.stdin.read(1)
                if char == ESCAPE:
                    controller.cancel_learn()
                if char in (ESCAPE, ""):
                    return
        finally:
            if saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    if sys.stdin is not None and not sys.stdin.closed:
        threading.Thread(target=read, daemon=True).start()


def run_export(args: argparse.Namespace) -> int:
    if str(args.file) == "-":  # to standard output, as other tools read "-" (it wrote a file named "-")
        sys.stdout.write(mapping_text(load_user_mapping(mapping_path(args))))
        return 0
    if problem := missing_folder(args.file, "export") or kept_file(args.file, args.force):
        raise MappingError(problem)
    save_mapping(load_user_mapping(mapping_path(args)), args.file)
    _say(f"mapping written to {args.file}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    mapping = load_mapping(args.file)  # refuses a bad file before anything is replaced
    if not mapping.bindings and not mapping.scenes:  # an empty file wiped the mapping
        raise MappingError(f"{args.file} holds no bindings or scenes; the mapping is unchanged")
    target = mapping_path(args)
    kept = _keep_previous(target)
    save_mapping(mapping, target)
    _say(f"{len(mapping.bindings)} bindings and {len(mapping.scenes)} scenes from {args.file} are now the mapping")
    if kept is not None:
        _say(f"the previous mapping (with what MIDI learn had bound) is kept in {kept}")
    return 0


def _keep_previous(target: Path) -> Path | None:
    """A copy of the mapping an import replaces, beside it (``midi.toml.previous``): import
    replaced learned bindings with no way back."""
    if not target.is_file():
        return None
    kept = target.with_name(target.name + ".previous")
    try:
        kept.write_bytes(target.read_bytes())
    except OSError as exc:
        raise MappingError(
            f"cannot keep the previous mapping in {kept} ({exc.strerror}); nothing was imported"
        ) from None
    return kept


def run_reset(args: argparse.Namespace) -> int:
    save_mapping(default_mapping(), mapping_path(args))
    _say(f"default mapping written to {mapping_path(args)}")
    return 0
