"""The ``stemdeck`` command line: each package adds its own subcommands; this module only wires them.

``models`` adds ``separate``, ``models``, the training commands and ``demo``; ``engine`` adds
``live``, ``play``, ``devices`` and ``midi``; ``gui`` adds ``gui`` (what ``stemdeck`` alone opens).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

EXIT_BROKEN_PIPE = 141  # what a tool killed by SIGPIPE returns: the reader (`| head`) has gone
DEFAULT_COMMAND = "gui"


class CommandLineParser(argparse.ArgumentParser):
    """argparse with its errors in one line: the twelve lines of usage it prints above them
    buried the one that says what is wrong. Every subcommand's parser is of this class too.

    A value that starts with a minus and holds a colon (``--loop -1:3``) is a value, as a
    negative number is: argparse took it for an option and said only "expected one argument",
    where the option's own check names what is wrong with it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.]*:[\d.:]*$")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def get_parser() -> argparse.ArgumentParser:
    """The whole command line, every package's subcommands on one parser."""
    from stemdeck.engine.cli import add_engine_commands
    from stemdeck.engine.midi.cli import add_midi_options
    from stemdeck.gui.app import add_gui_command
    from stemdeck.models.cli import add_demo_command, add_model_options, add_separation_commands
    from stemdeck.models.training.cli import add_training_commands

    parser = CommandLineParser(prog="stemdeck", description="Split music into stems with HT Demucs.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_separation_commands(commands)
    add_training_commands(commands, add_model_options)
    add_demo_command(commands)
    add_engine_commands(commands, add_model_options)
    add_gui_command(commands, add_model_options, add_midi_options)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's to fix: said in one line, never as a traceback."""
    from stemdeck.engine.device import DeviceError
    from stemdeck.engine.midi import MappingError, MidiError
    from stemdeck.engine.session import WorkerError
    from stemdeck.models.cli import USER_ERRORS, CommandError

    return (CommandError, *USER_ERRORS, DeviceError, WorkerError, MidiError, MappingError)


def main(argv: Sequence[str] | None = None) -> int:
    """``stemdeck [COMMAND ...]``; with no command, the desktop mixer."""
    from stemdeck.engine.runtime import configure_process

    argv = sys.argv[1:] if argv is None else list(argv)
    configure_process()
    return run_parsed(get_parser(), argv or [DEFAULT_COMMAND])


def run_parsed(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """Run the chosen subcommand; user errors become one line on stderr and exit code 1."""
    from stemdeck.models.cli import say

    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that has gone (`| head`) shows here, not at exit
        return code
    except user_errors() as exc:
        say(f"stemdeck: error: {exc}")
        return 1
    except KeyboardInterrupt:
        print("stemdeck: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (a test's capture): nothing will flush to the pipe
