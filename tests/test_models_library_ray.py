"""`stemdeck separate --ray`: the library queue on a local Ray cluster (one, for the module: it
takes ~15 s to start here) writes what a local run writes, a worker that dies mid-file has
that file retried, and each node decides `--precision auto` for itself."""

import json
import socket

import numpy as np
import pytest
import soundfile as sf

from stemdeck.cli import main
from stemdeck.models.precision_choice import NAMES, candidates

ray = pytest.importorskip("ray", reason="the cluster extra: pip install 'stemdeck[cluster]'")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The node's user cache folder (its precision records), apart from the user's own."""
    cache = tmp_path_factory.mktemp("ray-node-cache")
    runtime_env = {"env_vars": {"XDG_CACHE_HOME": str(cache)}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", runtime_env=runtime_env)
    yield cache
    ray.shutdown()


def write_songs(folder, count=3, seconds=2.5):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for index in range(count):
        audio = 0.2 * rng.standard_normal((int(seconds * 44100), 2)).astype(np.float32)
        sf.write(str(folder / f"s{index}.wav"), audio, 44100, subtype="FLOAT")


def stems(out):
    return {p.relative_to(out): sf.read(str(p), dtype="float32")[0] for p in sorted(out.rglob("*.wav"))}


@pytest.mark.slow
def test_a_ray_run_writes_what_a_local_run_writes(tmp_path, cluster, tiny_checkpoint, capsys):
    write_songs(tmp_path / "lib")
    common = ["separate", str(tmp_path / "lib"), "-r", "--model", str(tiny_checkpoint), "--bits", "32f"]
    assert main(common + ["-o", str(tmp_path / "local")]) == 0
    assert main(common + ["-o", str(tmp_path / "ray"), "--ray", "auto", "--jobs", "2"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "separated 3 of 3 file(s); 0 skipped"
    local, remote = stems(tmp_path / "local"), stems(tmp_path / "ray")
    assert list(local) == list(remote) and len(local) == 12
    error = max(float(np.abs(local[name] - remote[name]).max()) for name in local)
    assert error <= 1e-6, error
    print(f"Ray against local: largest difference {error:.3g}")
    # the driver keeps the manifest: a rerun on the cluster skips everything
    assert main(common + ["-o", str(tmp_path / "ray"), "--ray", "auto"]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == "nothing left to separate; 3 skipped"


@pytest.mark.slow
def test_a_killed_worker_has_its_file_retried_and_a_bad_file_is_one_line(tmp_path, cluster, monkeypatch, capsys):
    write_songs(tmp_path / "lib", count=2)
    (tmp_path / "lib" / "broken.wav").write_bytes(b"not audio" * 100)  # an ordinary failure: one line, no retry
    marker = tmp_path / "killed-once"
    monkeypatch.setenv("STEMDECK_TEST_RAY_EXIT_ONCE", str(marker))
    out = tmp_path / "out"
    args = ["separate", str(tmp_path / "lib"), "-r", "-o", str(out), "--model", "passthrough", "--bits", "32f"]
    assert main(args + ["--ray", "auto", "--jobs", "1"]) == 1
    err = capsys.readouterr().err
    assert marker.exists()  # a worker did die, in the middle of a file
    assert err.splitlines()[-1] == "separated 2 of 3 file(s); 0 skipped", err
    failures = [line for line in err.splitlines() if line.startswith("stemdeck: ")]
    assert len(failures) == 1 and "broken.wav: not a readable audio file" in failures[0]
    assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]
    mix, _ = sf.read(str(tmp_path / "lib" / "s0.wav"), dtype="float64")
    vocals, _ = sf.read(str(out / "s0" / "vocals.wav"), dtype="float64")
    assert np.abs(vocals - (0.4 * (mix - mix.mean()) + mix.mean() / 4)).max() < 1e-6  # the mean shared by 4


@pytest.mark.slow
def test_each_node_measures_auto_once_and_separates_with_its_choice(
    tmp_path, cluster, tiny_checkpoint, monkeypatch, capsys
):
    """A Ray run measured `--precision auto` nowhere (the driver's own run is not the nodes', and
    may be on another CPU): every node ran float32, even where int8 wins. Now the node's first
    actor measures and remembers, its other actor waits for that record, and both run the choice."""
    monkeypatch.delenv("STEMDECK_AUTO_PRECISION")  # measured, as on a user's cluster
    write_songs(tmp_path / "lib", count=2)
    common = ["separate", str(tmp_path / "lib"), "-r", "--model", str(tiny_checkpoint), "--bits", "32f"]
    assert main(common + ["-o", str(tmp_path / "ray"), "--ray", "auto", "--jobs", "2"]) == 0
    lines = capsys.readouterr().err.splitlines()
    node = f"{socket.gethostname()}: precision auto: "
    measured = [line for line in lines if line.startswith(node) and "remembered in" in line]
    read = [line for line in lines if line.startswith(node) and "read from" in line]
    # two actors, one measurement; the other read its record (with a line if it waited for it)
    assert len(measured) == 1 and len(read) <= 1, lines
    records = sorted((cluster / "stemdeck" / "precision").glob("*.json"))
    assert len(records) == 1, records
    choice = json.loads(records[0].read_text())["choice"]["precision"]
    assert choice in candidates()  # bfloat16 too where the CPU runs it (it won tiny on a Zen 5, 1 run in 3)
    assert f" {NAMES[choice]} (" in measured[0]
    assert lines[-1] == "separated 2 of 2 file(s); 0 skipped"
    # the stems are the choice's: a local run held to it writes the same (asked for: the pin takes
    # fp32 and int8 only, and bfloat16 won tiny here at times)
    assert main(common + ["-o", str(tmp_path / "local"), "--precision", choice]) == 0
    local, remote = stems(tmp_path / "local"), stems(tmp_path / "ray")
    assert list(local) == list(remote) and len(local) == 8
    error = max(float(np.abs(local[name] - remote[name]).max()) for name in local)
    assert error <= 1e-6, error
