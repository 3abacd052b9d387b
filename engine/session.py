"""What a separation session is, and how it fails: plain data that crosses the process boundary.

Nothing here imports torch or the worker: the parent, the separation process and the command
line all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stemdeck.engine.worker.cache import CacheEntry
    from stemdeck.engine.worker.windows import WindowPlan

LIVE, DECK = "live", "deck"  # what a session separates: the sound card's input, or a loaded track


@dataclass(frozen=True)
class Failure:
    """Why separation failed, as data: it crosses the process boundary as it is, never re-parsed."""

    kind: str  # the exception's type name
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        return cls(type(exc).__name__, str(exc))

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class WorkerError(RuntimeError):
    """The separation worker refused a request, or its process failed; one line says why."""

    def __init__(self, message: str, kind: str = "worker"):
        super().__init__(message)
        self.kind = kind  # the failure's exception type, or "exited" / "timeout" / "worker"

    @classmethod
    def refused(cls, failure: Failure) -> WorkerError:
        """A ValueError is a request this machine or model cannot meet: said as it is; anything
        else names its type."""
        return cls(failure.message if failure.kind == "ValueError" else str(failure), failure.kind)


@dataclass(frozen=True)
class SessionSpec:
    """One separation session, besides its arrays; picklable, so the process is sent it as is."""

    kind: str  # LIVE or DECK
    plan: WindowPlan
    cue_frames: int = 0  # deck: where separation starts
    cache_entry: CacheEntry | None = None  # deck: the stems cache's file for this track
    resume: bool = False  # deck: take over from a process that died, keeping the stems it finished
    quick_frames: int = 0  # deck: a short first window at each (re)start point, 0 for none
