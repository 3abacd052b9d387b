"""``stemdeck dataset synth|curate``, ``stemdeck train`` and ``stemdeck eval``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_training_commands(commands, add_model_options) -> None:
    from stemdeck.models.training.recipe import add_recipe_command

    add_recipe_command(commands)
    dataset = commands.add_parser("dataset", help="generate or curate a multitrack dataset")
    actions = dataset.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    synth = actions.add_parser("synth", help="procedural songs, stems rendered with FluidSynth (MUSDB layout)")
    synth.add_argument("out", type=Path)
    synth.add_argument("--tracks", type=int, default=10)
    synth.add_argument("--seconds", type=float, default=30.0)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--split", choices=("train", "test"), default="train")
    synth.add_argument(
        "--wide",
        action="store_true",
        help="several SoundFonts and voices, articulation and per-stem effects (never the held-out ones)",
    )
    synth.set_defaults(func=run_synth)

    heldout = actions.add_parser(
        "heldout", help="the evaluation set: wide songs from the held-out SoundFont and voices only (OUT/test)"
    )
    heldout.add_argument("out", type=Path)
    heldout.add_argument("--tracks", type=int, default=10)
    heldout.add_argument("--seconds", type=float, default=30.0)
    heldout.add_argument("--seed", type=int, default=9)
    heldout.set_defaults(func=run_heldout)

    curate = actions.add_parser("curate", help="report silent stems and stems that leak into others")
    curate.add_argument("root", type=Path)
    curate.add_argument("--separator", metavar="MODEL", help="model for the cross-separation check")
    curate.add_argument("--threshold", type=float, default=0.5, help="leakage share that flags a stem")
    curate.add_argument("--report", type=Path, required=True, help="JSON report to write")
    curate.set_defaults(func=run_curate)

    train = commands.add_parser("train", help="train HT Demucs on a dataset")
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--config", default="tiny", help="tiny, small or htdemucs")
    train.add_argument("--out", type=Path, required=True, help="model file (.safetensors)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float)
    length.add_argument("--epochs", type=int)
    train.add_argument("--steps-per-epoch", type=int, default=200)
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--source-weights", help="comma-separated loss weights per source")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    train.add_argument("--threads", type=int)
    train.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    train.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    train.add_argument("--init", metavar="MODEL", help="start from this model's weights (fine-tuning)")
    train.add_argument("--lr", type=float, default=3e-4, help="Adam's learning rate")
    train.add_argument("--warmup-steps", type=int, default=0, help="raise the rate linearly over these steps")
    train.set_defaults(func=run_train)

    evaluate = commands.add_parser("eval", help="SDR of a model on a dataset's test tracks")
    add_model_options(evaluate)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--split", default="test", choices=("train", "test"))
    evaluate.add_argument("--json", type=Path)
    evaluate.set_defaults(func=run_eval)


def run_synth(args: argparse.Namespace) -> int:
    from stemdeck.models.training.synth import WIDE, synth_dataset

    variety = WIDE if args.wide else None
    folders = synth_dataset(
        args.out, args.tracks, args.seconds, args.seed, args.split, progress=sys.stderr.isatty(), variety=variety
    )
    print(f"{len(folders)} tracks in {args.out / args.split}")
    return 0


def run_heldout(args: argparse.Namespace) -> int:
    from stemdeck.models.training.synth import HELD_OUT, synth_dataset

    folders = synth_dataset(
        args.out, args.tracks, args.seconds, args.seed, "test", progress=sys.stderr.isatty(), variety=HELD_OUT
    )
    print(f"{len(folders)} held-out tracks in {args.out / 'test'}")
    return 0


def run_curate(args: argparse.Namespace) -> int:
    from stemdeck.models.cli import load_for_command
    from stemdeck.models.training.curate import curate, write_report

    if not args.root.is_dir():
        raise ValueError(f"no folder {args.root}; name a dataset's folder (one with train/ or test/ in it)")
    if not any((args.root / split).is_dir() for split in ("train", "test")):
        raise ValueError(f"{args.root} has no train/ or test/ folder of tracks; name the dataset's top folder")
    separator = load_for_command(args.separator).model if args.separator else None
    reports = curate(args.root, separator, threshold=args.threshold)
    print(write_report(reports, args.report))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from stemdeck.models.cli import check_device
    from stemdeck.models.training.train import Trainer, initial_model, train_config_from_args

    config = train_config_from_args(args)
    model = initial_model(config.config, args.init, config.sources)
    trainer = Trainer(
        args.data, args.out, config, model=model, precision=args.precision, device=check_device(args.device)
    )
    if args.resume and trainer.resume():
        print(f"resumed at step {trainer.step} (epoch {trainer.epoch})", file=sys.stderr)
    trainer.fit(progress=sys.stderr.isatty())
    trainer.save_model()
    print(args.out)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from stemdeck.models.cli import load_for_command
    from stemdeck.models.training.evaluate import evaluate

    model = load_for_command(args.model).model
    result = evaluate(model, args.data, args.split, precision=args.precision)
    print(result.table())
    if args.json:
        args.json.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return 0
