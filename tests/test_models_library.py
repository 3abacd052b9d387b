"""The library queue (issue 16): `stemdeck separate DIR -r` walks folders, skips what its manifest
says is done (by content), resumes after a kill, and `--jobs 2` writes what `--jobs 1` writes."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_stemdeck, stemdeck_command

from stemdeck.cli import main
from stemdeck.models.library import MANIFEST_NAME, Found, find_audio, library_folders

STEMS = ("bass", "drums", "other", "vocals")


def write_song(path, seconds=1.0, level=0.2, samplerate=44100, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    audio = level * rng.standard_normal((int(seconds * samplerate), 2)).astype(np.float32)
    sf.write(str(path), audio, samplerate, subtype="FLOAT")
    return path


def done_rows(out):
    """``{source: (outputs, finished_s)}`` from the manifest."""
    with sqlite3.connect(out / MANIFEST_NAME) as db:
        rows = db.execute("SELECT source, outputs, finished_s FROM done").fetchall()
    return {os.path.basename(source): (json.loads(outputs), finished) for source, outputs, finished in rows}


def mtimes(out):
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix == ".wav"}


def said(err, marker=" -> "):
    return sorted(os.path.basename(line.split(marker)[0]) for line in err.splitlines() if marker in line)


# -- walking and naming -----------------------------------------------------------------------------------


def test_walk_finds_audio_and_skips_hidden_files_the_output_and_stem_files(tmp_path):
    lib = tmp_path / "lib"
    for name in ("a/song.wav", "a/song.FLAC", "b/c/track.mp3", ".hidden/x.wav", "a/.x.wav", "out/a/song/bass.wav"):
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        (lib / name).write_bytes(b"x")
    for name in ("a/cover.jpg", "a/mix.stem.mp4", "b/t.m4a", "b/u.m4a"):
        (lib / name).write_bytes(b"x")
    found = find_audio([lib, tmp_path / "loose.wav"], lib / "out")
    assert [(str(p.relative_to(tmp_path)), r) for p, r in found.files] == [
        ("lib/a/song.FLAC", lib),
        ("lib/a/song.wav", lib),
        ("lib/b/c/track.mp3", lib),
        ("loose.wav", None),
    ]
    assert found.unreadable == {".m4a": 2}


def test_library_folders_keep_the_layout_and_never_collide(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    files = [
        (one / "x/song.wav", one),
        (one / "y/song.wav", one),
        (one / "x/song.flac", one),
        (two / "x/song.wav", two),  # the same place under another folder given
        (tmp_path / "song.wav", None),
    ]
    out = tmp_path / "out"
    folders = library_folders(Found(files, {}), out, {tmp_path / "song.wav": out / "song"})
    assert folders[one / "y/song.wav"] == out / "y/song"
    assert folders[tmp_path / "song.wav"] == out / "song"
    clash = [folders[one / "x/song.wav"], folders[one / "x/song.flac"], folders[two / "x/song.wav"]]
    assert all(f.parent == out / "x" and re.fullmatch(r"song-[0-9a-f]{8}", f.name) for f in clash)
    assert len({str(f).casefold() for f in folders.values()}) == len(files)
    assert all(f.is_relative_to(out) for f in folders.values())
    side_by_side = library_folders(Found(files[:1] + files[2:3], {}), out, {})
    assert sorted(f.name for f in side_by_side.values()) == ["song-flac", "song-wav"]


def test_a_folder_without_r_and_too_many_jobs_are_one_line(tmp_path, capsys):
    write_song(tmp_path / "lib" / "a.wav")
    assert main(["separate", str(tmp_path / "lib"), "-o", str(tmp_path / "out"), "--model", "passthrough"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"stemdeck: error: {tmp_path / 'lib'} is a directory; add -r to separate the audio files in it"]
    jobs = len(os.sched_getaffinity(0)) + 1
    assert main(["separate", str(tmp_path / "lib"), "-r", "-o", str(tmp_path / "out"), "--jobs", str(jobs)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"--jobs {jobs}: this machine has {jobs - 1} core(s); use --jobs {jobs - 1} or fewer" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("walk", [[], ["-r"], ["--jobs", "2"]])
def test_a_mistyped_input_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch, walk):
    import stemdeck.models.cli
    import stemdeck.models.track_job

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(stemdeck.models.cli, "load_for_command", loaded)
    monkeypatch.setattr(stemdeck.models.track_job, "load_for_command", loaded)
    write_song(tmp_path / "lib" / "a.wav")
    inputs = [str(tmp_path / "lib" / "a.wav"), str(tmp_path / "nolib")]
    assert main(["separate", *inputs, *walk, "-o", str(tmp_path / "out"), "--model", "passthrough"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    missing = tmp_path / "nolib"
    assert err == [f"stemdeck: error: {missing}: no such file or folder; check the path (nothing was separated)"]
    assert not (tmp_path / "out").exists()


# -- skipping by content ---------------------------------------------------------------------------------


def test_a_rerun_skips_by_content_and_redoes_changed_files_and_deleted_outputs(tmp_path, capsys):
    lib, out = tmp_path / "lib", tmp_path / "out"
    for index, name in enumerate(("a/one.wav", "a/two.wav", "b/three.wav", "b/four.wav")):
        write_song(lib / name, seed=index)
    args = ["separate", str(lib), "-r", "-o", str(out), "--model", "passthrough"]
    assert main(args) == 0
    assert said(capsys.readouterr().err) == ["four.wav", "one.wav", "three.wav", "two.wav"]
    first, rows = mtimes(out), done_rows(out)
    assert len(first) == 16 and sorted(rows) == ["four.wav", "one.wav", "three.wav", "two.wav"]

    os.rename(lib / "a/one.wav", lib / "b/one-renamed.wav")  # moved: same content, not redone
    write_song(lib / "a/two.wav", seed=99)  # changed: redone
    for stem in (out / "b/three").iterdir():  # the user deleted its stems: redone
        stem.unlink()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert said(err) == ["three.wav", "two.wav"]
    assert "2 file(s) already separated with this model and these options: skipped" in err
    second = mtimes(out)
    assert second["b/four/vocals.wav"] == first["b/four/vocals.wav"]
    assert second["a/one/vocals.wav"] == first["a/one/vocals.wav"]
    assert second["a/two/vocals.wav"] != first["a/two/vocals.wav"]
    assert "b/one-renamed/vocals.wav" not in second  # its stems are where they were
    vocals, _ = sf.read(str(out / "a/two/vocals.wav"))
    assert np.abs(vocals - 0.4 * sf.read(str(lib / "a/two.wav"))[0]).max() < 1e-3  # the new audio's stems
    rows = done_rows(out)
    assert rows["four.wav"][1] < rows["two.wav"][1] and rows["four.wav"][1] < rows["three.wav"][1]

    assert main(args + ["--memory", "speed"]) == 0  # malloc's policy changes no stem: nothing redone
    assert said(capsys.readouterr().err) == []
    assert main(args + ["--stems", "vocals"]) == 0  # other options: another separation
    assert len(said(capsys.readouterr().err)) == 4


def test_files_with_the_same_audio_are_separated_once(tmp_path, capsys):
    lib = tmp_path / "lib"
    write_song(lib / "a.wav")
    (lib / "copy").mkdir()
    (lib / "copy" / "a-copy.wav").write_bytes((lib / "a.wav").read_bytes())
    assert main(["separate", str(lib), "-r", "-o", str(tmp_path / "out"), "--model", "passthrough"]) == 0
    err = capsys.readouterr().err
    assert said(err) == ["a.wav"]
    assert f"{lib / 'copy' / 'a-copy.wav'} has the same audio as {lib / 'a.wav'}; it is separated once" in err
    assert err.splitlines()[-1] == "separated 1 of 1 file(s); 1 skipped"


def test_stems_the_user_made_are_not_overwritten_by_the_queue(tmp_path, capsys):
    lib, out = tmp_path / "lib", tmp_path / "out"
    write_song(lib / "a.wav")
    write_song(lib / "b.wav", seed=1)
    (out / "a").mkdir(parents=True)
    (out / "a" / "vocals.wav").write_bytes(b"mine")
    assert main(["separate", str(lib), "-r", "-o", str(out), "--model", "passthrough"]) == 1
    err = capsys.readouterr().err
    assert "a/vocals.wav already exists; use --force to overwrite" in err and said(err) == ["b.wav"]
    assert (out / "a" / "vocals.wav").read_bytes() == b"mine"


def test_a_run_refused_by_the_users_stem_does_not_make_it_the_queues(tmp_path, capsys):
    """The first run fails on the user's file; so do the second and third (it was claimed as
    the queue's before the failure, and the second run overwrote it)."""
    lib, out = tmp_path / "lib", tmp_path / "out"
    write_song(lib / "a.wav")
    (out / "a").mkdir(parents=True)
    (out / "a" / "vocals.wav").write_bytes(b"my hand-edited vocals")
    args = ["separate", str(lib), "-r", "-o", str(out), "--model", "passthrough"]
    for _ in range(3):
        assert main(args) == 1
        assert "a/vocals.wav already exists; use --force to overwrite" in capsys.readouterr().err
    assert (out / "a" / "vocals.wav").read_bytes() == b"my hand-edited vocals"
    assert not (out / "a" / "drums.wav").exists()  # refused before any stem of it is written
    assert main(args + ["--force"]) == 0 and sf.info(str(out / "a" / "vocals.wav")).frames == 44100


