"""``stemdeck live``, ``stemdeck play`` and ``stemdeck devices``."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from stemdeck.engine.config import DEFAULT_PRESET, MAX_COUNT_IN_BEATS, PRESETS, STREAM_LOST, EngineConfig
from stemdeck.engine.midi import MidiError
from stemdeck.engine.midi.cli import add_midi_commands, add_midi_options, start_midi
from stemdeck.engine.practice import parse_loop
from stemdeck.models.paths import missing_folder

POLL_S = 0.05
MIN_BLOCK_FRAMES = 32
MAX_LATENCY_S = 30.0


class StoreOnce(argparse.Action):
    """An option a session takes once: given twice, argparse kept the last without a word
    (``--record a.flac --record b.wav`` recorded only b.wav)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        earlier = getattr(namespace, self.dest, None)
        if earlier is not None and earlier != self.default:
            raise argparse.ArgumentError(self, f"given twice ({earlier}, then {values}); give it once")
        setattr(namespace, self.dest, values)


def file_name(text: str) -> Path:
    """An option's file, refused when empty: ``Path("")`` is ``.``, which the later checks named."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give a file name")
    return Path(text)


def add_engine_commands(commands, add_model_options) -> None:
    live = commands.add_parser("live", help="separate the sound card's input live")
    live.add_argument("--input", help="input device (index, name or part of it)")
    live.add_argument(
        "--dry-run",
        action="store_true",
        help="calibrate every preset on this machine, print the latency each gets, and exit (no audio)",
    )
    _add_session_options(live, add_model_options)
    live.set_defaults(func=run_live)

    play = commands.add_parser(
        "play", help="play a file with live stem controls (two files: two decks, A playing and B cued)"
    )
    play.add_argument("file", type=Path, help="the track: audio (WAV, FLAC, MP3...) or an NI STEM file")
    play.add_argument(
        "second",
        type=Path,
        nargs="?",
        help="a second file: two decks with a crossfader (A plays FILE, B is cued with SECOND; "
        "on JACK ports master_L/R and cue_L/R)",
    )
    play.add_argument("--start", type=float, default=0.0, help="cue point in seconds")
    play.add_argument(
        "--loop",
        metavar="A:B",
        help="loop from A to B (seconds, 12.5:20, or m:ss.s, 1:02.5:1:10); play starts at A unless --start "
        "(inside the loop) is given",
    )
    play.add_argument(
        "--count-in",
        metavar="N",
        help="with --loop: N clicks (1-8, one a beat of the track's tempo, else 120 BPM) before each restart",
    )
    play.add_argument(
        "--tempo", type=float, default=1.0, help="play at this tempo, 0.5 to 1.5 (1 = as recorded; the pitch stays)"
    )
    play.add_argument(
        "--key", type=float, default=0.0, help="shift the key by this many semitones, -12 to 12 (the tempo stays)"
    )
    _add_session_options(play, add_model_options)
    play.set_defaults(func=run_play)

    devices = commands.add_parser("devices", help="list audio devices and host APIs")
    devices.set_defaults(func=run_devices)
    add_midi_commands(commands)


def _add_session_options(parser: argparse.ArgumentParser, add_model_options) -> None:
    from stemdeck.models.cli import add_live_backend_option

    parser.add_argument(
        "--output",
        help="output device (index, name or part of it); without it, stemdeck "
        "plays as its own JACK client when a JACK server runs, else on the system default",
    )
    add_model_options(parser)
    add_live_backend_option(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--preset", choices=sorted(PRESETS), help="live input's window plan (default balanced; `stemdeck live` only)"
    )
    which.add_argument(
        "--latency", type=float, metavar="SECONDS", help="live input's target latency instead of a preset (live only)"
    )
    parser.add_argument("--mute", action="append", default=[], metavar="STEM", help="start with STEM muted")
    parser.add_argument("--solo", action="append", default=[], metavar="STEM", help="start with STEM soloed")
    parser.add_argument(
        "--stem-outputs",
        action="store_true",
        help="also send every stem to its own pair of outputs (on JACK: ports stemdeck:<stem>_L/_R beside "
        "stemdeck:master_L/_R; two decks: deckA_<stem>_L/_R and deckB_<stem>_L/_R)",
    )
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--blocksize", type=int, default=256, help="audio block in frames (default 256; on JACK the server's period)"
    )
    parser.add_argument("--stats", type=Path, help="write the session's counters as JSON here")
    parser.add_argument(
        "--record",
        type=file_name,
        action=StoreOnce,
        metavar="FILE",
        help="record what you hear (the master output) to FILE, .wav (32-bit float) or .flac (24-bit)",
    )
    add_midi_options(parser)


def check_session_options(args: argparse.Namespace) -> None:
    """The numeric options of ``play`` and ``live``, each refused in one line before anything runs."""
    max_block = EngineConfig().max_block_frames
    if not MIN_BLOCK_FRAMES <= args.blocksize <= max_block:
        raise ValueError(
            f"--blocksize {args.blocksize}: give a block of {MIN_BLOCK_FRAMES} to {max_block} "
            "frames (a power of two such as 256 suits most devices)"
        )
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise ValueError(f"--duration {args.duration}: give a positive number of seconds")
    if args.command == "play" and (args.preset is not None or args.latency is not None):
        given = f"--preset {args.preset}" if args.preset is not None else f"--latency {args.latency:g}"
        raise ValueError(
            f"{given} shapes live input's windows (`stemdeck live`); a file deck separates ahead of its "
            "playhead and plays with the output's latency alone: leave it out"
        )
    if args.latency is not None and not (math.isfinite(args.latency) and 0 < args.latency <= MAX_LATENCY_S):
        raise ValueError(
            f"--latency {args.latency}: give a target latency in seconds, above 0 and at most {MAX_LATENCY_S:.0f}"
        )
    start = getattr(args, "start", 0.0)
    if not (math.isfinite(start) and start >= 0):
        raise ValueError(f"--start {start}: give a cue point in seconds from 0 to the track's length")
    if getattr(args, "loop", None) is not None:
        args.loop = parse_loop(args.loop)
        loop_in, loop_out = args.loop
        if start and not loop_in <= start < loop_out:  # the loop would take the playhead to A at once
            raise ValueError(
                f"--start {start:g} is outside --loop {loop_in:g}:{loop_out:g}; give a --start inside the loop, "
                "or leave --start out to start at its beginning"
            )
    both = [stem for stem in args.mute if stem in args.solo]
    if both:
        raise ValueError(f"--mute {both[0]} and --solo {both[0]}: a stem is muted or soloed, not both; give one")
    _check_count_in(args)
    _check_tempo_and_key(args)
    if args.record is not None:
        from stemdeck.engine.recorder import record_format  # its buffers' kernels import numba

        try:
            record_format(args.record)
        except ValueError:
            raise ValueError(f"--record {args.record}: stemdeck records WAV or FLAC; name it .wav or .flac") from None
        if problem := missing_folder(args.record, "record"):
            raise ValueError(f"--record {args.record}: {problem}")
        if args.record.exists():
            raise ValueError(f"--record {args.record}: the file exists; choose another name (nothing is overwritten)")


def _check_count_in(args: argparse.Namespace) -> None:
    """``--count-in N``: a whole number of beats, 1 to 8, and a loop to count into."""
    count_in = getattr(args, "count_in", None)
    if count_in is None:
        return
    if not (count_in.isdigit() and 1 <= int(count_in) <= MAX_COUNT_IN_BEATS):
        raise ValueError(f"--count-in {count_in}: give a number of beats from 1 to {MAX_COUNT_IN_BEATS}")
    if args.loop is None:
        raise ValueError(f"--count-in {count_in} needs --loop A:B (the count-in plays before the loop restarts)")
    args.count_in = int(count_in)


def _check_tempo_and_key(args: argparse.Namespace) -> None:
    from stemdeck.engine.stretch.stretcher import check_semitones, check_tempo, require_stretch

    for option, check in (("tempo", check_tempo), ("key", check_semitones)):
        value = getattr(args, option, None)
        if value is not None:
            try:
                check(value)
                require_stretch(*((value, 0.0) if option == "tempo" else (1.0, value)))
            except ValueError as exc:
                raise ValueError(f"--{option} {value:g}: {exc}") from None


def check_loop(loop: tuple[float, float] | None, path: Path, seconds: float) -> None:
    """``--loop`` against the track's length, before the model loads."""
    from stemdeck.models.cli import CommandError

    if loop is not None and loop[1] > seconds:
        raise CommandError(f"--loop {loop[0]:g}:{loop[1]:g}: {path} lasts {seconds:.1f} s; end the loop before that")


