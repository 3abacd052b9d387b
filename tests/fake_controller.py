"""A hardware MIDI controller as JACK shows it, played by a process of its own.

Its output port ("pads out") sends what a test asks; its input port ("leds in") reports what the
engine lights. It runs apart from the tests' process because python-rtmidi's JACK backend now and
then crashes (SIGSEGV) as a port closes: in the tests' process that ended the whole test run (2 of
7 full runs at one stop), here it ends only the fake controller, after the test's checks.

Run as a script it reads commands on stdin ("plug", "unplug", "send 144 36 100", "quit"), answers
each with "ok", and prints each message its input receives as "led 144 36 127".
"""

import os
import queue
import subprocess
import sys
import threading

CONTROLLER = "fakectl"
ANSWER_TIMEOUT_S = 10.0
READ_INTERVAL_S = 0.001


class FakeController:
    """The tests' side: starts the controller's process and waits until its ports are open."""

    def __init__(self, name: str = CONTROLLER):
        self.leds: list[list[int]] = []
        self._got = threading.Condition()
        self._answers: queue.Queue[str] = queue.Queue()
        self._process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read_answers, name="fake-controller", daemon=True)
        self._reader.start()
        self._wait_answer("ready")

    def plug(self) -> None:
        self._command("plug")

    def unplug(self) -> None:
        self._command("unplug")

    def send(self, *message: int) -> None:
        self._command("send " + " ".join(str(byte) for byte in message))

    def wait_led(self, message, timeout_s: float = 5.0) -> bool:
        with self._got:
            return self._got.wait_for(lambda: list(message) in self.leds, timeout_s)

    def close(self) -> None:
        """Closes the ports; a crash of the controller's process while they close is rtmidi's
        (see the module's docstring) and is not the test's outcome."""
        if self._process.poll() is None:
            try:
                self._command("quit")
                self._process.wait(ANSWER_TIMEOUT_S)
            except (AssertionError, BrokenPipeError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._reader.join(ANSWER_TIMEOUT_S)

    def _command(self, line: str) -> None:
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()
        self._wait_answer("ok")

    def _wait_answer(self, expected: str) -> None:
        try:
            answer = self._answers.get(timeout=ANSWER_TIMEOUT_S)
        except queue.Empty:
            answer = f"nothing in {ANSWER_TIMEOUT_S} s (exit code {self._process.poll()})"
        assert answer == expected, f"the fake controller answered {answer!r}, not {expected!r}"

    def _read_answers(self) -> None:
        for line in self._process.stdout:
            word, *numbers = line.split()
            if word == "led":
                with self._got:
                    self.leds.append([int(number) for number in numbers])
                    self._got.notify_all()
            else:
                self._answers.put(word)
        self._answers.put("end of output")


def serve(name: str) -> None:
    """The controller's process: JACK ports driven by stdin, LED messages printed."""
    from stemdeck.engine.midi.ports import open_client, queued_messages

    printing = threading.Lock()

    def say(line: str) -> None:
        with printing:
            print(line, flush=True)

    def open_pads():
        client = open_client("out", "jack", name)
        client.open_virtual_port("pads out")
        return client

    def read_leds(client, closing: threading.Event) -> None:
        while not closing.wait(READ_INTERVAL_S):
            for message in queued_messages(client):
                say("led " + " ".join(str(byte) for byte in message))

    pads_out = open_pads()
    leds_in = open_client("in", "jack", name)
    leds_in.ignore_types(sysex=False)
    leds_in.open_virtual_port("leds in")
    closing = threading.Event()
    reader = threading.Thread(target=read_leds, args=(leds_in, closing), daemon=True)
    reader.start()
    say("ready")
    for line in sys.stdin:
        command, *numbers = line.split()
        if command == "send":
            pads_out.send_message([int(number) for number in numbers])
        elif command == "unplug":
            pads_out.close_port()
            pads_out.delete()
        elif command == "plug":
            pads_out = open_pads()
        elif command == "quit":
            closing.set()
            reader.join()
            for client in (pads_out, leds_in):
                client.close_port()
                client.delete()
            say("ok")
            return
        say("ok")


if __name__ == "__main__":
    serve(sys.argv[1])
