"""Datasets, augmentations, curation, the synthesiser, training and evaluation on small data."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_HT_KW
from torch import nn

from stemdeck.models import HTDemucs
from stemdeck.models.nets.passthrough import PassThrough
from stemdeck.models.training.curate import active_fraction, curate, write_report
from stemdeck.models.training.dataset import Augment, DatasetError, SegmentSampler, load_stems, track_folders
from stemdeck.models.training.evaluate import evaluate, utterance_sdr
from stemdeck.models.training.train import TrainConfig, Trainer

SR = 44100
SOURCES = ("drums", "bass", "other", "vocals")
NO_AUGMENT = Augment(shift_s=0, channel_swap=False, sign_flip=False, gain_range=None, remix=False)


def write_track(folder, stems: dict, samplerate=SR):
    folder.mkdir(parents=True)
    for name, audio in stems.items():
        sf.write(str(folder / f"{name}.wav"), audio.T, samplerate, subtype="FLOAT")
    sf.write(str(folder / "mixture.wav"), sum(stems.values()).T, samplerate, subtype="FLOAT")


def music_like(seconds, seed):
    """Distinct, learnable stems: clicks, a low sine, a chord, a vibrato tone."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = rng.uniform(60, 90)
    drums = (np.mod(t, 0.25) < 0.01) * rng.standard_normal(len(t)) * 0.3
    bass = 0.3 * np.sin(2 * np.pi * f0 * t)
    other = 0.1 * sum(np.sin(2 * np.pi * f * t) for f in (rng.uniform(300, 400), 500.0, 600.0))
    vocals = 0.2 * np.sin(2 * np.pi * rng.uniform(800, 1000) * t + 3 * np.sin(2 * np.pi * 5 * t))
    return {
        n: np.stack([s, 0.8 * s]).astype(np.float32) for n, s in zip(SOURCES, (drums, bass, other, vocals), strict=True)
    }


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        write_track(root / "train" / f"t{i}", music_like(6.0, i))
    write_track(root / "test" / "v0", music_like(4.0, 99))
    return root


# -- dataset and augmentations --------------------------------------------------------------------


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match=r"train does not exist; a dataset has train/ and test/ folders"):
        track_folders(tmp_path, "train", SOURCES)


