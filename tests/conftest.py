"""Shared fixtures: model configurations, reference twins, audio files."""
from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

SOURCES_4 = ["drums", "bass", "other", "vocals"]
SOURCES_6 = SOURCES_4 + ["guitar", "piano"]

# The official checkpoints' architectures (kwargs as recorded in the released packages).
HTDEMUCS_KW = dict(sources=SOURCES_4, channels=48, depth=4, dconv_mode=3, t_layers=5,
                   bottom_channels=512, t_dropout=0.02, segment=Fraction(39, 5))
HTDEMUCS_6S_KW = dict(HTDEMUCS_KW, sources=SOURCES_6)
HDEMUCS_MMI_KW = dict(sources=SOURCES_4, channels=48, depth=6, dconv_mode=1, dconv_comp=8,
                      dconv_attn=4, dconv_lstm=4, dconv_init=1e-3, multi_freqs=[], segment=44)
# A small HT Demucs with every feature on, for fast end-to-end tests.
TINY_HT_KW = dict(sources=SOURCES_4, channels=8, depth=4, dconv_mode=3, t_layers=2,
                  bottom_channels=32, t_heads=4, segment=Fraction(2, 1))


def make_pair(reference_class, our_class, kwargs, seed=0):
    """A reference model with random weights and ours with the same state, both in eval mode."""
    torch.manual_seed(seed)
    reference = reference_class(**kwargs).eval()
    ours = our_class(**kwargs).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.fixture(scope="session")
def htdemucs_pair():
    from demucs.htdemucs import HTDemucs as Reference

    from models import HTDemucs
    return make_pair(Reference, HTDemucs, HTDEMUCS_KW)


@pytest.fixture(scope="session")
def tiny_model():
    from models import HTDemucs
    torch.manual_seed(1)
    return HTDemucs(**TINY_HT_KW).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    from models import save_safetensors
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_safetensors(tiny_model, path)
    return path


def write_tone(path: Path, seconds: float = 3.0, samplerate: int = 44100, channels: int = 2,
               **kwargs) -> np.ndarray:
    t = np.arange(int(seconds * samplerate)) / samplerate
    audio = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)])
    sf.write(str(path), audio.T, samplerate, **kwargs)
    return audio.astype(np.float32)


@pytest.fixture(autouse=True)
def _isolated_model_dirs(tmp_path, monkeypatch):
    """No test sees the user's cache or reaches the official download location."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("STEMDECK_MODEL_DIR", raising=False)
    monkeypatch.setenv("STEMDECK_MODEL_URL", (tmp_path / "no-server").as_uri())
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
