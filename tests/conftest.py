"""Shared fixtures: model configurations, reference twins, audio files."""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemdeck.engine.runtime import configure_process

# The test session is an entry point, like the command line: engines run in this process too.
configure_process()

SOURCES_4 = ["drums", "bass", "other", "vocals"]
SOURCES_6 = SOURCES_4 + ["guitar", "piano"]

# The official checkpoints' architectures (kwargs as recorded in the released packages).
HTDEMUCS_KW = dict(
    sources=SOURCES_4,
    channels=48,
    depth=4,
    dconv_mode=3,
    t_layers=5,
    bottom_channels=512,
    t_dropout=0.02,
    segment=Fraction(39, 5),
)
HTDEMUCS_6S_KW = dict(HTDEMUCS_KW, sources=SOURCES_6)
HDEMUCS_MMI_KW = dict(
    sources=SOURCES_4,
    channels=48,
    depth=6,
    dconv_mode=1,
    dconv_comp=8,
    dconv_attn=4,
    dconv_lstm=4,
    dconv_init=1e-3,
    multi_freqs=[],
    segment=44,
)
# A small HT Demucs with every feature on, for fast end-to-end tests.
TINY_HT_KW = dict(
    sources=SOURCES_4,
    channels=8,
    depth=4,
    dconv_mode=3,
    t_layers=2,
    bottom_channels=32,
    t_heads=4,
    segment=Fraction(2, 1),
)


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - estimate).pow(2).sum()))


def tiny_ht_transformer_on(seed: int, layer_scales_at_one: bool = True):
    """A TINY_HT_KW model with random weights (eval), its Transformer's LayerScales at 1: their
    initial 1e-4 would hide the Transformer, and so any error made in it, from the stems."""
    from stemdeck.models import HTDemucs
    from stemdeck.models.nets import transformer

    torch.manual_seed(seed)
    model = HTDemucs(**TINY_HT_KW).eval()
    return transformer.layer_scales_at_one(model) if layer_scales_at_one else model


def exported_cache(tmp_path_factory, name: str):
    """A module's own export cache folder (``$STEMDECK_ONNX_DIR``), for a ``yield from`` fixture."""
    from stemdeck.models import onnx_backend

    folder = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(onnx_backend.CACHE_ENV, str(folder))
        yield folder


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

    from stemdeck.models import HTDemucs

    return make_pair(Reference, HTDemucs, HTDEMUCS_KW)


@pytest.fixture(scope="session")
def tiny_model():
    from stemdeck.models import HTDemucs

    torch.manual_seed(1)
    return HTDemucs(**TINY_HT_KW).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    from stemdeck.models import save_safetensors

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_safetensors(tiny_model, path)
    return path


def write_tone(path: Path, seconds: float = 3.0, samplerate: int = 44100, channels: int = 2, **kwargs) -> np.ndarray:
    t = np.arange(int(seconds * samplerate)) / samplerate
    audio = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)])
    sf.write(str(path), audio.T, samplerate, **kwargs)
    return audio.astype(np.float32)


# The compiled audio callbacks' machine code (engine/audio/native.py) is keyed by the kernels'
# sources, so one folder serves every test and every `stemdeck` process they start: each test's
# own cache folder would compile it again in each (20 s on 2 busy cores).
os.environ.setdefault("STEMDECK_NATIVE_DIR", str(Path(tempfile.gettempdir()) / f"stemdeck-native-{os.getuid()}"))


@pytest.fixture(autouse=True)
def _memory_mode_of_a_fresh_process(monkeypatch):
    """Each test starts as a fresh process does: an in-process `separate` earlier in the suite
    asked for low memory (apply_memory_mode), which turns the paths that hold memory for speed
    (Winograd's convs) off for the rest of the process."""
    from stemdeck.models.nets import inference_paths

    monkeypatch.setattr(inference_paths, "_MEMORY_FOR_SPEED", [True])


