"""Training HT Demucs: L1 on waveforms, Adam, EMA weights, clipping, exact resume, validation SDR.

Data for step k is drawn from a generator seeded with (seed, k) and torch's generator is
reseeded per step too, so a run resumed from a checkpoint at step k continues exactly as the
uninterrupted run would have. Checkpoints hold only tensors and plain numbers (torch's
weights-only loader reads them back); the final model is stemdeck's safetensors format.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn

from stemdeck.models.training.dataset import Augment, SegmentSampler, load_stems, track_folders
from stemdeck.models.training.sparsify import SPARSE_TINY, sparse_from_dense
from stemdeck.models.training.synth import check_training_tracks

SOURCES_4 = ("drums", "bass", "other", "vocals")
CONFIGS = {
    # the paper's model (≈ 42 M parameters): for a GPU
    "htdemucs": dict(
        channels=48, depth=4, dconv_mode=3, t_layers=5, bottom_channels=512, t_heads=8, segment=Fraction(39, 5)
    ),
    # laptop-CPU sizes (≈ 2 M and 7 M parameters)
    # `tiny` runs at 22.05 kHz, twice the audio per step on a CPU; the band above its 11 kHz
    # Nyquist is shared among its stems by models.bandwidth
    "tiny": dict(
        channels=16,
        depth=4,
        dconv_mode=3,
        t_layers=2,
        bottom_channels=128,
        t_heads=4,
        segment=Fraction(4),
        samplerate=22050,
    ),
    # `tiny` with sparse attention (issue 17): the same parameters, fine-tuned from the dense weights
    "tiny-sparse": dict(
        channels=16,
        depth=4,
        dconv_mode=3,
        t_layers=2,
        bottom_channels=128,
        t_heads=4,
        segment=Fraction(4),
        samplerate=22050,
        **SPARSE_TINY,
    ),
    "small": dict(channels=24, depth=4, dconv_mode=3, t_layers=3, bottom_channels=256, t_heads=8, segment=Fraction(6)),
}


@dataclass
class TrainConfig:
    config: str = "tiny"
    sources: tuple[str, ...] = SOURCES_4
    batch_size: int = 4
    lr: float = 3e-4
    warmup_steps: int = 0  # the rate rises linearly over these steps: a fresh Adam does not jolt fine-tuned weights
    ema_decay: float = 0.999
    clip_grad_norm: float = 5.0
    source_weights: tuple[float, ...] | None = None  # None: all 1
    steps_per_epoch: int = 200
    epochs: int | None = None
    minutes: float | None = None
    seed: int = 0
    checkpoint_every: int = 50
    augment: Augment = field(default_factory=Augment)
    valid_seconds: float | None = 30.0  # validation separates at most this much of each test track
    threads: int | None = None


def initial_model(config: str, init: str | Path | None, sources=SOURCES_4) -> nn.Module | None:
    """The model to fine-tune from ``init`` (a model name or file), checked against ``config``'s
    shape; None to start from random weights."""
    if init is None:
        return None
    from stemdeck.models import load_model

    model = load_model(init)
    fresh = build_model(config, sources)
    if CONFIGS[config].get("t_sparse_self_attn") and not getattr(model, "init_kwargs", {}).get("t_sparse_self_attn"):
        # a dense model's weights fine-tuned under the sparse pattern
        model = sparse_from_dense(model, **{k: v for k, v in CONFIGS[config].items() if k.startswith("t_")})
    shapes = {k: v.shape for k, v in fresh.state_dict().items()}
    if type(model) is not type(fresh) or {k: v.shape for k, v in model.state_dict().items()} != shapes:
        raise ValueError(f"--init {init} is not a {config!r} model with sources {', '.join(sources)}")
    return model.float().train()


def build_model(config: str, sources=SOURCES_4) -> nn.Module:
    from stemdeck.models.nets.htdemucs import HTDemucs

    if config not in CONFIGS:
        raise ValueError(f"unknown training config {config!r} (use {', '.join(CONFIGS)})")
    return HTDemucs(sources=list(sources), **CONFIGS[config])


class Trainer:
    def __init__(
        self,
        data: Path,
        out: Path,
        config: TrainConfig = TrainConfig(),
        model: nn.Module | None = None,
        precision: str = "auto",
        device: str = "cpu",
    ):
        from stemdeck.models.precision import resolve_precision

        self.config, self.data, self.out = config, Path(data), Path(out)
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.model = (model if model is not None else build_model(config.config, config.sources)).to(self.device)
        self.ema = copy.deepcopy(self.model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.step, self.epoch, self.history = 0, 0, []
        weights = config.source_weights or (1.0,) * len(config.sources)
        self.source_weights = torch.tensor(weights, dtype=torch.float32)
        sr = self.model.samplerate
        folders = track_folders(self.data, "train", config.sources)
        check_training_tracks(folders)  # the held-out SoundFont and voices stay unseen
        tracks = [load_stems(t, config.sources, sr) for t in folders]
        segment_frames = int(float(self.model.segment) * sr)
        self.sampler = SegmentSampler(tracks, segment_frames, sr, config.augment, config.seed)

    @property
    def checkpoint_path(self) -> Path:
        return self.out.with_name(self.out.stem + ".checkpoint.pt")

    # -- one step -----------------------------------------------------------------------------------

    def train_step(self) -> float:
        self.model.train()
        torch.manual_seed(self.config.seed * 1_000_003 + self.step)  # dropout, reproducibly
        stems = self.sampler.batch(self.step, self.config.batch_size).to(self.device)
        mixture = stems.sum(dim=1)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            estimate = self.model(mixture)
        estimate = estimate.float()
        per_source = (estimate - stems).abs().mean(dim=(0, 2, 3))
        weights = self.source_weights.to(self.device)
        loss = (per_source * weights).sum() / weights.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.optimizer.step()
        with torch.no_grad():
            decay = self.ema_decay(self.step)
            for average, current in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                average.lerp_(current, 1.0 - decay)
            for average, current in zip(self.ema.buffers(), self.model.buffers(), strict=True):
                average.copy_(current)
        self.step += 1
        return loss.item()

    def learning_rate(self, step: int) -> float:
        """The configured rate, after a linear warm-up from ``lr / warmup_steps`` at step 0."""
        warmup = self.config.warmup_steps
        return self.config.lr * min(1.0, (step + 1) / warmup) if warmup else self.config.lr

    def ema_decay(self, step: int) -> float:
        """The configured decay, warmed up as (1 + step) / (10 + step): a short run's average is
        not dominated by its random initial weights."""
        return min(self.config.ema_decay, (1.0 + step) / (10.0 + step))

    # -- the loop -----------------------------------------------------------------------------------

    def fit(self, progress: bool = True, max_steps: int | None = None) -> list[dict]:
        from tqdm import tqdm

        cfg = self.config
        if max_steps is not None and self.step >= max_steps:
            return self.history
        deadline = time.monotonic() + 60 * cfg.minutes if cfg.minutes else math.inf
        total_epochs = cfg.epochs if cfg.epochs is not None else (None if cfg.minutes else 1)
        while total_epochs is None or self.epoch < total_epochs:
            bar = tqdm(
                total=cfg.steps_per_epoch,
                initial=self.step % cfg.steps_per_epoch,
                disable=not progress,
                desc=f"epoch {self.epoch + 1}",
                unit="step",
            )
            started, losses = time.monotonic(), []
            while self.step % cfg.steps_per_epoch or not losses:
                losses.append(self.train_step())
                seconds = max(1e-9, time.monotonic() - started)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", seg_per_s=f"{len(losses) * cfg.batch_size / seconds:.1f}")
                bar.update(1)
                if self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if (max_steps is not None and self.step >= max_steps) or time.monotonic() > deadline:
                    bar.close()
                    self.save_checkpoint()
                    return self.history
                if self.step % cfg.steps_per_epoch == 0:
                    break
            bar.close()
            self.epoch += 1
            self.history.append(
                {
                    "epoch": self.epoch,
                    "step": self.step,
                    "loss": sum(losses) / len(losses),
                    "valid_sdr": self.validate(),
                }
            )
            self.save_checkpoint()
            self.save_model()
            if progress:
                print(
                    f"epoch {self.epoch}: loss {self.history[-1]['loss']:.4f}, "
                    f"valid SDR {self.history[-1]['valid_sdr'].get('mean', float('nan')):.2f} dB"
                )
        return self.history

    def validate(self) -> dict[str, float]:
        from stemdeck.models.training.evaluate import evaluate

        try:
            track_folders(self.data, "test", self.config.sources)
        except ValueError:
            return {}
        return evaluate(
            self.ema,
            self.data,
            "test",
            precision="fp32",
            with_museval=False,
            max_seconds=self.config.valid_seconds,
            device=self.device,
        ).average()

    # -- files --------------------------------------------------------------------------------------

    def save_model(self, half: bool = False) -> None:
        from stemdeck.models.checkpoint import save_safetensors

        self.out.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.ema.cpu(), self.out, half=half)
        self.ema.to(self.device)

    def save_checkpoint(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "history": [dict(h, valid_sdr=dict(h["valid_sdr"])) for h in self.history],
            "config": self.config.config,
            "seed": self.config.seed,
        }
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(self.checkpoint_path)

    def resume(self) -> bool:
        """Continue from the checkpoint next to ``out``, if there is one (weights-only load)."""
        if not self.checkpoint_path.exists():
            return False
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(
                f"cannot resume from {self.checkpoint_path}: {str(exc).splitlines()[0]}; delete it to start afresh"
            ) from None
        if state["config"] != self.config.config or state["seed"] != self.config.seed:
            raise ValueError(
                f"{self.checkpoint_path} is from config {state['config']!r} seed {state['seed']}; "
                f"this run is {self.config.config!r} seed {self.config.seed}"
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.history = state["step"], state["epoch"], state["history"]
        return True


def train_config_from_args(args) -> TrainConfig:
    config = TrainConfig(
        config=args.config,
        batch_size=args.batch_size,
        epochs=args.epochs,
        minutes=args.minutes,
        steps_per_epoch=args.steps_per_epoch,
        seed=args.seed,
        threads=args.threads,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
    )
    if args.source_weights:
        config = replace(config, source_weights=tuple(float(w) for w in args.source_weights.split(",")))
    if args.no_augment:
        config = replace(
            config, augment=Augment(shift_s=0, channel_swap=False, sign_flip=False, gain_range=None, remix=False)
        )
    return config
