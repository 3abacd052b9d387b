"""Whether a JACK server is up, asked without a JACK client.

A libjack client whose server has gone lives on as a zombie: its port lists stay as they were,
and closing it may fail (PortAudio asserts that it does not, and aborts the process), even once
a new server of the same name runs. JACK2 takes its clients' requests on a Unix socket named
after the server, made anew by each server: a connect() there says whether a server answers,
and the socket's inode which one, at no risk to the process. Elsewhere (PipeWire's JACK, JACK1)
there is no such socket, and nothing is known.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

SOCKET_DIR = Path("/dev/shm")  # where JACK2 puts its request sockets on Linux
CONNECT_TIMEOUT_S = 1.0


def current_server() -> str:
    """The server libjack will talk to (``$JACK_DEFAULT_SERVER``, else ``default``)."""
    return os.environ.get("JACK_DEFAULT_SERVER") or "default"


@dataclass(frozen=True)
class Server:
    """One run of a JACK2 server: its request socket, and that socket's inode."""

    socket_path: Path
    inode: int

    def runs(self) -> bool:
        """Whether this very server still answers (not a later one of the same name)."""
        return _inode(self.socket_path) == self.inode and answers(self.socket_path)


def socket_path(name: str | None = None) -> Path:
    """Where JACK2 server ``name`` (this process's default) takes requests."""
    return SOCKET_DIR / f"jack_{name or current_server()}_{os.getuid()}_0"


def running_server(name: str | None = None) -> Server | None:
    """The JACK2 server ``name`` that answers now, if one does."""
    path = socket_path(name)
    inode = _inode(path)
    return Server(path, inode) if inode is not None and answers(path) else None


def answers(path: Path) -> bool:
    """Whether a server listens on ``path`` (one that was killed leaves its socket behind)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(CONNECT_TIMEOUT_S)
        try:
            probe.connect(os.fsencode(path))
        except OSError:  # removed, or nobody listening behind it
            return False
    return True


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None
