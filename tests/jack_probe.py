"""A JACK probe for the engine's tests, run in its own process so that its Python callbacks
never compete with the engine's for an interpreter lock.

Usage: python jack_probe.py SERVER SIGNAL.npy RECORD_SECONDS OUT_CHANNELS RESULT.npz
It prints ROUTED once connected and RECORDED when done, then waits for a line on stdin
before closing its clients (closing reorders the JACK graph).
"""

import sys
import threading

import numpy as np

JACK_RATE, JACK_PERIOD = 44100, 256


class Player:
    """Plays ``signal`` (C, N) into the engine's inputs, starting at a recorded JACK frame time."""

    def __init__(self, server: str, signal: np.ndarray):
        import jack

        self.client = jack.Client("stemdeck-player", servername=server)
        self.ports = [self.client.outports.register(f"out_{c}") for c in range(signal.shape[0])]
        self.signal, self.position, self.start_frame = signal, 0, None
        self.playing = False  # set once routed, so no part of the signal goes nowhere
        self.client.set_process_callback(self._process)

    def _process(self, frames):
        if not self.playing:
            for port in self.ports:
                port.get_array()[:] = 0
            return
        if self.start_frame is None:
            self.start_frame = self.client.last_frame_time
        chunk = self.signal[:, self.position : self.position + frames]
        for port, data in zip(self.ports, chunk, strict=True):
            buffer = port.get_array()
            buffer[:] = 0
            buffer[: data.shape[0]] = data
        self.position += frames


class Recorder:
    """Records ``channels`` inputs with the JACK frame time of their first sample."""

    def __init__(self, server: str, channels: int, seconds: float):
        import jack

        self.client = jack.Client("stemdeck-recorder", servername=server)
        self.ports = [self.client.inports.register(f"in_{c}") for c in range(channels)]
        self.data = np.zeros((channels, int(seconds * JACK_RATE) + JACK_PERIOD), np.float32)
        self.position, self.start_frame = 0, None
        self.done = threading.Event()
        self.client.set_process_callback(self._process)

    def _process(self, frames):
        if self.start_frame is None:
            self.start_frame = self.client.last_frame_time
        room = min(frames, self.data.shape[1] - self.position)
        for c, port in enumerate(self.ports):
            self.data[c, self.position : self.position + room] = port.get_array()[:room]
        self.position += room
        if self.position >= self.data.shape[1]:
            self.done.set()


ENGINE_OUTPUTS = [
    f"stemdeck:{group}_{side}" for group in ("master", "drums", "bass", "other", "vocals") for side in "LR"
]  # the pass-through model's stems, in the engine's column order
ENGINE_INPUTS = ["stemdeck:in_L", "stemdeck:in_R"]


def engine_ports(client, is_input: bool) -> list[str]:
    """The engine's JACK ports (client ``stemdeck``), in channel order."""
    present = {p.name for p in client.get_ports("stemdeck:", is_audio=True)}
    return [name for name in (ENGINE_INPUTS if is_input else ENGINE_OUTPUTS) if name in present]


def route(player: Player | None, recorder: Recorder, out_channels: int):
    """Player -> engine inputs; engine outputs -> recorder; nothing else into the engine."""
    client = recorder.client
    inputs, outputs = engine_ports(client, True), engine_ports(client, False)
    for name in inputs:
        for port in client.get_all_connections(name):
            client.disconnect(port, name)
    if player is not None:
        for port, name in zip(player.ports, inputs, strict=False):
            player.client.connect(port, name)
    for name, port in zip(outputs[:out_channels], recorder.ports, strict=False):
        client.connect(name, port)


def main() -> None:
    server, signal_path, seconds, out_channels, result_path = sys.argv[1:6]
    signal = np.load(signal_path)
    player, recorder = Player(server, signal), Recorder(server, int(out_channels), float(seconds))
    with player.client, recorder.client:
        route(player, recorder, int(out_channels))
        player.playing = True
        print("ROUTED", flush=True)
        if not recorder.done.wait(float(seconds) + 30):
            print("TIMEOUT", flush=True)
        np.savez(result_path, data=recorder.data, recorder_start=recorder.start_frame, player_start=player.start_frame)
        print("RECORDED", flush=True)
        sys.stdin.readline()


if __name__ == "__main__":
    main()