def test_stems_overwritten_with_other_options_are_not_skipped_as_the_old_ones(tmp_path, capsys):
    """16-bit stems, then 24-bit ones over them: a third run asking for 16 bits separates
    again (the manifest's 16-bit record no longer describes the files)."""
    lib, out = tmp_path / "lib", tmp_path / "out"
    write_song(lib / "a.wav")
    args = ["separate", str(lib), "-r", "-o", str(out), "--model", "passthrough", "--bits"]
    for bits, subtype in (("16", "PCM_16"), ("24", "PCM_24"), ("16", "PCM_16")):
        assert main(args + [bits]) == 0
        assert said(capsys.readouterr().err) == ["a.wav"]
        assert sf.info(str(out / "a" / "vocals.wav")).subtype == subtype
    assert main(args + ["16"]) == 0  # and now, with the files as asked, it skips
    assert "1 file(s) already separated" in capsys.readouterr().err


# -- resuming after a kill -----------------------------------------------------------------------------------


def _partials(out):
    return [p for p in out.rglob("*") if p.name.endswith(".partial")]


def _done_count(out):
    try:
        return len(done_rows(out))
    except sqlite3.Error:
        return 0


def test_a_run_killed_mid_file_resumes_without_redoing_anything(tmp_path):
    lib, out = tmp_path / "lib", tmp_path / "out"
    names = [f"song{index}.wav" for index in range(6)]
    for index, name in enumerate(names):
        write_song(lib / name, seconds=20.0, seed=index)
    command = stemdeck_command("separate", lib, "-r", "-o", out, "--model", "passthrough")
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (_done_count(out) >= 1 and _partials(out)):  # one file done, the next one being written
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.005)
    run.send_signal(signal.SIGKILL)
    run.wait()
    left = _partials(out)
    before, before_mtimes = done_rows(out), mtimes(out)
    assert left and 1 <= len(before) < len(names)
    # nothing half-written under a final name: every stem there belongs to a finished file
    finished = {name for outputs, _ in before.values() for name in outputs}
    assert set(before_mtimes) <= finished

    result = run_stemdeck("separate", lib, "-r", "-o", out, "--model", "passthrough")
    assert result.returncode == 0, result.stderr
    redone = said(result.stderr)
    assert redone == sorted(set(names) - set(before))  # nothing finished before is redone
    assert f"removed {len(left)} unfinished stem file(s) left by an interrupted run" in result.stderr
    after = done_rows(out)
    assert sorted(after) == names
    assert all(after[name][1] == before[name][1] for name in before)
    assert all(mtimes(out)[path] == mtime for path, mtime in before_mtimes.items())
    assert _partials(out) == []
    for name in names:
        vocals, _ = sf.read(str(out / name.removesuffix(".wav") / "vocals.wav"), dtype="float32")
        assert vocals.shape == (20 * 44100, 2)