def read_track(path: Path, start_s: float):
    """Read the track before the model loads: a bad file or cue point is said at once."""
    from stemdeck.models.audio import read_audio
    from stemdeck.models.cli import CommandError

    try:
        with open(path, "rb") as file:
            file.read(1)
    except IsADirectoryError:
        pass  # read_audio says it in its own words
    except FileNotFoundError:
        pass
    except OSError as exc:  # unreadable: say why, not libsndfile's "System error."
        raise CommandError(
            f"{path}: cannot read it ({exc.strerror or exc}); check the file and its permissions"
        ) from None
    audio, samplerate = read_audio(path)
    seconds = audio.shape[-1] / samplerate
    if start_s >= seconds:
        raise CommandError(f"--start {start_s:g}: {path} lasts {seconds:.1f} s; give a cue point before its end")
    return audio, samplerate


def read_stem_track(path: Path, start_s: float):
    """An NI STEM file's master and stems, which the deck plays as they are (no separation)."""
    from stemdeck.models.cli import CommandError
    from stemdeck.models.stem_file import StemFileError, read_stem_file

    try:
        master, stems, samplerate = read_stem_file(path)
    except StemFileError as exc:
        raise CommandError(f"{exc}; play another copy, or its master exported as WAV or FLAC") from None
    seconds = master.shape[-1] / samplerate
    if start_s >= seconds:
        raise CommandError(f"--start {start_s:g}: {path} lasts {seconds:.1f} s; give a cue point before its end")
    return master, stems, samplerate


