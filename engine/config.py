"""Engine settings: typed, frozen, with defaults that work."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from stemdeck.engine.runtime import WORKER_SCHEDULING

# Here rather than in engine.engine, whose audio kernels (numba, scipy: about 120 MB) the command
# line's parser, and so `stemdeck separate`, must not import.
STREAM_LOST = (
    "the audio stream stopped: the device was removed or the sound server quit; "
    "reconnect it (or restart the server) and start again"
)
MAX_COUNT_IN_BEATS = 8


@dataclass(frozen=True)
class WindowConfig:
    """How the separation worker cuts the stream into model windows.

    A window of ``window_s`` ends ``lookahead_s`` after the last sample it is used for; the used
    part is the ``span_s`` before that, cross-faded with triangular weights (raised to
    ``weight_power``) with the neighbouring windows, one every ``hop_s``. ``span_s=None`` uses
    the whole window before the lookahead (offline separation: lookahead 0, hop = 3/4 window).
    """

    window_s: float | None = None  # None: the model's training segment
    hop_s: float = 1.0
    lookahead_s: float = 1.0
    span_s: float | None = None
    weight_power: float = 1.0
    pad_to_segment: bool = False  # run short windows padded to the training segment (slower)

    @classmethod
    def for_latency(cls, latency_s: float) -> WindowConfig:
        """A plan aiming at ``latency_s``: a third of it per hop, two hops of span, half a hop ahead."""
        if latency_s <= 0:
            raise ValueError("--latency must be positive")
        hop_s = latency_s / 3.0
        return cls(window_s=4.5 * hop_s, hop_s=hop_s, lookahead_s=hop_s / 2, span_s=2 * hop_s)

    def resolved(self, segment_s: float) -> WindowConfig:
        window_s = float(self.window_s if self.window_s is not None else segment_s)
        span_s = self.span_s if self.span_s is not None else window_s - self.lookahead_s
        if self.window_s is None:  # the span was chosen for the paper's 7.8 s: a shorter segment shortens it
            span_s = min(span_s, window_s - self.lookahead_s)
        return replace(self, window_s=window_s, span_s=span_s)


# Latency against quality, for 2-core CPUs upwards; `calibrate` lengthens the hop where the
# machine is too slow. Latency is lookahead + span + one block + the inference budget.
PRESETS: dict[str, WindowConfig] = {
    "quality": WindowConfig(window_s=None, hop_s=2.0, lookahead_s=1.5, span_s=4.0, pad_to_segment=True),
    "balanced": WindowConfig(window_s=4.0, hop_s=1.0, lookahead_s=0.75, span_s=2.0),
    "low-latency": WindowConfig(window_s=2.5, hop_s=0.6, lookahead_s=0.3, span_s=1.2),
}
DEFAULT_PRESET = "balanced"  # live input's, where neither --preset nor --latency is given


@dataclass(frozen=True)
class CountInConfig:
    """The count-in's click before a loop restarts: a short sine burst per beat, the first beat
    higher and louder so the player hears where the bar starts."""

    click_hz: float = 1000.0
    accent_hz: float = 1500.0
    click_ms: float = 20.0  # short enough to stay a click at 8 beats of 200 BPM (300 ms a beat)
    level_db: float = -12.0
    accent_level_db: float = -6.0
    no_grid_bpm: float = 120.0  # the beat when the track's tempo is not known


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine fixes at start. Buffers are sized from it, never grown later."""

    window: WindowConfig = field(default_factory=lambda: PRESETS["balanced"])
    samplerate: int = 44100
    channels: int = 2
    max_block_frames: int = 4096
    ramp_ms: float = 10.0
    count_in: CountInConfig = field(default_factory=CountInConfig)
    loop_crossfade_ms: float = 5.0  # the loop seam's crossfade: long enough to hide the step, short enough not to blur
    record_buffer_s: float = 10.0  # the recorder's ring: how far its writer may fall behind before frames drop
    beat_tracking: bool = True  # find each loaded track's tempo and beats (a background thread)
    # The beat search (8 s of a core for a 10-minute track) waits until the deck's separation is
    # this far ahead of the playhead, or done: at ordinary priority it starved the idle-priority
    # separation, and a long track played dry for 3-5 s after play. It waits no longer than
    # beats_wait_max_s (a separation that never gets ahead must not cost the grid for good).
    beats_after_ahead_s: float = 20.0
    beats_wait_max_s: float = 60.0
    precision: str = "auto"
    # what runs the model's windows: "torch", or an exported network ("openvino", "onnx") for the
    # windows of the model's training segment (the deck's and padded live windows; shorter windows,
    # as the deck's quick first stems, stay torch). "auto" is torch (models.precision)
    network_backend: str = "torch"
    inference_threads: int | None = None  # None: all cores but one
    headroom: float = 0.3  # the worker must stay this far below real time
    inference_budget_s: float | None = None  # None: measured at start (calibrate)
    device_latency_frames: int = 0
    cache_stems: bool = True  # keep a deck's separated stems on disk: reloads are instant
    cache_max_bytes: int = 4 * 1024**3  # the stems cache's size limit; least recently used go first
    deck_window: WindowConfig | None = None  # None: the deck chunks as offline separation does
    # the deck's first stems after a load or seek come from a window this short (0: none), so they
    # play about a second after play even where a full window takes longer than real time
    deck_quick_start_s: float = 1.5
    worker: str = "process"  # "process": inference never holds the audio thread's GIL; or "thread"
    # how the separation process yields the CPU to the audio path (engine.runtime.WORKER_SCHEDULING):
    # "idle" halved the xruns against "nice" with no late window (docs/benchmarks.md, live, 2 cores)
    worker_scheduling: str = "idle"

    def __post_init__(self) -> None:
        if self.worker_scheduling not in WORKER_SCHEDULING:
            raise ValueError(
                f"unknown worker scheduling {self.worker_scheduling!r}: use one of {', '.join(WORKER_SCHEDULING)}"
            )
