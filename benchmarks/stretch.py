"""Time-stretchers side by side: quality on test signals and cost for the deck's 4 stems + dry.

Candidates (each skipped with a line when its package is missing):

* ``rb-r2`` / ``rb-r3`` / ``rb-r3-short``: Rubber Band (GPL) through ``pylibrb``, real-time
  (streaming) mode, the R2 "faster" and R3 "finer" engines (R3 also with its short window: one
  FFT size instead of three, less delay), fed 512-frame blocks, ratios settable while it runs;
* ``pedalboard``: Spotify's pedalboard (GPL, Rubber Band R3 inside), ``time_stretch`` on the whole
  buffer (offline: it cannot stream, every call starts afresh);
* ``signalsmith``: Signalsmith Stretch (MIT) through ``python-stretch`` 0.3.x, whose ``process``
  also starts afresh each call and takes at most 2 channels (so one call per stereo pair).

Quality (stereo test signals at 44.1 kHz):

* onsets: a 120 BPM click track at tempo 0.75: median onset spacing against 0.5 s / 0.75 (%),
  and the spread (standard deviation) of the spacings in ms;
* key -2 on the click track: onset spacing against 0.5 s (%), the tempo must not move;
* pitch: a 440 Hz harmonic tone at key -2 (expect 392.00 Hz) and at tempo 0.75 key 0 (expect
  440 Hz): error in cents, and the tone's purity (energy on the expected harmonics against the
  rest, dB; artefacts lower it);
* alignment: the 10 channels carry the same click track at 5 gains; worst difference between a
  channel and channel 0 rescaled (dB below the signal).

Cost: 20 s of 10 channels (4 stereo stems + stereo dry: clicks, tones, noise) at tempo 0.8 and
key -2: CPU seconds (this process, all threads) per second of audio in, and wall seconds.

``--deck-only``: the deck itself (its stage process and the callback, driven headless) at tempo
0.8, key -2, as CPU seconds (both processes) per second of track played.

``--gil``: what stretching costs the audio process's other Python threads. A thread plays the
deck's blocks on the audio period's clock (256 frames) at tempo 0.8 key -2, and at tempo 1 key 0
for comparison, while a probe thread sleeps 1 ms at a time. Each thread's lateness (p50/p99) is
split by the kernel's per-thread run-queue time: what is left (``*_gil``) is time off the run
queue, waiting for the interpreter lock (plus 0.05 ms of timer slack); the rest is CPU
contention, which a busy shared machine adds whatever the design. On a busy machine run it
under ``chrt -f 10`` (as JACK runs its process thread): this process's threads then never wait
for a CPU behind other programs, and a stage process is put back to normal scheduling.

Usage: python benchmarks/stretch.py [--json] [--cost-seconds 20] [--deck-only] [--gil]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

SR = 44100
BLOCK = 512  # frames per process() call in streaming mode (the deck's stage feeds similar chunks)
CLICK_BPM = 120.0


# -- test signals ------------------------------------------------------------------------------------


def click_track(seconds: float, bpm: float = CLICK_BPM, channels: int = 2) -> np.ndarray:
    """``(channels, frames)``: 10 ms decaying 2 kHz bursts every beat, starting at 0.25 s."""
    frames = int(seconds * SR)
    out = np.zeros(frames, np.float32)
    burst_t = np.arange(int(0.010 * SR)) / SR
    burst = (np.sin(2 * np.pi * 2000 * burst_t) * np.exp(-burst_t / 0.003)).astype(np.float32)
    for start_s in np.arange(0.25, seconds - 0.05, 60.0 / bpm):
        i = int(start_s * SR)
        out[i : i + burst.size] += burst[: frames - i]
    return np.repeat(out[None], channels, 0) * 0.8


def harmonic_tone(seconds: float, f0_hz: float = 440.0, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    tone = sum(a * np.sin(2 * np.pi * k * f0_hz * t) for k, a in ((1, 0.5), (2, 0.25), (3, 0.12)))
    return np.repeat(tone[None].astype(np.float32), channels, 0)


def deck_like(seconds: float, seed: int = 0) -> np.ndarray:
    """10 channels: four stereo 'stems' (clicks, bass tone, chord, noise) and their sum as dry."""
    rng = np.random.default_rng(seed)
    stems = [
        click_track(seconds),
        harmonic_tone(seconds, 55.0),
        harmonic_tone(seconds, 261.6) + harmonic_tone(seconds, 329.6),
        (0.05 * rng.standard_normal((2, int(seconds * SR)))).astype(np.float32),
    ]
    stems = [s * 0.4 for s in stems]
    return np.concatenate([*stems, sum(stems)], 0).astype(np.float32)


# -- measurements ------------------------------------------------------------------------------------


def onset_times_s(audio: np.ndarray, threshold: float = 0.3, refractory_s: float = 0.1) -> np.ndarray:
    """Rising crossings of ``threshold`` x peak of the smoothed magnitude, ``refractory_s`` apart."""
    envelope = np.abs(audio).mean(0)
    kernel = np.ones(int(0.002 * SR)) / int(0.002 * SR)
    envelope = np.convolve(envelope, kernel, mode="same")
    above = envelope > threshold * envelope.max()
    rising = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    kept: list[int] = []
    for i in rising:
        if not kept or i - kept[-1] > refractory_s * SR:
            kept.append(int(i))
    return np.asarray(kept) / SR


def dominant_hz(audio: np.ndarray, lo_hz: float = 100.0, hi_hz: float = 2000.0) -> float:
    """The strongest frequency between ``lo_hz`` and ``hi_hz`` (zero-padded FFT, parabolic peak)."""
    x = audio.mean(0).astype(np.float64)
    x = x * np.hanning(x.size)
    n = 1 << int(np.ceil(np.log2(x.size * 8)))
    spectrum = np.abs(np.fft.rfft(x, n))
    lo, hi = int(lo_hz * n / SR), int(hi_hz * n / SR)
    k = lo + int(np.argmax(spectrum[lo:hi]))
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-30)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / n


def purity_db(audio: np.ndarray, f0_hz: float) -> float:
    """Energy within 2 % of the first 3 harmonics of ``f0_hz`` against the rest, in dB."""
    x = audio.mean(0).astype(np.float64) * np.hanning(audio.shape[-1])
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / SR)
    on = np.zeros(freqs.size, bool)
    for k in (1, 2, 3):
        on |= np.abs(freqs - k * f0_hz) < 0.02 * k * f0_hz
    return float(10 * np.log10(power[on].sum() / max(power[~on].sum(), 1e-30)))


def middle(audio: np.ndarray, seconds: float = 1.0) -> np.ndarray:
    mid, half = audio.shape[-1] // 2, int(seconds * SR / 2)
    return audio[:, mid - half : mid + half]


def cents(measured: float, expected: float) -> float:
    return float(1200 * np.log2(measured / expected))


# -- candidates --------------------------------------------------------------------------------------


def rubberband_stream(engine: str, short_window: bool = False):
    import pylibrb

    engine_flag = pylibrb.Option.ENGINE_FINER if engine == "r3" else pylibrb.Option.ENGINE_FASTER
    if short_window:
        engine_flag |= pylibrb.Option.WINDOW_SHORT

    def stretch(audio: np.ndarray, tempo: float, semitones: float) -> np.ndarray:
        options = pylibrb.Option.PROCESS_REALTIME | engine_flag | pylibrb.Option.PitchHighConsistency
        rb = pylibrb.RubberBandStretcher(SR, audio.shape[0], options, 1.0 / tempo, 2 ** (semitones / 12))
        rb.set_max_process_size(BLOCK)
        pad, delay = rb.get_preferred_start_pad(), rb.get_start_delay()
        rb.process(np.zeros((audio.shape[0], pad), np.float32))
        chunks = []
        for start in range(0, audio.shape[-1], BLOCK):
            block = np.ascontiguousarray(audio[:, start : start + BLOCK])
            rb.process(block, final=start + BLOCK >= audio.shape[-1])
            if rb.available() > 0:
                chunks.append(rb.retrieve(rb.available()))
        while rb.available() > 0:
            chunks.append(rb.retrieve(rb.available()))
        return np.concatenate(chunks, -1)[:, delay:]

    return stretch


def pedalboard_offline(audio: np.ndarray, tempo: float, semitones: float) -> np.ndarray:
    from pedalboard import time_stretch

    return time_stretch(audio, SR, stretch_factor=tempo, pitch_shift_in_semitones=semitones)


def signalsmith_offline(audio: np.ndarray, tempo: float, semitones: float) -> np.ndarray:
    from python_stretch.Signalsmith import Stretch

    out = []
    for pair in range(0, audio.shape[0], 2):
        stretcher = Stretch()
        stretcher.preset(2, SR)
        stretcher.setTimeFactor(tempo)
        stretcher.setTransposeSemitones(semitones)
        out.append(stretcher.process(np.ascontiguousarray(audio[pair : pair + 2])))
    return np.concatenate(out, 0)


def candidates() -> dict:
    found, missing = {}, []
    for name, module, make in (
        ("rb-r2", "pylibrb", lambda: rubberband_stream("r2")),
        ("rb-r3", "pylibrb", lambda: rubberband_stream("r3")),
        ("rb-r3-short", "pylibrb", lambda: rubberband_stream("r3", short_window=True)),
        ("pedalboard", "pedalboard", lambda: pedalboard_offline),
        ("signalsmith", "python_stretch", lambda: signalsmith_offline),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{name} ({module} not installed)")
            continue
        found[name] = make()
    return found, missing


# -- the figures -------------------------------------------------------------------------------------


def spacing(times_s: np.ndarray) -> tuple[float, float]:
    gaps = np.diff(times_s)
    return float(np.median(gaps)), float(np.std(gaps))


def quality(stretch) -> dict:
    clicks = click_track(8.0)
    beat_s = 60.0 / CLICK_BPM
    slow_gap, slow_spread = spacing(onset_times_s(stretch(clicks, 0.75, 0.0)))
    key_gap, _ = spacing(onset_times_s(stretch(clicks, 1.0, -2.0)))
    tone = harmonic_tone(4.0)
    down = middle(stretch(tone, 1.0, -2.0))
    slow = middle(stretch(tone, 0.75, 0.0))
    expected_down = 440.0 * 2 ** (-2 / 12)
    gains = np.repeat(np.array([1.0, 0.8, 0.6, 0.4, 0.2], np.float32), 2)[:, None]
    aligned = stretch(np.repeat(click_track(3.0)[:1], 10, 0) * gains, 0.8, -2.0)
    rescaled = aligned / gains[: aligned.shape[0]]
    misalign = np.abs(rescaled - rescaled[:1]).max() / max(np.abs(rescaled[0]).max(), 1e-12)
    return {
        "tempo_0.75_spacing_error_pct": 100 * (slow_gap / (beat_s / 0.75) - 1),
        "tempo_0.75_spacing_spread_ms": 1000 * slow_spread,
        "key_-2_spacing_error_pct": 100 * (key_gap / beat_s - 1),
        "key_-2_pitch_error_cents": cents(dominant_hz(down), expected_down),
        "key_-2_purity_db": purity_db(down, expected_down),
        "tempo_0.75_pitch_error_cents": cents(dominant_hz(slow), 440.0),
        "tempo_0.75_purity_db": purity_db(slow, 440.0),
        "channel_misalignment_db": float(20 * np.log10(max(misalign, 1e-12))),
    }


def cost(stretch, seconds: float) -> dict:
    audio = deck_like(seconds)
    cpu, wall = time.process_time(), time.perf_counter()
    stretch(audio, 0.8, -2.0)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu_s_per_audio_s": cpu / seconds, "wall_s_per_audio_s": wall / seconds}


def deck_cost(seconds: float) -> dict:
    """The deck itself at tempo 0.8, key -2: the stretch stage (Rubber Band, reading, mapping,
    ring writes) and the callback, as CPU seconds of this process per second of track played."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stemdeck.engine.config import EngineConfig
    from stemdeck.engine.engine import Engine
    from stemdeck.models.nets.passthrough import DEFAULT_FRACTIONS, PassThrough

    track = deck_like(seconds)[-2:]
    engine = Engine(PassThrough(), EngineConfig(worker="thread", cache_stems=False, beat_tracking=False))
    engine.load_array(track, 0.0, separated=np.stack([f * track for f in DEFAULT_FRACTIONS]).astype(np.float32))
    engine.set_tempo(0.8)
    engine.set_key(-2)
    engine.play()
    block, played = np.zeros((256, 2), np.float32), int(seconds * 0.8 * SR * 0.9)
    engine.practice.stage.wait_ahead(2048)
    stage_pid = engine.practice.stage.pid
    cpu, stage_cpu = time.process_time(), process_cpu_s(stage_pid)
    for _ in range(played // 256):
        engine.practice.stage.wait_ahead(256)
        engine.process_deck_block(block)
    cpu, stage_cpu = time.process_time() - cpu, process_cpu_s(stage_pid) - stage_cpu
    track_s = engine.status().position_s
    underflows = engine.practice.underflows
    engine.stop()
    return {
        "deck_cpu_s_per_track_s": (cpu + stage_cpu) / track_s,
        "stage_process_cpu_s_per_track_s": stage_cpu / track_s,
        "deck_underflows": underflows,
    }


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_s(fd: int) -> float:
    """Seconds the calling thread has waited for a CPU so far (``/proc/thread-self/schedstat``)."""
    return int(os.pread(fd, 100, 0).split()[1]) / 1e9


def gil_wait(seconds: float, tempo: float, semitones: float) -> dict:
    """A probe thread's lateness (ms) while a block thread plays the deck in real time, and the
    part of it not spent waiting for a CPU (the scheduler's run queue): the wait for the
    interpreter lock (plus the kernel's timer slack, 0.05 ms)."""
    import threading

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from stemdeck.engine.config import EngineConfig
    from stemdeck.engine.engine import Engine
    from stemdeck.engine.runtime import configure_process
    from stemdeck.models.nets.passthrough import DEFAULT_FRACTIONS, PassThrough

    configure_process()  # the command line's GIL switch interval
    track = deck_like(seconds + 5)[-2:]
    engine = Engine(PassThrough(), EngineConfig(worker="thread", cache_stems=False, beat_tracking=False))
    engine.load_array(track, 0.0, separated=np.stack([f * track for f in DEFAULT_FRACTIONS]).astype(np.float32))
    engine.set_tempo(tempo)
    engine.set_key(semitones)
    stage_pid = getattr(engine.practice.stage, "pid", None)  # a stage process, where there is one
    if stage_pid is not None and os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(stage_pid, os.SCHED_OTHER, os.sched_param(0))  # as the program runs it
    engine.play()
    block, stop = np.zeros((256, 2), np.float32), threading.Event()
    late: dict[str, list[float]] = {"probe": [], "probe_gil": [], "block": [], "block_gil": []}
    engine.process_deck_block(block)
    engine.practice.stage.wait_ahead(2048)

    def blocks() -> None:
        fd, period, due = os.open("/proc/thread-self/schedstat", os.O_RDONLY), 256 / SR, time.perf_counter()
        while not stop.is_set():
            due += period
            queued = runqueue_wait_s(fd)
            time.sleep(max(0.0, due - time.perf_counter()))
            lateness = time.perf_counter() - due
            late["block"].append(lateness)
            late["block_gil"].append(lateness - (runqueue_wait_s(fd) - queued))
            engine.process_deck_block(block)

    def probe() -> None:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        while not stop.is_set():
            queued, start = runqueue_wait_s(fd), time.perf_counter()
            time.sleep(0.001)
            lateness = time.perf_counter() - start - 0.001
            late["probe"].append(lateness)
            late["probe_gil"].append(lateness - (runqueue_wait_s(fd) - queued))

    threads = [threading.Thread(target=blocks), threading.Thread(target=probe)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    underflows = engine.practice.underflows
    engine.stop()
    figures = {"tempo": tempo, "key": semitones}
    for name, values in late.items():
        values_ms = 1000 * np.asarray(values)
        figures[f"{name}_p50_ms"] = round(float(np.percentile(values_ms, 50)), 3)
        figures[f"{name}_p99_ms"] = round(float(np.percentile(values_ms, 99)), 3)
    return {**figures, "underflows": underflows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cost-seconds", type=float, default=20.0)
    parser.add_argument("--deck-only", action="store_true", help="only the deck's own cost (no candidates)")
    parser.add_argument("--gil", action="store_true", help="another thread's GIL wait while the deck stretches")
    args = parser.parse_args(argv)
    if args.gil:
        for tempo, semitones in ((1.0, 0.0), (0.8, -2.0), (1.0, 0.0), (0.8, -2.0)):
            figures = gil_wait(args.cost_seconds, tempo, semitones)
            print(json.dumps(figures) if args.json else ", ".join(f"{k} {v:g}" for k, v in figures.items()))
        print(f"load average {os.getloadavg()[0]:.2f}")
        return
    if args.deck_only:
        figures = deck_cost(args.cost_seconds)
        print(
            json.dumps(figures)
            if args.json
            else ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        )
        print(f"load average {os.getloadavg()[0]:.2f}")
        return
    found, missing = candidates()
    load_before = os.getloadavg()
    report = {name: {**quality(fn), **cost(fn, args.cost_seconds)} for name, fn in found.items()}
    machine = {"cores": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg()}
    if args.json:
        print(json.dumps({"candidates": report, "missing": missing, "machine": machine}, indent=2))
        return
    names = list(report)
    print(f"{'':34}" + "".join(f"{n:>13}" for n in names))
    for key in next(iter(report.values()), {}):
        print(f"{key:34}" + "".join(f"{report[n][key]:13.3f}" for n in names))
    for line in missing:
        print(f"skipped: {line}")
    print(
        f"{machine['cores']} cores; load average {load_before[0]:.2f} before, {machine['load_after'][0]:.2f} after; "
        f"cost: {args.cost_seconds:.0f} s of 10 channels (4 stereo stems + dry) at tempo 0.8, key -2"
    )


if __name__ == "__main__":
    main()
