"""Model registry: offline folders, file:// downloads with checksums, clear messages."""

import hashlib
import shutil

import pytest

from stemdeck.cli import main
from stemdeck.models import ModelNotAvailableError, load_model, registry
from stemdeck.models.checkpoint import CheckpointError


@pytest.fixture
def fake_release(tmp_path, tiny_checkpoint, monkeypatch):
    """A local mirror of the release layout holding one model, registered as 'tinyht'."""
    data = tiny_checkpoint.read_bytes()
    checksum = hashlib.sha256(data).hexdigest()[:8]
    remote = registry.RemoteFile("hybrid_transformer", f"abcd1234-{checksum}.safetensors")
    mirror = tmp_path / "mirror"
    (mirror / "hybrid_transformer").mkdir(parents=True)
    (mirror / "hybrid_transformer" / remote.filename).write_bytes(data)
    spec = registry.ModelSpec("tinyht", ("drums", "bass", "other", "vocals"), (remote,), "test model")
    monkeypatch.setitem(registry.REGISTRY, "tinyht", spec)
    monkeypatch.setenv("STEMDECK_MODEL_URL", mirror.as_uri())
    return spec, mirror


def test_fetch_downloads_verifies_and_caches(fake_release):
    spec, _ = fake_release
    assert not registry.is_cached(spec)
    paths = registry.fetch("tinyht", progress=False)
    assert paths[0].parent == registry.cache_dir() and paths[0].exists()
    assert registry.is_cached(spec)
    model = load_model("tinyht")
    assert model.sources == ["drums", "bass", "other", "vocals"]


def test_a_mirror_named_by_its_folder_path_works_as_its_file_url(fake_release, monkeypatch):
    """A bare path in $STEMDECK_MODEL_URL gave urllib's "unknown url type"."""
    spec, mirror = fake_release
    monkeypatch.setenv("STEMDECK_MODEL_URL", str(mirror))
    assert registry.root_url() == mirror.as_uri() + "/"
    assert registry.fetch("tinyht", progress=False)[0].is_file() and registry.is_cached(spec)


def test_checksum_mismatch_keeps_nothing(fake_release):
    spec, mirror = fake_release
    target = mirror / "hybrid_transformer" / spec.files[0].filename
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        registry.fetch("tinyht", progress=False)
    assert not registry.is_cached(spec)
    assert not list(registry.cache_dir().glob("*.partial"))


@pytest.mark.parametrize("renamed", [False, True])
def test_a_damaged_cached_file_is_listed_as_damaged_and_fetch_replaces_it(fake_release, capsys, renamed):
    """``models list`` showed a 9-byte garbage file as "yes (0 MB)", under the official name and
    renamed to the signature alike (the README's names for a copy made by hand)."""
    spec, _ = fake_release
    registry.cache_dir().mkdir(parents=True, exist_ok=True)
    remote = spec.files[0]
    cached = registry.cache_dir() / (f"{remote.signature}.safetensors" if renamed else remote.filename)
    cached.write_bytes(b"not torch")
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.startswith("tinyht "))
    assert row.split()[3:6] == ["damaged", "(1", "of"]
    assert out[-1] == (
        f"tinyht: {cached} is not this model's file (its checksum or its format); delete it and run "
        "`stemdeck models fetch tinyht`"
    )
    cached.unlink()
    registry.fetch("tinyht", progress=False)
    assert registry.damaged_files(spec) == []
    assert main(["models", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("tinyht "))
    assert row.split()[3] == "yes"


def test_no_network_says_where_to_put_the_file(fake_release, monkeypatch, tmp_path):
    monkeypatch.setenv("STEMDECK_MODEL_URL", (tmp_path / "nowhere").as_uri())
    with pytest.raises(ModelNotAvailableError, match="cannot download .* put it in"):
        registry.fetch("tinyht", progress=False)


def test_no_network_for_a_bag_names_every_file_it_still_needs(monkeypatch, tmp_path):
    """``models fetch htdemucs_ft`` named only the first of its four files."""
    files = tuple(registry.RemoteFile("hybrid_transformer", f"{sig}-0000000{n}.th") for n, sig in enumerate("abc"))
    monkeypatch.setitem(registry.REGISTRY, "bag3", registry.ModelSpec("bag3", ("drums",), files, "test bag"))
    monkeypatch.setenv("STEMDECK_MODEL_URL", (tmp_path / "nowhere").as_uri())
    with pytest.raises(ModelNotAvailableError) as info:
        registry.fetch("bag3", progress=False)
    assert str(info.value).endswith("; bag3 needs 3 files: a-00000000.th, b-00000001.th, c-00000002.th")


def test_model_dir_works_offline(fake_release, tmp_path, monkeypatch, tiny_checkpoint):
    spec, _ = fake_release
    offline = tmp_path / "offline"
    offline.mkdir()
    shutil.copy(tiny_checkpoint, offline / "abcd1234.safetensors")  # renamed to its signature
    monkeypatch.setenv("STEMDECK_MODEL_DIR", str(offline))
    assert registry.is_cached(spec)
    assert load_model("tinyht").samplerate == 44100


def test_missing_weights_message_names_the_fix():
    with pytest.raises(ModelNotAvailableError, match=r"stemdeck models fetch htdemucs.*955717e8-8726e21a\.th"):
        load_model("htdemucs")


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ModelNotAvailableError, match="unknown model 'htdemucz'; known models: htdemucs, htdemucs_ft"):
        load_model("htdemucz")


