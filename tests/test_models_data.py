"""The wide song generator: SoundFonts, voices, articulation, per-stem effects, the held-out split."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_HT_KW

from stemdeck.models import HTDemucs
from stemdeck.models.training import synth
from stemdeck.models.training.effects import Chain, Compressor, Distortion, PeakEQ, Reverb, draw_chain
from stemdeck.models.training.evaluate import utterance_sdr
from stemdeck.models.training.synth import (
    HELD_OUT,
    SOUNDFONTS,
    TRAIN_SOUNDFONTS,
    WIDE,
    SoundFont,
    SynthError,
    Variety,
    articulate,
    check_trainable,
    check_training_tracks,
    level_stems,
    render_song,
    synth_dataset,
)
from stemdeck.models.training.train import TrainConfig, Trainer, initial_model
from stemdeck.models.training.voices import HELD_OUT_VOICES, TRAIN_VOICES, EspeakVoice, sing, voice_named

SR = 44100
SOURCES = ("drums", "bass", "other", "vocals")
FONTS = {f.name: f for f in SOUNDFONTS}


def small(font="timgm6mb", voice="formant-bass"):
    """One small SoundFont and one voice: a wide song that renders in about a second."""
    return Variety((FONTS[font],), (voice_named(voice),))


def centroid_hz(mono: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(mono))
    return float(np.sum(spectrum * np.fft.rfftfreq(len(mono), 1 / SR)) / np.sum(spectrum))


# -- the held-out SoundFont and voices ------------------------------------------------------------


def test_held_out_soundfont_and_voices_are_never_training_material():
    assert {f.name for f in TRAIN_SOUNDFONTS} == {"fluidr3", "timgm6mb", "csound-gm"}
    assert [f.name for f in HELD_OUT.soundfonts] == ["musescore"]
    assert {v.name for v in HELD_OUT_VOICES} == {"formant-alto", "espeak-it-f3"}
    assert not {v.name for v in TRAIN_VOICES} & {v.name for v in HELD_OUT_VOICES}
    assert {type(v) for v in TRAIN_VOICES} == {type(voice_named("formant")), EspeakVoice}  # both kinds
    check_trainable(WIDE)  # no error
    with pytest.raises(SynthError, match=r"^musescore, formant-alto, espeak-it-f3 are held out for evaluation"):
        check_trainable(HELD_OUT)
    with pytest.raises(SynthError, match=r"^espeak-it-f3 is held out for evaluation; a training split never"):
        check_trainable(Variety(TRAIN_SOUNDFONTS, (*TRAIN_VOICES, voice_named("espeak-it-f3"))))


def test_training_split_refuses_held_out_songs_before_rendering(tmp_path):
    with pytest.raises(SynthError, match="held out for evaluation"):
        synth_dataset(tmp_path, 1, 2.0, 0, "train", variety=HELD_OUT)
    assert not (tmp_path / "train").exists()


def test_trainer_refuses_a_track_made_with_held_out_material(tmp_path):
    rng = np.random.default_rng(0)
    for name, voice in (("ok", "formant-bass"), ("leak", "espeak-it-f3")):
        folder = tmp_path / "train" / name
        folder.mkdir(parents=True)
        for source in (*SOURCES, "mixture"):
            sf.write(str(folder / f"{source}.wav"), rng.standard_normal((3 * SR, 2)) * 0.1, SR, subtype="FLOAT")
        plan = {"soundfonts": {"drums": "timgm6mb"}, "voice": voice}
        (folder / synth.PLAN_FILE).write_text(json.dumps(plan))
    check_training_tracks([tmp_path / "train" / "ok"])  # training material passes
    with pytest.raises(SynthError, match=r"leak was made with espeak-it-f3, held out for evaluation; move it out"):
        Trainer(tmp_path, tmp_path / "m.safetensors", TrainConfig(batch_size=1), model=HTDemucs(**TINY_HT_KW))


def test_a_missing_soundfont_names_its_package(tmp_path):
    missing = SoundFont("gone", tmp_path / "gone.sf2", "some-soundfont")
    with pytest.raises(
        SynthError, match=r"^SoundFont gone is missing \(.*gone.sf2\); install it: apt install some-soundfont$"
    ):
        synth_dataset(tmp_path, 1, 2.0, 0, "train", variety=Variety((missing,), TRAIN_VOICES))


# -- variety --------------------------------------------------------------------------------------


def test_soundfonts_change_the_instruments_and_nothing_else():
    song = synth.compose(np.random.default_rng(3), 1.5)
    rng = np.random.default_rng(3)
    parts = {
        "drums": synth._midi_file(song, synth.drum_part(song, rng), synth.DRUM_CHANNEL, None, 64),
        "bass": synth._midi_file(song, synth.bass_part(song, rng), 0, 33, 64),
    }
    for name, midi in parts.items():  # the same notes on other samples: far from equal
        tim = synth.render_midi(midi, int(1.5 * SR), FONTS["timgm6mb"].path)
        fluid = synth.render_midi(midi, int(1.5 * SR), FONTS["fluidr3"].path)
        assert np.any(tim) and utterance_sdr(tim, fluid) < 0.0, name  # measured -4.4 and -4.5 dB
    plan = synth.draw_plan(3, song, small("timgm6mb"))
    other = synth.draw_plan(3, song, small("fluidr3"))
    assert plan.describe()["soundfonts"] == dict.fromkeys(("drums", "bass", "other", "other2"), "timgm6mb")
    assert (other.voice, other.chains, other.programs) == (plan.voice, plan.chains, plan.programs)


def test_voices_differ_in_register_and_timbre_and_repeat_for_a_seed():
    song = synth.compose(np.random.default_rng(4), 4.0)
    frames = 4 * SR
    low = sing(voice_named("formant-bass"), song, np.random.default_rng(1), frames)
    high = sing(voice_named("formant-soprano"), song, np.random.default_rng(1), frames)
    assert np.array_equal(low, sing(voice_named("formant-bass"), song, np.random.default_rng(1), frames))
    assert centroid_hz(high) > 1.5 * centroid_hz(low)  # measured 2410 against 1174 Hz
    spoken = sing(voice_named("espeak-en-f2"), song, np.random.default_rng(1), frames)
    assert np.array_equal(spoken, sing(voice_named("espeak-en-f2"), song, np.random.default_rng(1), frames))
    blocks = spoken[: frames // 4410 * 4410].reshape(-1, 4410)
    sung = np.sqrt(np.mean(blocks**2, axis=1)) > 0.01
    assert 0.3 < sung.mean() < 0.95  # phrases with gaps
    assert utterance_sdr(spoken, low) < 1.0  # another voice altogether


def test_articulation_varies_velocity_length_and_timing_deterministically():
    song = synth.compose(np.random.default_rng(2), 8.0)
    events = synth.bass_part(song, np.random.default_rng(2))
    varied = articulate(events, np.random.default_rng(5))
    assert varied == articulate(events, np.random.default_rng(5))
    assert len(varied) == len(events)
    velocities = [e[1][2] for e in varied[0::2]]
    assert np.std(velocities) > 3 and all(1 <= v <= 127 for v in velocities)
    ratios = [
        (off[0] - on[0]) / (o[0] - n[0])
        for on, off, n, o in zip(varied[0::2], varied[1::2], events[0::2], events[1::2], strict=True)
    ]
    assert np.ptp(ratios) < 0.2 and not np.allclose(ratios, 1.0)  # one length factor per part (or the 0.05-beat floor)
    assert all(on[0] >= 0 for on in varied[0::2])
    assert [e[1][1] for e in varied] == [e[1][1] for e in events]  # the same notes
    drums = synth.drum_part(song, np.random.default_rng(2))
    kept = articulate(drums, np.random.default_rng(5), lengths=False)
    assert np.allclose(
        [b[0] - a[0] for a, b in zip(kept[0::2], kept[1::2], strict=True)],
        [b[0] - a[0] for a, b in zip(drums[0::2], drums[1::2], strict=True)],
    )


# -- effects and levels ---------------------------------------------------------------------------


def test_each_effect_keeps_the_length_and_does_its_job():
    t = np.arange(SR) / SR
    sine = np.stack([np.sin(2 * np.pi * 220 * t)] * 2) * 0.3
    distorted = Chain(distortion=Distortion(drive_db=20, tone_hz=8000, mix=1.0)).apply(sine, 0)
    spectrum = np.abs(np.fft.rfft(distorted[0]))
    assert distorted.shape == sine.shape and distorted.dtype == np.float32
    assert spectrum[660] > 0.1 * spectrum[220]  # odd harmonics from the clipper (1 Hz bins)
    burst = np.zeros((2, SR))
    burst[:, SR // 4 : SR // 4 + 100] = 1.0
    wet = Chain(reverb=Reverb(decay_s=0.5, pre_delay_ms=10, wet=0.5)).apply(burst, 3)
    assert wet.shape == burst.shape
    assert np.sqrt(np.mean(wet[:, SR // 2 :] ** 2)) > 1e-3  # a tail after the burst has ended
    assert not np.array_equal(wet[0], wet[1])  # a diffuse room: the channels decorrelate
    assert np.array_equal(wet, Chain(reverb=Reverb(0.5, 10, 0.5)).apply(burst, 3))  # seeded
    loud_quiet = sine * np.where(t < 0.5, 1.0, 0.1)
    squashed = Chain(compressor=Compressor(threshold_db=-12, ratio=8, smoothing_ms=10)).apply(loud_quiet, 0)
    before = np.std(loud_quiet[0, : SR // 2]) / np.std(loud_quiet[0, SR // 2 :])
    after = np.std(squashed[0, : SR // 2]) / np.std(squashed[0, SR // 2 :])
    assert after < before / 2  # 20 dB apart before
    boosted = Chain(eq=(PeakEQ(220, 6.0, 1.0),)).apply(sine, 0)
    assert np.std(boosted[:, 1000:]) / np.std(sine[:, 1000:]) == pytest.approx(10 ** (6 / 20), rel=0.02)


def test_guitars_are_distorted_more_often_than_voices():
    rng = np.random.default_rng(0)
    guitar = [draw_chain(rng, "other", 29).distortion is not None for _ in range(200)]
    voice = [draw_chain(rng, "vocals").distortion is not None for _ in range(200)]
    assert np.mean(guitar) > 0.55 and not any(voice)


def test_wide_stems_repeat_for_a_seed_and_are_levelled_by_loudness_after_their_effects():
    stems, plan = render_song(7, 2.0, variety=small())  # song 7 starts with the voice singing
    again, _ = render_song(7, 2.0, variety=small())
    song = synth.compose(np.random.default_rng(7), 2.0)
    assert any(_on(plan.chains[s]) for s in SOURCES)  # effects applied, yet every level as the classic songs'
    mix_peak = np.abs(sum(stems.values())).max()
    for name in SOURCES:
        assert stems[name].shape == (2, 2 * SR) and stems[name].dtype == np.float32
        assert np.array_equal(stems[name], again[name]), name
        assert np.any(stems[name]), name
        rms_db = 10 * np.log10(np.mean(np.square(stems[name], dtype=np.float64)))
        expected_db = (
            synth.STEM_RMS_DBFS + song.gains_db[name] + (0 if mix_peak < 0.979 else 20 * np.log10(0.98 / mix_peak))
        )
        assert rms_db <= synth.STEM_RMS_DBFS + song.gains_db[name] + 1e-3
        if mix_peak < 0.979:
            assert rms_db == pytest.approx(expected_db, abs=0.01), name


def _on(chain: Chain) -> bool:
    return bool(chain.eq or chain.compressor or chain.distortion or chain.reverb)


def test_level_stems_sets_each_rms_and_keeps_the_mix_under_full_scale():
    rng = np.random.default_rng(0)
    stems = {s: (rng.standard_normal((2, SR)) * 0.01 * (i + 1)).astype(np.float32) for i, s in enumerate(SOURCES)}
    gains = {"drums": 0.0, "bass": -3.0, "other": -6.0, "vocals": -1.5}
    out = level_stems(dict(stems), gains)
    for s in SOURCES:
        assert 10 * np.log10(np.mean(out[s].astype(np.float64) ** 2)) == pytest.approx(-20 + gains[s], abs=1e-3)
        assert out[s].shape == (2, SR)


# -- commands -------------------------------------------------------------------------------------


def test_heldout_command_writes_the_evaluation_set_with_its_plan(tmp_path, monkeypatch):
    from stemdeck.cli import get_parser, run_parsed

    stand_in = Variety(
        (SoundFont("timgm6mb", FONTS["timgm6mb"].path, "timgm6mb-soundfont", True),), HELD_OUT_VOICES[:1]
    )
    monkeypatch.setattr(synth, "HELD_OUT", stand_in)  # MuseScore General is 34 MB: a small stand-in
    assert run_parsed(get_parser(), ["dataset", "heldout", str(tmp_path), "--tracks", "1", "--seconds", "2"]) == 0
    (track,) = (tmp_path / "test").iterdir()
    plan = json.loads((track / synth.PLAN_FILE).read_text())
    assert plan["voice"] == "formant-alto" and set(plan["soundfonts"].values()) == {"timgm6mb"}
    mixture, rate = sf.read(str(track / "mixture.wav"), always_2d=True)
    assert rate == SR and mixture.shape == (2 * SR, 2)


def test_recipe_refuses_data_parts_that_share_a_seed(tmp_path):
    from stemdeck.models.training.recipe import render_data

    spec = {"seconds": 2.0, "train": [{"seed": 1, "tracks": 1}], "test": [{"seed": 1, "tracks": 1, "style": "wide"}]}
    with pytest.raises(ValueError, match="distinct seeds"):
        render_data(spec, tmp_path / "data", tmp_path)


def test_fine_tuning_starts_from_a_model_of_the_same_shape(tmp_path):
    from stemdeck.models.checkpoint import save_safetensors

    model = initial_model("tiny", "tiny")
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) < 5e6
    other = tmp_path / "other.safetensors"
    save_safetensors(HTDemucs(**TINY_HT_KW), other)
    with pytest.raises(ValueError, match=r"--init .*other.safetensors is not a 'tiny' model"):
        initial_model("tiny", other)
    assert initial_model("tiny", None) is None


def test_the_sparse_tiny_starts_from_the_dense_bundled_weights():
    from stemdeck.models.nets.transformer import SparseAttention

    dense = initial_model("tiny", "tiny")
    sparse = initial_model("tiny-sparse", "tiny")
    assert isinstance(sparse.crosstransformer.layers[0].self_attn, SparseAttention)
    assert sparse.init_kwargs["t_mask_type"] == "diag_global" and sparse.init_kwargs["t_sparse_attn_window"] == 64
    assert sum(p.numel() for p in sparse.parameters()) == sum(p.numel() for p in dense.parameters())
    in_proj = dense.state_dict()["crosstransformer.layers_t.1.cross_attn.in_proj_weight"]
    assert torch.equal(sparse.state_dict()["crosstransformer.layers_t.1.cross_attn.k.weight"], in_proj.chunk(3)[1])
    assert torch.equal(sparse.state_dict()["encoder.0.conv.weight"], dense.state_dict()["encoder.0.conv.weight"])