def test_augmented_stems_are_real_stems_of_their_source(tmp_path):
    """Track k, source s, channel c is the constant (k+1)·10^s·(1, 2)[c]: every augmented stem must
    still be one track's constant of the same source, ±, swapped or not, scaled within range."""
    tracks = [
        np.stack([np.full((2, SR * 2), (k + 1) * 10.0**s) * np.array([[1.0], [2.0]]) for s in range(4)]).astype(
            np.float32
        )
        for k in range(3)
    ]
    sampler = SegmentSampler(tracks, SR // 2, SR, Augment(tempo_range=None), seed=3)
    batch = sampler.batch(0, 8).numpy()
    assert batch.shape == (8, 4, 2, SR // 2)
    for b in range(8):
        for s in range(4):
            left, right = batch[b, s, 0], batch[b, s, 1]
            assert np.ptp(left) < 1e-5 and np.ptp(right) < 1e-5
            ratio = right[0] / left[0]
            assert ratio == pytest.approx(2.0, rel=1e-5) or ratio == pytest.approx(0.5, rel=1e-5)
            base = min(abs(left[0]), abs(right[0])) / 10.0**s  # (k+1) x gain
            assert any(0.25 - 1e-5 <= base / (k + 1) <= 1.25 + 1e-5 for k in range(3))
    assert np.array_equal(sampler.batch(5, 4).numpy(), sampler.batch(5, 4).numpy())  # seeded by step
    assert not np.array_equal(sampler.batch(5, 4).numpy(), sampler.batch(6, 4).numpy())


def test_shift_and_tempo_keep_each_stem_a_segment_of_its_track(dataset):
    stems = load_stems(track_folders(dataset, "train", SOURCES)[0], SOURCES, SR)
    sampler = SegmentSampler(
        [stems], SR, SR, Augment(shift_s=0.5, channel_swap=False, sign_flip=False, gain_range=None, remix=False), seed=0
    )
    batch = sampler.batch(1, 2).numpy()
    for b in range(2):
        for s in range(4):  # found verbatim somewhere in the source's own stem
            segment = batch[b, s, 0]
            hits = [
                o
                for o in range(stems.shape[-1] - SR + 1)
                if np.array_equal(stems[s, 0, o : o + 100], segment[:100])
                and np.array_equal(stems[s, 0, o : o + SR], segment)
            ]
            assert hits
    tempo = SegmentSampler([stems], SR, SR, Augment(shift_s=0, remix=False, tempo_range=(0.9, 1.1)), seed=0)
    assert tempo.batch(0, 2).shape == (2, 4, 2, SR)


def test_stems_are_resampled_to_the_model_rate_and_mixed_rates_refused(tmp_path):
    track = tmp_path / "train" / "song"
    track.mkdir(parents=True)
    t = np.arange(48000) / 48000
    for source in SOURCES:
        sf.write(str(track / f"{source}.wav"), np.stack([np.sin(2 * np.pi * 440 * t)] * 2, axis=1) * 0.5, 48000)
    stems = load_stems(track, SOURCES, 22050)
    assert stems.shape == (4, 2, 22050) and stems.dtype == np.float32
    expected = np.sin(2 * np.pi * 440 * np.arange(22050) / 22050) * 0.5
    assert np.abs(stems[0, 0, 1000:-1000] - expected[1000:-1000]).max() < 1e-3  # the same tone, same time
    sf.write(str(track / "bass.wav"), np.zeros((44100, 2)), 44100)
    with pytest.raises(DatasetError, match=r"the stems of .*song differ in sample rate \(44100, 48000 Hz\)"):
        load_stems(track, SOURCES, 22050)


def test_dataset_mixture_is_the_sum_of_stems(dataset):
    track = track_folders(dataset, "train", SOURCES)[0]
    mixture, _ = sf.read(str(track / "mixture.wav"), dtype="float32", always_2d=True)
    assert np.allclose(mixture.T, load_stems(track, SOURCES, SR).sum(0), atol=1e-6)


# -- curation -------------------------------------------------------------------------------------


class BandSplit(nn.Module):
    """A known separator: bass below 200 Hz, drums above 2 kHz, the rest 'other', nothing 'vocals'."""

    sources, samplerate, audio_channels, segment = list(SOURCES), SR, 2, 4.0

    def forward(self, mix):
        spectrum = torch.fft.rfft(mix, dim=-1)
        freqs = torch.fft.rfftfreq(mix.shape[-1], 1 / SR)
        bands = [freqs >= 2000, freqs < 200, (freqs >= 200) & (freqs < 2000), torch.zeros_like(freqs, dtype=bool)]
        return torch.stack([torch.fft.irfft(spectrum * b, n=mix.shape[-1], dim=-1) for b in bands], dim=1)


def test_curation_rules_on_constructed_cases(tmp_path):
    stems = music_like(20.0, 0)
    quiet = {k: v.copy() for k, v in stems.items()}
    quiet["vocals"][:, : 15 * SR] = 0  # silent 75 % of the time
    kept = {k: v.copy() for k, v in stems.items()}
    kept["vocals"][:, : 13 * SR] = 0  # active 35 % of the time
    bleeding = {k: v.copy() for k, v in stems.items()}
    level = np.sqrt(np.sum(stems["bass"] ** 2) / np.sum(stems["drums"] ** 2))  # the kit as loud as the bass
    bleeding["bass"] = (stems["bass"] + level * stems["drums"]).astype(np.float32)
    for name, case in (("quiet", quiet), ("kept", kept), ("bleeding", bleeding)):
        write_track(tmp_path / "train" / name, case)
    assert active_fraction(quiet["vocals"], SR) == pytest.approx(0.25)
    reports = {r.track: r for r in curate(tmp_path, BandSplit(), threshold=0.3)}
    assert not reports["train/quiet"].kept and reports["train/quiet"].stems["vocals"].verdict == "dropped"
    assert "non-silent 25 % of the time (< 30 %)" in reports["train/quiet"].stems["vocals"].reason
    assert reports["train/kept"].kept and reports["train/kept"].stems["vocals"].active_fraction == pytest.approx(0.35)
    assert reports["train/bleeding"].stems["bass"].verdict == "flagged"
    assert reports["train/kept"].stems["bass"].verdict == "kept"
    assert reports["train/kept"].stems["bass"].leakage < 0.05
    table = write_report(list(reports.values()), tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())[0]["stems"]["drums"]["verdict"] in ("kept", "flagged")
    assert "2 of 3 tracks kept" in table
    assert (tmp_path / "train" / "quiet" / "vocals.wav").exists()  # nothing deleted


# -- evaluation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_sdr_of_target_plus_noise_at_a_set_snr(snr_db):
    rng = np.random.default_rng(0)
    target = rng.standard_normal((2, SR)).astype(np.float64)
    noise = rng.standard_normal((2, SR))
    noise *= np.sqrt(np.sum(target**2) / np.sum(noise**2) / 10 ** (snr_db / 10))
    assert utterance_sdr(target, target + noise) == pytest.approx(snr_db, abs=1e-6)


def test_evaluate_scores_an_exact_model_and_the_mixture_baseline(tmp_path):
    fractions = (0.1, 0.2, 0.3, 0.4)
    signal = np.random.default_rng(1).standard_normal((2, 3 * SR)).astype(np.float32) * 0.1
    write_track(tmp_path / "test" / "exact", {s: f * signal for s, f in zip(SOURCES, fractions, strict=True)})
    result = evaluate(PassThrough(), tmp_path, "test", precision="fp32", with_museval=False)
    assert all(v > 60 for v in result.average().values())  # the stems are exactly what it predicts
    for s, f in zip(SOURCES, fractions, strict=True):  # mixture as estimate: 10·log10(f² / (1 − f)²)
        assert result.average(result.baseline)[s] == pytest.approx(20 * np.log10(f / (1 - f)), abs=1e-4)
    assert "| mixture baseline |" in result.table()


# -- training -------------------------------------------------------------------------------------


def small_trainer(dataset, out, **config):
    torch.manual_seed(0)
    model = HTDemucs(**TINY_HT_KW)
    config = {"lr": 1e-3, **config}
    return Trainer(
        dataset,
        out,
        TrainConfig(batch_size=2, checkpoint_every=1000, augment=NO_AUGMENT, **config),
        model=model,
        precision="fp32",
    )


def test_a_few_steps_lower_the_loss(dataset, tmp_path):
    trainer = small_trainer(dataset, tmp_path / "m.safetensors", lr=3e-3)
    held_out = trainer.sampler.batch(10**6, 4)

    def loss():
        trainer.model.eval()
        with torch.no_grad():
            return float((trainer.model(held_out.sum(1)) - held_out).abs().mean())

    before = loss()
    for _ in range(12):
        trainer.train_step()
    assert loss() < 0.95 * before  # measured: 0.1017 → 0.092 after 12 steps


def test_resumed_training_continues_identically(dataset, tmp_path):
    straight = small_trainer(dataset, tmp_path / "a.safetensors")
    for _ in range(4):
        straight.train_step()
    first = small_trainer(dataset, tmp_path / "b.safetensors")
    for _ in range(2):
        first.train_step()
    first.save_checkpoint()
    resumed = small_trainer(dataset, tmp_path / "b.safetensors")
    assert resumed.resume() and resumed.step == 2
    for _ in range(2):
        resumed.train_step()
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    for name, value in straight.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[name]), name


def test_train_and_eval_commands(dataset, tmp_path):
    out = tmp_path / "model.safetensors"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stemdeck",
            "train",
            "--data",
            str(dataset),
            "--config",
            "tiny",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--batch-size",
            "1",
            "--precision",
            "fp32",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    from stemdeck.models import load_model

    model = load_model(out)
    assert sum(p.numel() for p in model.parameters()) < 5e6  # the tiny config
    report = tmp_path / "eval.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stemdeck",
            "eval",
            "--model",
            str(out),
            "--data",
            str(dataset),
            "--json",
            str(report),
            "--precision",
            "fp32",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    scores = json.loads(report.read_text())
    assert set(scores["sdr"]) == {*SOURCES, "mean"} and set(scores["mixture_baseline"]) == {*SOURCES, "mean"}
    assert "| improvement |" in result.stdout


def test_resume_refuses_another_run_checkpoint(dataset, tmp_path):
    first = small_trainer(dataset, tmp_path / "m.safetensors")
    first.save_checkpoint()
    other = small_trainer(dataset, tmp_path / "m.safetensors", seed=5)
    with pytest.raises(ValueError, match="is from config 'tiny' seed 0; this run is 'tiny' seed 5"):
        other.resume()


# -- the synthesiser ------------------------------------------------------------------------------


def test_synth_writes_musdb_tracks_deterministically(tmp_path):
    from stemdeck.models.training.synth import SOURCES as SYNTH_SOURCES
    from stemdeck.models.training.synth import synth_dataset

    first = synth_dataset(tmp_path / "a", 1, 12.0, seed=7)[0]
    second = synth_dataset(tmp_path / "b", 1, 12.0, seed=7)[0]
    other = synth_dataset(tmp_path / "c", 1, 12.0, seed=8)[0]
    assert first.relative_to(tmp_path / "a") == second.relative_to(tmp_path / "b")
    assert first.parent.name == "train"
    stems = load_stems(first, SYNTH_SOURCES, SR)
    assert stems.shape == (4, 2, 12 * SR)
    assert np.array_equal(stems, load_stems(second, SYNTH_SOURCES, SR))  # same seed, same song
    assert not np.array_equal(stems, load_stems(other, SYNTH_SOURCES, SR))
    mixture, rate = sf.read(str(first / "mixture.wav"), dtype="float64", always_2d=True)
    assert rate == SR and np.allclose(mixture.T, stems.astype(np.float64).sum(0), atol=1e-6)
    assert np.abs(mixture).max() < 1.0
    for s, name in enumerate(SYNTH_SOURCES):  # every part passes curation (the voice rests in intros)
        assert active_fraction(stems[s], SR) >= 0.3, name


def test_synth_vocal_sings_in_a_voice_range_with_phrases():
    from stemdeck.models.training.synth import compose, vocal_part

    rng = np.random.default_rng(4)
    song = compose(rng, 12.0)
    voice = vocal_part(song, rng, 12 * SR)
    frames = voice[: 12 * SR // 2048 * 2048].reshape(-1, 2048)
    loud = np.sqrt((frames**2).mean(1)) > 0.01
    assert 0.3 < loud.mean() < 0.95  # sung phrases with gaps between them
    spectrum = np.abs(np.fft.rfft(frames[loud] * np.hanning(2048), axis=1)).mean(0)
    freqs = np.fft.rfftfreq(2048, 1 / SR)
    assert 200 < freqs[np.argmax(spectrum)] < 4000  # the energy sits in the formant region


def test_ema_warms_up_then_holds_the_configured_decay(dataset, tmp_path):
    trainer = small_trainer(dataset, tmp_path / "m.safetensors")
    assert trainer.ema_decay(0) == pytest.approx(0.1)
    assert trainer.ema_decay(90) == pytest.approx(0.91)
    assert trainer.ema_decay(100_000) == pytest.approx(0.999)
    start = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    trainer.train_step()  # step 0: the average moves 90 % of the way to the trained weights
    name = next(k for k, v in start.items() if v.is_floating_point() and v.numel() > 10)
    moved = trainer.ema.state_dict()[name] - start[name]
    target = trainer.model.state_dict()[name] - start[name]
    assert torch.allclose(moved, 0.9 * target, atol=1e-7)


def test_learning_rate_warms_up_and_fit_stops_at_max_steps_for_good(dataset, tmp_path):
    trainer = small_trainer(dataset, tmp_path / "m.safetensors", lr=1e-3, warmup_steps=4, steps_per_epoch=100)
    assert [trainer.learning_rate(s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert small_trainer(dataset, tmp_path / "n.safetensors").learning_rate(0) == 1e-3  # no warm-up
    trainer.fit(progress=False, max_steps=2)
    assert trainer.step == 2 and trainer.checkpoint_path.exists()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)  # what step 1 used
    resumed = small_trainer(dataset, tmp_path / "m.safetensors", lr=1e-3, warmup_steps=4, steps_per_epoch=100)
    assert resumed.resume() and resumed.step == 2
    resumed.fit(progress=False, max_steps=2)
    assert resumed.step == 2  # a finished run takes no more steps


# -- the commands' input checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "no [data] table"),
        ('[data]\nfolder = "x"\n', "[data] has no seconds"),
        (
            '[data]\nfolder = "x"\nseconds = 1.0\ntrain = []\ntest = []\n[train]\nconfig = "tiny"\n',
            "[train] has no minutes",
        ),
    ],
)
def test_a_recipe_missing_a_key_is_named_in_one_line(tmp_path, capsys, text, message):
    """A recipe without ``[data]`` gave ``KeyError: 'data'`` and a traceback."""
    from stemdeck.cli import main

    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    assert main(["recipe", str(recipe), "--workdir", str(tmp_path / "work")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"stemdeck: error: recipe {recipe}: {message} (models/recipes/tiny.toml shows every key)"
    assert not (tmp_path / "work").exists()


def test_curating_a_folder_that_is_not_a_dataset_is_an_error(tmp_path, capsys):
    """A mistyped folder printed "0 of 0 tracks kept", exit 0, and a report of nothing."""
    from stemdeck.cli import main

    report = tmp_path / "r.json"
    assert main(["dataset", "curate", str(tmp_path / "none"), "--report", str(report)]) == 1
    assert main(["dataset", "curate", str(tmp_path), "--report", str(report)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"stemdeck: error: no folder {tmp_path / 'none'}; name a dataset's folder (one with train/ or test/ in it)",
        f"stemdeck: error: {tmp_path} has no train/ or test/ folder of tracks; name the dataset's top folder",
    ]
    assert not report.exists()