@pytest.fixture(autouse=True)
def _isolated_model_dirs(tmp_path, monkeypatch):
    """No test sees the user's cache or settings, or reaches the official download location."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # --precision auto as before it measured int8 against float32 (timing decides it, so two
    # machines could differ): tests/test_models_precision_choice.py unsets it
    monkeypatch.setenv("STEMDECK_AUTO_PRECISION", "fp32")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # the deck's track memory (hot cues)
    monkeypatch.delenv("STEMDECK_MODEL_DIR", raising=False)
    monkeypatch.setenv("STEMDECK_MODEL_URL", (tmp_path / "no-server").as_uri())
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


JACK_RATE, JACK_PERIOD = 44100, 256


def stemdeck_command(*args) -> list[str]:
    """The real console entry point (``python -m stemdeck ARGS``), for subprocess.run/Popen."""
    return [sys.executable, "-m", "stemdeck", *map(str, args)]


def run_stemdeck(*args, timeout_s: float = 300, env: dict[str, str] | None = None):
    """Run ``stemdeck ARGS`` as a user does, in its own process, to its end; output captured as
    text. ``env`` adds to this process's environment."""
    import subprocess

    return subprocess.run(
        stemdeck_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _die_with_parent() -> None:
    """In the child: a server whose test run was killed stops too (JACK allows few servers)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _jackd_running() -> bool:
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "jackd":
                return True
        except OSError:  # the process ended meanwhile
            continue
    return False


def clear_stale_jack_state(shm: Path = Path("/dev/shm")) -> list[str]:
    """Remove this user's JACK registry and semaphores when no server runs at all.

    JACK keeps a table of 8 servers in shared memory; a server that was killed (a test run
    stopped mid-way, a kill test) keeps its slot, and once the table is full no server starts
    ("Too many servers already active"). With no jackd alive, nothing there is in use.
    """
    if _jackd_running():
        return []
    removed = []
    for entry in shm.glob("jack*"):
        try:
            if entry.is_file() and entry.stat().st_uid == os.getuid():
                entry.unlink()
                removed.append(entry.name)
        except OSError:
            continue
    return removed


def start_jack_server(name: str, playback_channels: int = 10, rate: int = JACK_RATE, period: int = JACK_PERIOD):
    """A real JACK server with the dummy driver; returns the process once clients can connect."""
    import shutil
    import subprocess
    import tempfile

    if shutil.which("jackd") is None:
        pytest.fail("jackd is not installed; `bash .ci/setup` installs jackd2 (Debian)")
    clear_stale_jack_state()
    env = {**os.environ, "JACK_NO_AUDIO_RESERVATION": "1", "JACK_NO_START_SERVER": "1"}
    # jackd's log goes to a file, never to a pipe: it writes a line per xrun, and a pipe nobody
    # reads fills up after a few hundred; jackd then blocks on the write, and every client of
    # the server with it (the suite hung in an rtmidi close that waited on the server).
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [
            "jackd",
            "-n",
            name,
            "-R",
            "-d",
            "dummy",
            "-r",
            str(rate),
            "-p",
            str(period),
            "-C",
            "2",
            "-P",
            str(playback_channels),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env,
        preexec_fn=_die_with_parent,
    )
    process.log = log
    # Probe from another process: a libjack client in this one would crash when that server stops.
    probe = subprocess.run(["jack_wait", "-s", name, "-w", "-t", "15"], capture_output=True, text=True, env=env)
    if probe.returncode != 0 or process.poll() is not None:
        process.kill()
        log.seek(0)
        pytest.fail(f"jackd did not come up: {probe.stdout} {log.read().decode(errors='replace')[-500:]}")
    return process


def stop_jack_server(process) -> None:
    process.terminate()
    try:
        process.wait(5)
    except Exception:
        process.kill()
    process.log.close()


def reinit_portaudio() -> None:
    """PortAudio enumerates JACK when it initialises: refresh it after a server (re)start."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


def default_jack_server(name: str, **server: int):
    """For a ``yield from`` fixture: a server started as the default of this process's libjack
    (and of the programs it runs), stopped after, the default before it restored."""
    previous = os.environ.get("JACK_DEFAULT_SERVER")
    os.environ["JACK_DEFAULT_SERVER"] = name
    process = start_jack_server(name, **server)
    yield name
    stop_jack_server(process)
    if previous is None:
        os.environ.pop("JACK_DEFAULT_SERVER", None)
    else:
        os.environ["JACK_DEFAULT_SERVER"] = previous


@pytest.fixture(scope="session")
def jack_server():
    name = f"stemdeck-test-{os.getpid()}"
    previous = os.environ.get("JACK_DEFAULT_SERVER")
    os.environ["JACK_DEFAULT_SERVER"] = name
    os.environ["JACK_NO_AUDIO_RESERVATION"] = "1"
    process = start_jack_server(name)
    reinit_portaudio()
    yield name
    import sounddevice as sd

    sd._terminate()  # PortAudio's JACK teardown aborts if the server is already gone
    stop_jack_server(process)
    if previous is None:
        os.environ.pop("JACK_DEFAULT_SERVER", None)
    else:
        os.environ["JACK_DEFAULT_SERVER"] = previous


@pytest.fixture(autouse=True)
def _no_jack_audio_client_left():
    """Each test ends with this process's JACK audio client closed.

    Its Python process callback needs the GIL every cycle, and python-rtmidi holds the GIL
    through JACK calls that wait for a cycle: a later test's rtmidi port closing would stall.
    """
    yield
    import sys

    if "stemdeck.engine.audio.jack_output" in sys.modules:
        sys.modules["stemdeck.engine.audio.jack_output"].close_session_output()


# -- the engine's JACK tests: a deck on the pass-through model, sine tracks, recorders ----------------

# Windows short enough that a pass-through deck separates a track in well under its length.
FAST_PLAN_KW = dict(window_s=0.5, hop_s=0.1, lookahead_s=0.05, span_s=0.2)


def sine_track(hz: float, seconds: float, amplitude: float = 0.3, samplerate: int = JACK_RATE) -> np.ndarray:
    """``(2, frames)`` float32: the same sine on both channels."""
    t = np.arange(int(seconds * samplerate)) / samplerate
    wave = (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return np.stack([wave, wave])


def pass_through_deck(**config):
    """A deck on the pass-through model (its stems are fixed fractions of the track, separated at
    no cost) at the JACK session's rate and period, on a fast plan; ``config`` overrides
    :class:`EngineConfig` fields (the defaults: fp32, no inference budget, a thread worker, no
    stem cache, no beat tracking)."""
    from stemdeck.engine.config import EngineConfig, WindowConfig
    from stemdeck.engine.engine import Engine
    from stemdeck.models.nets.passthrough import PassThrough

    defaults = dict(
        precision="fp32",
        samplerate=JACK_RATE,
        inference_budget_s=0.0,
        worker="thread",
        cache_stems=False,
        beat_tracking=False,
    )
    engine = Engine(PassThrough(), EngineConfig(**{**defaults, **config}))
    engine.prepare(WindowConfig(**FAST_PLAN_KW), block_frames=JACK_PERIOD, calibrate_plan=False)
    return engine


class JackRecorder:
    """A JACK client in this process recording the ports it is connected to, in JACK's cycle."""

    NAME = "stemdeck-test-recorder"

    def __init__(self, server: str, channels: int, capacity_s: float = 4.0):
        import threading

        import jack

        self.client = jack.Client(self.NAME, servername=server, no_start_server=True)
        self.ports = [self.client.inports.register(f"in_{c}") for c in range(channels)]
        self.data = np.zeros((channels, int(capacity_s * JACK_RATE)), np.float32)
        self.wanted, self.position = 0, 0
        self.done = threading.Event()
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames):
        room = min(frames, self.wanted - self.position)
        if room <= 0:
            return
        for c, port in enumerate(self.ports):
            self.data[c, self.position : self.position + room] = port.get_array()[:room]
        self.position += room
        if self.position >= self.wanted:
            self.done.set()

    def start(self, seconds: float) -> None:
        """Record the next ``seconds`` (at most ``capacity_s``) from the next cycle on."""
        assert seconds * JACK_RATE <= self.data.shape[-1], "longer than the recorder holds"
        self.done.clear()
        self.position, self.wanted = 0, int(seconds * JACK_RATE)

    def result(self, timeout_s: float = 10.0) -> np.ndarray:
        """``(channels, frames)`` once :meth:`start`'s seconds are recorded."""
        assert self.done.wait(timeout_s), "the recorder's JACK cycles stopped"
        return self.data[:, : self.wanted].copy()

    def record(self, seconds: float) -> np.ndarray:
        self.start(seconds)
        return self.result(seconds + 10)

    def connect(self, *sources: str) -> None:
        for source, port in zip(sources, self.ports, strict=False):
            self.client.connect(source, port)

    def our_ports(self) -> list[str]:
        return [p.name for p in self.client.get_ports("stemdeck:", is_audio=True)]

    def connections(self, name: str) -> list[str]:
        return sorted(p.name for p in self.client.get_all_connections(name))

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


class JackProbe:
    """tests/jack_probe.py in a process of its own (its Python callback never waits on this
    process's interpreter lock): it plays ``signal`` into stemdeck's inputs and records
    ``out_channels`` of its outputs for ``record_s``. It says ROUTED once connected, RECORDED once
    done, then waits for a line before it writes its result. Use it in a ``with``: a probe left
    running is killed."""

    def __init__(self, server: str, signal: np.ndarray, record_s: float, out_channels: int, folder: Path):
        import subprocess

        np.save(folder / "signal.npy", signal)
        self.result_path = folder / "result.npz"
        script = Path(__file__).with_name("jack_probe.py")
        arguments = [server, folder / "signal.npy", record_s, out_channels, self.result_path]
        self.process = subprocess.Popen(
            [sys.executable, str(script), *map(str, arguments)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def expect(self, line: str) -> None:
        """Wait for the probe's next line; it must be ``line`` (ROUTED, RECORDED)."""
        assert self.process.stdout.readline().strip() == line

    def result(self) -> dict[str, np.ndarray]:
        """Let the probe write its result and end; ``data`` ``(channels, frames)``, ``recorder_start``
        and ``player_start`` (JACK frame times of ``data[:, 0]`` and of the signal's first frame)."""
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        self.process.wait(30)
        with np.load(self.result_path) as result:
            return dict(result)

    def __enter__(self) -> JackProbe:
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.kill()


def wait_until(condition, timeout_s: float = 10.0, poll_s: float = 0.01) -> bool:
    """Whether ``condition()`` came true within ``timeout_s`` (polled)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