def _load_deck(engine, path: Path, audio, stems, samplerate: int, cue_s: float) -> None:
    if stems is None:
        engine.load_audio(audio, samplerate, cue_s=cue_s)
        return
    from stemdeck.models.cli import CommandError

    try:
        engine.load_separated(audio, stems, samplerate, cue_s=cue_s)
    except ValueError as exc:
        raise CommandError(f"{path}: {exc}; play it with a 4- or 6-stem model") from None


def check_midi_ports(args: argparse.Namespace, decks: bool = False) -> None:
    """The --midi-* ports and mapping (``decks``: the two-deck one), checked before the model
    loads (which takes seconds)."""
    from stemdeck.engine.midi.cli import load_session_mapping
    from stemdeck.engine.midi.ports import describe_ports, find_port, list_ports

    if not (args.midi_in or args.midi_virtual):
        if args.midi_out:
            raise ValueError("--midi-out needs --midi-in or --midi-virtual to have something to control")
        return
    load_session_mapping(args, decks)
    if not (args.midi_in or args.midi_out):
        return
    inputs, outputs = list_ports(args.midi_api)
    if args.midi_in and find_port(inputs, args.midi_in) is None:
        raise MidiError(f"no MIDI input matches {args.midi_in!r}; inputs: {describe_ports(inputs)}")
    if args.midi_out and find_port(outputs, args.midi_out) is None:
        raise MidiError(f"no MIDI output matches {args.midi_out!r}; outputs: {describe_ports(outputs)}")