def test_official_registry_matches_the_release_list():
    assert registry.REGISTRY["htdemucs_ft"].weights[3] == (0, 0, 0, 1)
    assert registry.REGISTRY["htdemucs_6s"].sources[-2:] == ("guitar", "piano")
    assert registry.REGISTRY["hdemucs_mmi"].segment == 44
    assert registry.REGISTRY["htdemucs"].files[0].checksum_prefix == "8726e21a"


def _separate(argv, capsys):
    from stemdeck.cli import main

    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_default_model_falls_back_to_tiny_when_the_download_fails_its_checksum(
    fake_release, monkeypatch, tmp_path, capsys
):
    """Issue 11 item 12: a mirror serving a corrupt file. Without --model the README promises the
    bundled model, said in one line; with --model the named model's failure is the error."""
    import dataclasses

    from conftest import write_tone

    spec, mirror = fake_release
    served = mirror / "hybrid_transformer" / spec.files[0].filename
    served.write_bytes(served.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setitem(registry.REGISTRY, "htdemucs", dataclasses.replace(spec, name="htdemucs"))
    song = tmp_path / "song.wav"
    write_tone(song, seconds=1.0, samplerate=22050)

    code, err = _separate(["separate", str(song), "-o", str(tmp_path / "out")], capsys)
    assert code == 0, err
    fallback = [line for line in err if line.startswith("stemdeck: using the bundled tiny model")]
    assert len(fallback) == 1 and "checksum mismatch" in fallback[0], err
    assert sorted(p.name for p in (tmp_path / "out" / "song").iterdir()) == [
        "bass.wav",
        "drums.wav",
        "other.wav",
        "vocals.wav",
    ]
    assert not list(registry.cache_dir().iterdir())  # the corrupt download is not kept

    code, err = _separate(["separate", str(song), "--model", "htdemucs", "-o", str(tmp_path / "named")], capsys)
    assert code == 1 and len(err) == 2, err  # "downloading it", then the one error line
    assert err[1].startswith("stemdeck: error: ") and "checksum mismatch" in err[1]
    assert not (tmp_path / "named").exists()


def test_default_model_falls_back_when_its_cached_file_is_damaged(monkeypatch, tmp_path, capsys):
    from conftest import write_tone

    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "955717e8.th").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("STEMDECK_MODEL_DIR", str(offline))
    song = tmp_path / "song.wav"
    write_tone(song, seconds=1.0, samplerate=22050)
    code, err = _separate(["separate", str(song), "-o", str(tmp_path / "out")], capsys)
    assert code == 0 and any(
        line.startswith("stemdeck: using the bundled tiny model (") and "955717e8.th" in line for line in err
    ), err


# -- issue 18 item 4: one list of names, passthrough registered like the rest ---------------------------


def test_passthrough_is_a_registered_name_that_loads_everywhere():
    import torch

    from stemdeck.models.nets.passthrough import PassThrough

    assert registry.model_names() == ("htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "tiny", "passthrough")
    model = load_model("passthrough")
    assert isinstance(model, PassThrough) and model.sources == ["drums", "bass", "other", "vocals"]
    mix = torch.ones(1, 2, 100)
    assert torch.equal(model(mix).sum(dim=1), mix)  # fixed fractions that add back up to the mix
    with pytest.raises(ModelNotAvailableError, match=r"known models: .*tiny, passthrough \(or pass"):
        load_model("passthru")


def test_load_or_fetch_reports_through_its_callback_and_names_what_it_loaded(monkeypatch, tmp_path, capsys):
    """The library prints nothing: the fallback is said through ``report``; the name comes beside the model."""
    from stemdeck.models.loading import LoadedModel, load_or_fetch

    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "955717e8.th").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("STEMDECK_MODEL_DIR", str(offline))
    said: list[str] = []
    loaded = load_or_fetch(None, report=said.append)
    assert isinstance(loaded, LoadedModel) and loaded.name == "tiny" and loaded.model.samplerate == 22050
    assert (
        len(said) == 1 and said[0].startswith("stemdeck: using the bundled tiny model (") and "955717e8.th" in said[0]
    )
    assert not hasattr(loaded.model, "stemdeck_name")
    assert load_or_fetch("passthrough", report=said.append).name == "passthrough" and len(said) == 1
    with pytest.raises(CheckpointError):  # a model the user named is never swapped
        load_or_fetch("htdemucs", report=said.append)
    assert capsys.readouterr() == ("", "")
