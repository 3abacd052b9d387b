"""``stemdeck recipe FILE``: the data, training and evaluation of a model, from one TOML file."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path


def add_recipe_command(commands) -> None:
    recipe = commands.add_parser("recipe", help="rerun a model's recipe: generate data, train, evaluate")
    recipe.add_argument("file", type=Path)
    recipe.add_argument("--workdir", type=Path, default=Path("recipe-work"), help="where the data goes")
    recipe.add_argument("--minutes", type=float, help="override the training time")
    recipe.set_defaults(func=run_recipe)


def run_recipe(args: argparse.Namespace) -> int:
    from stemdeck.models.training.dataset import Augment
    from stemdeck.models.training.evaluate import evaluate
    from stemdeck.models.training.synth import synth_dataset, track_folder
    from stemdeck.models.training.train import TrainConfig, Trainer

    try:
        recipe = tomllib.loads(args.file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read recipe {args.file}: {exc}") from None
    data = args.workdir / recipe["data"]["folder"]
    for split in ("train", "test"):
        for part in recipe["data"][split]:
            expected = [track_folder(data, split, part["seed"], i) for i in range(part["tracks"])]
            if not all((f / "mixture.wav").exists() for f in expected):
                synth_dataset(
                    data, part["tracks"], recipe["data"]["seconds"], part["seed"], split, progress=sys.stderr.isatty()
                )
    t = recipe["train"]
    out = Path(recipe["output"]["model"])
    config = TrainConfig(
        config=t["config"],
        batch_size=t["batch_size"],
        steps_per_epoch=t["steps_per_epoch"],
        seed=t["seed"],
        minutes=args.minutes or t["minutes"],
        threads=t.get("threads"),
        valid_seconds=t.get("valid_seconds", 30.0),
        augment=Augment(),
    )
    trainer = Trainer(data, out, config, precision=t.get("precision", "auto"))
    if trainer.resume():
        print(f"resumed at step {trainer.step}", file=sys.stderr)
    trainer.fit(progress=sys.stderr.isatty())
    trainer.save_model(half=recipe["output"].get("half", False))
    from stemdeck.models import load_model

    result = evaluate(load_model(out), data, "test")
    print(result.table())
    report = out.with_suffix(".eval.json")
    report.write_text(
        json.dumps({**result.as_dict(), "steps": trainer.step, "recipe": str(args.file)}, indent=2) + "\n"
    )
    print(f"{out} ({trainer.step} steps); evaluation in {report}")
    return 0
