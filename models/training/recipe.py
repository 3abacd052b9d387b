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
    from stemdeck.models.training.train import TrainConfig, Trainer, initial_model

    try:
        recipe = tomllib.loads(args.file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read recipe {args.file}: {exc}") from None
    check_recipe(recipe, args.file)
    data = args.workdir / recipe["data"]["folder"]
    render_data(recipe["data"], data, args.workdir)
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
        lr=t.get("lr", 3e-4),
        warmup_steps=t.get("warmup_steps", 0),
        augment=Augment(),
    )
    trainer = Trainer(
        data, out, config, model=initial_model(t["config"], t.get("init")), precision=t.get("precision", "auto")
    )
    if trainer.resume():
        print(f"resumed at step {trainer.step}", file=sys.stderr)
    trainer.fit(progress=sys.stderr.isatty(), max_steps=t.get("steps"))
    trainer.save_model(half=recipe["output"].get("half", False))
    report = evaluate_recipe(recipe["data"], out, data, args.workdir)
    report_path = out.with_suffix(".eval.json")
    report_path.write_text(json.dumps({**report, "steps": trainer.step, "recipe": str(args.file)}, indent=2) + "\n")
    print(f"{out} ({trainer.step} steps); evaluation in {report_path}")
    return 0


# What every recipe names (models/recipes/tiny.toml has them all); the rest have defaults.
REQUIRED_KEYS = {
    "data": ("folder", "seconds", "train", "test"),
    "train": ("config", "minutes", "batch_size", "steps_per_epoch", "seed"),
    "output": ("model",),
}


def check_recipe(recipe: dict, path: Path) -> None:
    """Name the first table or key a recipe lacks, before any data is rendered."""
    for table, keys in REQUIRED_KEYS.items():
        if not isinstance(recipe.get(table), dict):
            raise ValueError(f"recipe {path}: no [{table}] table (models/recipes/tiny.toml shows every key)")
        for key in keys:
            if key not in recipe[table]:
                raise ValueError(f"recipe {path}: [{table}] has no {key} (models/recipes/tiny.toml shows every key)")


def render_data(spec: dict, data: Path, workdir: Path) -> None:
    """The recipe's songs, rendered where missing: classic parts, wide parts (``style = "wide"``)
    and the held-out evaluation set (``[data.heldout]``, in its own folder)."""
    from stemdeck.models.training.synth import HELD_OUT, WIDE, synth_dataset, track_folder

    seeds = [part["seed"] for split in ("train", "test") for part in spec[split]]
    if len(seeds) != len(set(seeds)):
        raise ValueError("a recipe's data parts need distinct seeds: songs of one seed share folder names")
    progress = sys.stderr.isatty()
    for split in ("train", "test"):
        for part in spec[split]:
            variety = WIDE if part.get("style", "classic") == "wide" else None
            expected = [track_folder(data, split, part["seed"], i) for i in range(part["tracks"])]
            if not all((f / "mixture.wav").exists() for f in expected):
                synth_dataset(data, part["tracks"], spec["seconds"], part["seed"], split, progress, variety=variety)
    if "heldout" in spec:
        part, folder = spec["heldout"], workdir / spec["heldout"]["folder"]
        expected = [track_folder(folder, "test", part["seed"], i) for i in range(part["tracks"])]
        if not all((f / "mixture.wav").exists() for f in expected):
            synth_dataset(folder, part["tracks"], spec["seconds"], part["seed"], "test", progress, variety=HELD_OUT)


def evaluate_recipe(spec: dict, model_path: Path, data: Path, workdir: Path) -> dict:
    """SDR on the recipe's test songs and, when it names one, on the held-out set."""
    from stemdeck.models import load_model
    from stemdeck.models.training.evaluate import evaluate

    model = load_model(model_path)
    result = evaluate(model, data, "test")
    print(result.table())
    report = result.as_dict()
    if "heldout" in spec:
        held = evaluate(model, workdir / spec["heldout"]["folder"], "test")
        print("held-out SoundFont and voices:")
        print(held.table())
        report["heldout"] = held.as_dict()
    return report