def check_stem_options(args: argparse.Namespace, sources: tuple[str, ...] | None) -> None:
    """--mute and --solo name stems of the model: checked before it loads where its name tells
    its stems, else as soon as it has loaded, before any engine exists (its shared memory and
    worker were left behind by the error)."""
    if sources is None:
        return
    for stem in args.mute + args.solo:
        if stem not in sources:
            raise ValueError(f"unknown stem {stem!r}; this model has {', '.join(sources)}")


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _engine(args: argparse.Namespace, output_device, deck: bool = False):
    from stemdeck.engine.build import build_engine, device_block_frames, device_rate, session_window
    from stemdeck.models.cli import check_device, load_for_command
    from stemdeck.models.registry import declared_sources

    check_device(args.device)
    check_stem_options(args, declared_sources(args.model))
    samplerate = device_rate(output_device)  # the device is checked before the model loads
    model, name = load_for_command(args.model)
    check_stem_options(args, tuple(model.sources))
    if not deck:  # the deck reads ahead of its playhead: nothing to calibrate, nothing to refuse
        print(f"calibrating {name} on this machine...", file=sys.stderr)
    engine = build_engine(
        model,
        session_window(args.preset or DEFAULT_PRESET, args.latency),
        samplerate=samplerate,
        block_frames=device_block_frames(output_device, args.blocksize),
        precision=args.precision,
        calibrate=not deck,
        refuse_live=True,
        network_backend=args.backend,
        note=_say,
    )
    for stem in args.mute:
        engine.set_mute(stem)
    for stem in args.solo:
        engine.set_solo(stem)
    status = engine.status()
    plan = f"hop {engine.window.hop_s:.2f} s, window {engine.window.window_s:.2f} s"
    calibration = engine.calibration
    if calibration is not None and calibration.adapted:  # the preset asked for more than this machine has
        plan += (
            f" (lengthened for this machine: one window takes {calibration.forward_s:.2f} s; "
            "a GPU or a smaller model gets lower latency)"
        )
    if deck:
        deck_plan, sr = engine.deck_plan, engine.config.samplerate
        print(
            f"deck: offline chunking, a {deck_plan.window_frames / sr:.2f} s window every "
            f"{deck_plan.hop_frames / sr:.2f} s; dry until stems are separated",
            file=sys.stderr,
        )
    else:
        print(
            f"latency {status.latency_ms:.1f} ms ({status.latency_frames} samples at {status.samplerate} Hz); {plan}",
            file=sys.stderr,
        )
    return engine


def run_live(args: argparse.Namespace) -> int:
    from stemdeck.engine.device import resolve_device

    check_session_options(args)
    input_device, output_device = resolve_device(args.input, "input"), resolve_device(args.output, "output")
    if args.dry_run:
        return _print_preset_plans(args, output_device)
    check_midi_ports(args)
    engine = _engine(args, output_device)
    with engine, _midi(engine, args):
        engine.start_live(input_device, output_device, stem_outputs=args.stem_outputs)
        _start_recording(engine, args)
        return _run_session(engine, args, until_end=False)


def run_play(args: argparse.Namespace) -> int:
    from stemdeck.engine.device import resolve_device
    from stemdeck.models.stem_file import is_stem_file

    if getattr(args, "second", None) is not None:
        return run_play_decks(args)
    check_session_options(args)
    if is_stem_file(args.file):  # stems made already: played as they are
        audio, stems, samplerate = read_stem_track(args.file, args.start)
    else:
        (audio, samplerate), stems = read_track(args.file, args.start), None
    check_loop(args.loop, args.file, audio.shape[-1] / samplerate)
    output_device = resolve_device(args.output, "output")
    check_midi_ports(args)
    engine = _engine(args, output_device, deck=True)
    cue_s = args.loop[0] if args.loop is not None and args.start == 0 else args.start
    with engine:
        _load_deck(engine, args.file, audio, stems, samplerate, cue_s)
        del audio, stems
        if args.loop is not None:
            engine.set_loop(*args.loop)
            print(f"looping {args.loop[0]:g} s to {args.loop[1]:g} s", file=sys.stderr)
        engine.set_tempo(args.tempo)
        engine.set_key(args.key)
        if args.tempo != 1.0 or args.key != 0.0:
            print(f"tempo {args.tempo:g} (pitch kept), key {args.key:+g} semitones (tempo kept)", file=sys.stderr)
        _set_count_in(engine, args.count_in)
        with _midi(engine, args):
            _play_from_the_first_block(
                engine, args, engine.play, lambda: engine.start_output(output_device, stem_outputs=args.stem_outputs)
            )
            return _run_session(engine, args, until_end=True)


def _read_any_track(path: Path, start_s: float):
    """``(audio, stems or None, samplerate)`` of a file or an NI STEM file, before the model loads."""
    from stemdeck.models.stem_file import is_stem_file

    if is_stem_file(path):
        return read_stem_track(path, start_s)
    audio, samplerate = read_track(path, start_s)
    return audio, None, samplerate