# -- --jobs ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_jobs_write_what_one_job_writes(tmp_path, tiny_checkpoint, capsys):
    lib = tmp_path / "lib"
    for index in range(3):
        write_song(lib / f"s{index}.wav", seconds=2.5, seed=index)
    outputs = {}
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}"
        args = ["separate", str(lib), "-r", "-o", str(out), "--model", str(tiny_checkpoint), "--bits", "32f"]
        assert main(args + ["--jobs", str(jobs)]) == 0
        assert capsys.readouterr().err.splitlines()[-1] == "separated 3 of 3 file(s); 0 skipped"
        outputs[jobs] = {p.relative_to(out): sf.read(str(p))[0] for p in sorted(out.rglob("*.wav"))}
    assert list(outputs[1]) == list(outputs[2]) and len(outputs[1]) == 12
    error = max(float(np.abs(outputs[1][name] - outputs[2][name]).max()) for name in outputs[1])
    assert error <= 1e-6, error
    print(f"--jobs 2 against --jobs 1: largest difference {error:.3g}")


@pytest.mark.parametrize("walk", [[], ["-r"], ["--jobs", "2"]])
def test_a_backend_that_cannot_run_is_one_line_before_any_file(tmp_path, capsys, walk):
    """Said once, not once per file of the batch (nor accepted by the queue and ignored)."""
    pytest.importorskip("onnxruntime")
    inputs = [str(write_song(tmp_path / "lib" / f"{name}.wav", seed=seed)) for seed, name in enumerate("abc")]
    args = ["separate", *inputs, *walk, "-o", str(tmp_path / "out"), "--model", "passthrough"]
    assert main(args + ["--precision", "int8", "--backend", "onnx"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "stemdeck: error: --backend onnx: ONNX Runtime runs float32; use --precision fp32 or auto, "
        "or --backend torch for int8"
    ]
    assert main(args + ["--backend", "onnx"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "stemdeck: error: --backend onnx: it runs HT Demucs models at a fixed segment; "
        "use --backend torch for this model"
    ]
    assert not list(tmp_path.glob("out/**/*.wav"))


def test_the_manifest_key_of_torch_runs_is_what_it_was_before_the_backend_joined_it():
    """A library separated before --backend reached the queue is not separated again."""
    from stemdeck.models.library import JobOptions

    before = {"bits", "clip", "codec", "format", "model", "overlap", "precision", "segment", "shifts", "stems"}
    before |= {"two_stems"}
    for backend in ("auto", "torch"):
        assert set(json.loads(JobOptions(backend=backend, verbose=True).key("htdemucs"))) == before
    assert json.loads(JobOptions(backend="onnx").key("htdemucs"))["backend"] == "onnx"


@pytest.mark.slow
def test_the_queue_runs_the_backend_asked_for_and_says_so_with_v(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    """--jobs 2 once ran torch whatever --backend said, and its -v said nothing; then each worker
    exported the network itself."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("STEMDECK_ONNX_DIR", str(tmp_path / "cache"))
    lib, out = tmp_path / "lib", tmp_path / "out"
    for index in range(2):
        write_song(lib / f"s{index}.wav", seconds=2.5, seed=index)
    args = ["separate", str(lib), "-r", "-o", str(out), "--model", str(tiny_checkpoint), "--jobs", "2"]
    assert main(args + ["--backend", "onnx", "-v"]) == 0
    err = capsys.readouterr().err
    assert err.count("stemdeck: network: onnx (ONNX Runtime") == 2, err
    assert err.count("stemdeck: memory: low") == 2
    assert err.count("exporting the network to ONNX") == 1, err  # by the queue, before its workers
    assert main(args + ["--backend", "onnx"]) == 0  # -v changes no stem: nothing redone
    assert said(capsys.readouterr().err) == []
    assert main(args + ["--backend", "torch", "-v"]) == 0  # another backend: other stems (within 1e-5)
    err = capsys.readouterr().err
    assert said(err) == ["s0.wav", "s1.wav"] and err.count("stemdeck: network: torch (fp32 on cpu") == 2, err


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_impossible_job_counts_are_refused_up_front(tmp_path, capsys, bad):
    with pytest.raises(SystemExit):
        main(["separate", str(tmp_path), "-r", "--jobs", bad])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--jobs" in errors[0]


def test_queue_bars_show_the_batch_in_seconds_with_files_done_and_a_bar_per_running_file(capsys):
    from pathlib import Path

    from stemdeck.models.library import Job
    from stemdeck.models.library_queue import QueueBars

    jobs = [Job(0, Path("first.wav"), Path("out/first"), "", 30.0), Job(1, Path("second.wav"), Path("out/s"), "", 10.0)]
    with QueueBars(jobs, enabled=True) as bars:
        bars.start(0, Path("first.wav"), 30.0)
        bars.start(1, Path("second.wav"), 10.0)
        assert sorted(bars._positions.values()) == [1, 2]  # one line each, below the batch's
        bars.update(0, 0.5)
        bars.update(1, 0.5)
        assert bars._total.n == pytest.approx(20.0)  # half of each file: 15 + 5 s of audio
        bars.done(1)
        bars.say("second.wav -> out/s")
        assert bars._total.n == pytest.approx(25.0) and bars.files_done == 1
    err = capsys.readouterr().err
    assert "all files" in err and "s of audio, 1/2 files" in err
    assert "first.wav" in err and "15.0/30.0 s of audio" in err
    assert "second.wav -> out/s\n" in err


def test_only_separate_leaves_the_device_to_the_cluster():
    from stemdeck.cli import get_parser

    parser = get_parser()
    assert parser.parse_args(["separate", "x"]).device is None  # cpu here, GPUs on a Ray cluster
    assert parser.parse_args(["play", "x"]).device == "cpu"
    assert parser.parse_args(["separate", "x", "--device", "cuda"]).device == "cuda"


def _children(pid):
    """The pids whose parent is ``pid``."""
    found = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                with open(f"/proc/{stat}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(stat))
            except (OSError, ValueError, IndexError):
                pass
    return found


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_at_once_and_a_rerun_finishes(tmp_path):
    lib, out = tmp_path / "lib", tmp_path / "out"
    for index in range(6):
        write_song(lib / f"song{index}.wav", seconds=20.0, seed=index)
    command = stemdeck_command("separate", lib, "-r", "-o", out, "--model", "passthrough", "--jobs", "2")
    run = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a shell that starts jobs in the background (`bash .ci/run &`) hands them SIGINT
        # ignored, and Python keeps an ignored SIGINT: Ctrl-C as on a terminal, whoever ran us
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while not _partials(out):  # the workers are writing
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.005)
    workers = [pid for pid in _children(run.pid) if "spawn_main" in open(f"/proc/{pid}/cmdline").read()]
    run.send_signal(signal.SIGINT)  # as Ctrl-C, to the queue alone: it stops its workers
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and err.splitlines()[-1] == "stemdeck: interrupted", err
    assert "Traceback" not in err and workers
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)
    assert _partials(out) == []  # each worker removed its own; they waited for the next run
    result = run_stemdeck("separate", lib, "-r", "-o", out, "--model", "passthrough", "--jobs", "2")
    assert result.returncode == 0 and result.stderr.splitlines()[-1].startswith("separated ")
    assert sorted(done_rows(out)) == [f"song{index}.wav" for index in range(6)] and _partials(out) == []


def test_stem_files_keep_the_layout_and_are_skipped_on_a_rerun(tmp_path, capsys):
    lib, out = tmp_path / "lib", tmp_path / "out"
    write_song(lib / "x" / "song.wav")
    write_song(lib / "y" / "song.wav", seed=1)
    args = ["separate", str(lib), "-r", "-o", str(out), "--model", "passthrough", "--format", "stem"]
    assert main(args) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.stem.mp4")) == ["x/song.stem.mp4", "y/song.stem.mp4"]
    before = (out / "x" / "song.stem.mp4").stat().st_mtime_ns
    assert main(args) == 0
    assert capsys.readouterr().err.splitlines()[-1] == "nothing left to separate; 2 skipped"
    assert (out / "x" / "song.stem.mp4").stat().st_mtime_ns == before
    assert sorted(done_rows(out)["song.wav"][0]) in (["x/song.stem.mp4"], ["y/song.stem.mp4"])


def _a_file(tmp_path):
    (tmp_path / "out").write_text("a file")
    return tmp_path / "out"


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (_a_file, "-o {out} is a file, not a folder; name a folder for the stems"),
        (lambda tmp_path: Path("/sys/stemdeck-out"), "-o {out}: cannot keep the library's manifest there ("),
    ],
)
def test_an_outdir_that_cannot_hold_the_manifest_is_one_line_before_the_model(
    tmp_path, capsys, make_out, message, monkeypatch
):
    """-r with -o a file, or a folder it cannot write (/sys: read-only to root too), gave
    FileExistsError's or sqlite3's traceback; without -r the same -o was already one line."""
    from stemdeck.models import track_job

    lib = tmp_path / "lib"
    write_song(lib / "a.wav")
    out = make_out(tmp_path)
    monkeypatch.setattr(track_job, "load_for_command", lambda *a: pytest.fail("the model loaded first"))
    assert main(["separate", str(lib), "-r", "-o", str(out), "--model", "passthrough"]) == 1
    err = capsys.readouterr().err
    assert message.format(out=out) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_sndfile_formats_are_walked_and_others_counted_and_an_outdir_input_is_named(tmp_path, capsys):
    """.au/.snd/.voc (which libsndfile reads) and .mka/.webm (which it cannot) were skipped by -r
    without a word; -o the folder to separate said "no audio files in it"."""
    lib = tmp_path / "lib"
    song = write_song(lib / "a.wav")
    data, rate = sf.read(str(song))
    sf.write(str(lib / "b.au"), data, rate, format="AU", subtype="FLOAT")
    (lib / "c.webm").write_bytes(b"\x1a\x45\xdf\xa3 not decodable here")
    assert main(["separate", str(lib), "-r", "-o", str(tmp_path / "out"), "--model", "passthrough"]) == 0
    err = capsys.readouterr().err
    assert said(err) == ["a.wav", "b.au"]
    assert "left alone: 1 .webm file(s) stemdeck cannot read" in err
    assert main(["separate", str(lib), "-r", "-o", str(lib), "--model", "passthrough"]) == 1
    err = capsys.readouterr().err
    assert f"-o {lib} is the folder to separate: the output folder is never walked; choose another -o" in err
