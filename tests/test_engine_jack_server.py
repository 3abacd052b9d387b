"""A JACK2 server's liveness read from its request socket, without a JACK client in this process."""

import os

from conftest import clear_stale_jack_state, start_jack_server, stop_jack_server

from stemdeck.engine import jack_server


def test_a_server_is_known_by_its_socket_until_it_stops_and_a_restart_is_another_server():
    name = f"stemdeck-socket-{os.getpid()}"
    assert jack_server.running_server(name) is None
    process = start_jack_server(name, playback_channels=2)
    try:
        first = jack_server.running_server(name)
        assert first is not None and first.socket_path == jack_server.socket_path(name) and first.runs()
    finally:
        process.kill()  # as a crash: the socket stays behind
        process.wait()
        process.log.close()
    assert first.socket_path.exists() and not jack_server.answers(first.socket_path)
    assert not first.runs() and jack_server.running_server(name) is None
    clear_stale_jack_state()
    process = start_jack_server(name, playback_channels=2)
    try:
        second = jack_server.running_server(name)
        assert second is not None and second.runs()
        assert second.inode != first.inode and not first.runs()  # the same name, another server
    finally:
        stop_jack_server(process)
    assert not second.runs()