def run_play_decks(args: argparse.Namespace) -> int:
    """``stemdeck play A B``: two decks with the same options, A playing and B cued (its
    separation starts at once); the crossfader on A; MIDI per engine.midi.bindings.two_deck_mapping."""
    from stemdeck.engine.build import build_engine, session_window
    from stemdeck.engine.decks import Decks
    from stemdeck.engine.device import resolve_device

    check_session_options(args)
    tracks = [_read_any_track(path, args.start) for path in (args.file, args.second)]
    for path, (audio, _, samplerate) in zip((args.file, args.second), tracks, strict=True):
        check_loop(args.loop, path, audio.shape[-1] / samplerate)
    output_device = resolve_device(args.output, "output")
    check_midi_ports(args, decks=True)
    deck_a = _engine(args, output_device, deck=True)
    try:
        deck_b = build_engine(
            deck_a.model,
            session_window(args.preset or DEFAULT_PRESET, args.latency),
            samplerate=deck_a.config.samplerate,
            block_frames=deck_a.block_frames,
            precision=args.precision,
            calibrate=False,
            network_backend=args.backend,
            note=_say,
        )
    except BaseException:
        deck_a.stop()
        raise
    for stem in args.mute:
        deck_b.set_mute(stem)
    for stem in args.solo:
        deck_b.set_solo(stem)
    with Decks(deck_a, deck_b) as decks:
        _load_decks(decks, args, tracks)
        del tracks
        with _midi(decks, args):
            _play_from_the_first_block(
                decks,
                args,
                decks.deck("A").play,
                lambda: decks.start_output(output_device, stem_outputs=args.stem_outputs),
            )
            for notice in decks.notices:
                print(f"stemdeck: {notice}", file=sys.stderr)
            print(f"deck A: {args.file.name} playing; deck B: {args.second.name} cued", file=sys.stderr)
            return _run_decks_session(decks, args)


def _load_decks(decks, args: argparse.Namespace, tracks) -> None:
    """Both tracks into their decks with the same options (cue point, loop, tempo, key, count-in)."""
    cue_s = args.loop[0] if args.loop is not None and args.start == 0 else args.start
    for name, path, (audio, stems, samplerate) in zip("AB", (args.file, args.second), tracks, strict=True):
        engine = decks.deck(name)
        _load_deck(engine, path, audio, stems, samplerate, cue_s)
        if args.loop is not None:
            engine.set_loop(*args.loop)
        engine.set_tempo(args.tempo)
        engine.set_key(args.key)
        if args.count_in:
            engine.set_count_in(args.count_in)
    if args.loop is not None:
        print(f"both decks loop {args.loop[0]:g} s to {args.loop[1]:g} s", file=sys.stderr)
    if args.tempo != 1.0 or args.key != 0.0:
        print(f"both decks: tempo {args.tempo:g} (pitch kept), key {args.key:+g} semitones", file=sys.stderr)


