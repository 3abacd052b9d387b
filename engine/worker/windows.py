"""Where windows fall, how they are weighted, and the latency that follows.

Window ``k`` reads input ``[end_k - window, end_k)`` with ``end_k = origin + lookahead + span
+ k * hop``. Its output is used on ``[origin + k * hop, origin + k * hop + span)``, weighted by a
triangle over that span; everything from ``origin + (k + 1) * hop`` back is final once window
``k`` is done, because no later window reaches before its own span. A frame ``n`` therefore
needs input up to ``n + lookahead + span``: that, plus one audio block and the inference
budget, is the latency the engine reports and compensates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stemdeck.engine.config import WindowConfig
from stemdeck.models.separate import transition_weights


@dataclass(frozen=True)
class WindowPlan:
    window_frames: int
    hop_frames: int
    lookahead_frames: int
    span_frames: int
    weights: np.ndarray  # (window_frames,), zero outside the used span
    pad_to_segment: bool

    @classmethod
    def from_config(cls, config: WindowConfig, samplerate: int, segment_s: float) -> WindowPlan:
        config = config.resolved(segment_s)
        return cls.from_frames(
            int(config.window_s * samplerate),
            int(config.hop_s * samplerate),
            int(config.lookahead_s * samplerate),
            int(config.span_s * samplerate),
            config.weight_power,
            config.pad_to_segment,
        )

    @classmethod
    def offline(cls, samplerate: int, segment_s: float, overlap: float = 0.25) -> WindowPlan:
        """The chunking of offline separation (``models.separate``), as a streaming plan."""
        window = int(samplerate * segment_s)
        return cls.from_frames(window, int((1 - overlap) * window), 0, window, 1.0, True)

    @classmethod
    def from_frames(
        cls, window: int, hop: int, lookahead: int, span: int, power: float, pad_to_segment: bool
    ) -> WindowPlan:
        if not 0 < hop <= span:
            raise ValueError(f"hop ({hop} frames) must be positive and no longer than the used span ({span})")
        if lookahead < 0 or span + lookahead > window:
            raise ValueError(f"lookahead ({lookahead}) + span ({span}) must fit in the window ({window} frames)")
        weights = np.zeros(window, np.float32)
        start = window - lookahead - span
        weights[start : start + span] = transition_weights(span, power).numpy()
        return cls(window, hop, lookahead, span, weights, pad_to_segment)

    @property
    def context_frames(self) -> int:
        """Input needed beyond a frame before that frame can be final."""
        return self.lookahead_frames + self.span_frames

    @property
    def centres_last_window(self) -> bool:
        """Offline chunking (the whole window used, nothing ahead): a window cut short by the
        track's end is fed centred, real audio before it, as ``models.separate`` pads it."""
        return self.lookahead_frames == 0 and self.span_frames == self.window_frames

    def first_window_covering(self, frame: int) -> int:
        """The first window (on the grid from 0) whose used span reaches ``frame``: starting
        there, every frame from ``frame`` on gets all the windows offline separation gives it."""
        return max(0, (frame - self.span_frames) // self.hop_frames + 1)

    def window_end(self, index: int, origin: int = 0) -> int:
        return origin + self.context_frames + index * self.hop_frames

    def window_start(self, index: int, origin: int = 0) -> int:
        return self.window_end(index, origin) - self.window_frames

    def final_until(self, index: int, origin: int = 0) -> int:
        """Everything before this frame is final once window ``index`` is accumulated."""
        return origin + (index + 1) * self.hop_frames

    def latency_frames(self, block_frames: int, inference_budget_frames: int) -> int:
        return self.context_frames + block_frames + inference_budget_frames