def _run_decks_session(decks, args: argparse.Namespace) -> int:
    """Until the duration, deck A's end (B not playing), Ctrl-C or a lost stream; then the
    counters of both decks."""
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    start, code, said = time.monotonic(), 0, set()
    try:
        while not stop["now"]:
            time.sleep(POLL_S)
            status = decks.status()
            if status.stream_error or (decks.output_open and not decks.stream_active):
                print(f"stemdeck: error: {status.stream_error or STREAM_LOST}", file=sys.stderr)
                code = 1
                break
            for name, deck in zip("AB", status.decks, strict=True):
                for text in (deck.worker_notice, deck.worker_error):
                    if text and (name, text) not in said:
                        said.add((name, text))
                        print(f"stemdeck: deck {name}: {text}", file=sys.stderr)
                        code = 1 if text == deck.worker_error else code
            if args.duration and time.monotonic() - start >= args.duration:
                break
            playing = [
                deck.playing and deck.position_s < decks.deck(n).track_seconds
                for n, deck in zip("AB", status.decks, strict=True)
            ]
            if not args.duration and not any(playing):
                break
    except KeyboardInterrupt:
        pass
    _finish_recording(decks, decks.samplerate)
    stats = _decks_stats(decks)
    for name in "AB":
        print(f"deck {name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in stats[name].items()), file=sys.stderr)
    if args.stats:
        args.stats.write_text(json.dumps(stats) + "\n")
    return code


def _decks_stats(decks) -> dict:
    status = decks.status()
    stats: dict = {
        name: {**_stats(deck, decks.deck(name), True), "playing": deck.playing, "position_s": deck.position_s}
        for name, deck in zip("AB", status.decks, strict=True)
    }
    stats.update(
        crossfader=status.crossfader,
        cue_output=status.cue_output,
        master_peak=status.peak[2],
        latency_ms=1000.0 * status.latency_frames / decks.samplerate,  # the decks' own say one block
    )
    return stats


def _set_count_in(engine, beats: int | None) -> None:
    if beats:
        engine.set_count_in(beats)
        print(f"count-in: {beats} beat(s) before each restart of the loop", file=sys.stderr)


def _play_from_the_first_block(engine, args: argparse.Namespace, play, open_output) -> None:
    """--record armed and the deck playing before the output opens, so that a take's first
    block is the music's (armed after the output, every take began with a block of silence).
    An output that fails to open leaves no empty take behind."""
    _start_recording(engine, args)
    play()
    try:
        open_output()
    except BaseException:
        take = engine.stop_recording()
        if take is not None and take.frames == 0:
            take.path.unlink(missing_ok=True)
        raise


def _start_recording(engine, args: argparse.Namespace) -> None:
    from stemdeck.models.cli import CommandError

    if args.record is None:
        return
    try:
        engine.start_recording(args.record)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(f"recording to {args.record}", file=sys.stderr)


def _finish_recording(engine, samplerate: int | None = None) -> None:
    """Close the take and say what it holds; a writer that fell behind is said, with how much.
    ``engine``: an Engine, or two Decks (give their ``samplerate``)."""
    take = engine.stop_recording()
    if take is None:
        return
    samplerate = samplerate or engine.config.samplerate
    seconds = take.frames / samplerate
    print(f"recorded {seconds:.2f} s to {take.path}", file=sys.stderr)
    if take.dropped_frames:
        lost_s = take.dropped_frames / samplerate
        print(
            f"stemdeck: the recorder fell behind the disk and dropped {take.dropped_frames} frames "
            f"({lost_s:.2f} s); record to a faster disk",
            file=sys.stderr,
        )
    if take.error:
        print(f"stemdeck: error: {take.error}", file=sys.stderr)


def _print_preset_plans(args: argparse.Namespace, output_device) -> int:
    """`live --dry-run`: every preset (and --latency, if given) calibrated as a session would be."""
    import torch

    from stemdeck.engine.build import (
        DeviceError,
        build_engine,
        describe_plans,
        device_block_frames,
        device_rate,
        preset_plans,
        session_window,
    )
    from stemdeck.models.cli import check_device, load_for_command
    from stemdeck.models.precision_choice import remembered_precision, settle_auto
    from stemdeck.models.registry import declared_sources

    check_device(args.device)
    check_stem_options(args, declared_sources(args.model))
    try:
        samplerate: int | None = device_rate(output_device)
    except DeviceError as exc:  # planning needs no device: say so, and plan at the model's rate
        print(f"stemdeck: {exc}; planning at the model's rate", file=sys.stderr)
        samplerate = None
    block_frames = device_block_frames(output_device, args.blocksize)
    model, name = load_for_command(args.model)
    check_stem_options(args, tuple(model.sources))
    samplerate = samplerate or int(model.samplerate)
    # the one live command that may take its time: auto's precision measured here, once, for
    # live, play and the mixer, which only read the record (never measure before playing)
    settle_auto(model, args.precision, torch.device("cpu"), say=lambda line: print(line, file=sys.stderr))
    print(f"calibrating {name} for every preset on this machine...", file=sys.stderr)
    engine = build_engine(
        model,
        session_window("balanced"),
        samplerate=samplerate,
        block_frames=block_frames,
        precision=args.precision,
        calibrate=False,
        network_backend=args.backend,
        note=_say,
    )
    windows = dict(PRESETS)
    if args.latency:
        windows[f"--latency {args.latency:g}"] = session_window("", args.latency)
    with engine:
        plans = preset_plans(engine, block_frames, windows)
    precision = remembered_precision(model, args.precision, torch.device("cpu"))  # the engine separates on the CPU
    print(
        f"live input with {name} on this machine ({precision}, block {block_frames} at {samplerate} Hz; "
        "the device adds its own latency):"
    )
    print(describe_plans(plans))
    return 0


@contextlib.contextmanager
def _midi(engine, args: argparse.Namespace):
    """The session's MIDI controller, if asked for. At the end, audio goes first, then MIDI:
    rtmidi holds the GIL through its JACK port calls while the server waits on this process's
    JACK client, whose Python callbacks need the GIL (`play --midi-api jack` hung at exit)."""
    from stemdeck.engine.audio.jack_output import close_session_output

    controller = start_midi(engine, args)
    try:
        yield controller
    finally:
        if controller is not None:
            engine.stop_output()
            close_session_output()
            controller.close()


def _run_session(engine, args: argparse.Namespace, until_end: bool) -> int:
    """Wait for the end (duration, track end, Ctrl-C or a lost stream); report the counters. A
    separation failure is said once, and the dry signal plays on."""
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    start, code, message, stream_lost = time.monotonic(), 0, None, False
    notice = None
    try:
        while not stop["now"]:
            time.sleep(POLL_S)
            status = engine.status()
            if status.worker_notice and status.worker_notice != notice:  # e.g. a restarted worker
                notice = status.worker_notice
                print(f"stemdeck: {notice}", file=sys.stderr)
            if status.stream_error or (engine.output_open and not engine.stream_active):
                code, message, stream_lost = 1, status.stream_error or STREAM_LOST, True
                break
            if status.worker_error and message is None:  # said now, once; the dry signal plays on
                code, message = 1, f"separation failed: {status.worker_error}"
                print(f"stemdeck: error: {message}", file=sys.stderr)
            if args.duration and time.monotonic() - start >= args.duration:
                break
            if until_end and status.position_s >= engine.track_seconds:
                break
    except KeyboardInterrupt:
        pass
    _finish_recording(engine)
    status = engine.status()
    stats = _stats(status, engine, until_end)
    print("stats: " + ", ".join(f"{k}={_fmt(v)}" for k, v in stats.items()), file=sys.stderr)
    if args.stats:
        args.stats.write_text(json.dumps(stats) + "\n")
    if stream_lost:
        print(f"stemdeck: error: {message}", file=sys.stderr)
        # PortAudio's own teardown aborts the process when the JACK server is already gone:
        # leave now, with everything reported.
        sys.stderr.flush()
        engine.abort()
        os._exit(code)
    return code


def _stats(status, engine, deck: bool) -> dict:
    stats = {
        "latency_samples": status.latency_frames,
        "latency_ms": status.latency_ms,
        "xruns": status.xruns,
        "late_windows": status.late_windows,
        "realtime_factor": status.realtime_factor,
        "max_realtime_factor": status.max_realtime_factor,
        "windows_done": status.windows_done,
        "separation_priority": status.separation_priority,
    }
    if deck:
        stats["seconds_ahead"] = status.seconds_ahead
        stats["first_stems_s"] = status.first_stems_s
        stats["stretch_underflows"] = engine.practice.underflows  # blocks the tempo/key ring ran dry
        stats["bpm"] = engine.bpm
    return stats


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def run_devices(args: argparse.Namespace) -> int:
    from stemdeck.engine.device import list_devices, sounddevice

    sd = sounddevice()
    devices = list_devices()
    if not devices:  # it printed a table's header and nothing under it
        print(
            "no audio devices: start the sound server (JACK, PipeWire, PulseAudio) or plug one in, then list again",
            file=sys.stderr,
        )
        return 1
    for api in sd.query_hostapis():
        print(f"host API: {api['name']} ({len(api['devices'])} devices)")
    print(f"{'#':>3}  {'in':>3} {'out':>3}  {'rate':>7}  {'host API':<28} name")
    for d in devices:
        print(
            f"{d['index']:>3}  {d['max_input_channels']:>3} {d['max_output_channels']:>3}  "
            f"{d['default_samplerate']:>7.0f}  {d['hostapi_name']:<28} {d['name']}"
        )
    return 0
