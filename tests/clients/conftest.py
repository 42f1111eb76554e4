"""Fixtures of the client tests: the real server on loopback (a subprocess, so a test can kill it), a JACK
server of our own (`jackd -d dummy`), and a "DAW": a second rtmidi client reading a port, noting when
each message arrived."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_MIDI = Path(os.environ.get("SM1_SHARED_MIDI", ROOT.parent / "shared" / "midi"))
OUTPUT = ROOT / "test-output" / "clients"  # git-ignored: screenshots, logs worth a look after a run
JACK_RATE, JACK_PERIOD = 48000, 64  # 1.3 ms per JACK cycle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class ServerProcess:
    """`sm1-server` with a checkpoint on a loopback port, in its own process: tests kill and restart it."""

    def __init__(self, checkpoint: Path, log_dir: Path, *args: str) -> None:
        self.checkpoint, self.port, self.args = checkpoint, free_port(), args
        self.log = log_dir / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> ServerProcess:
        env = {**os.environ, "SM1_TORCH_THREADS": "1", "SM1_LOG_LEVEL": "warning"}
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                ["sm1-server", "--checkpoint", str(self.checkpoint), "--port", str(self.port), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sm1-server exited with {self.proc.returncode}:\n{log_tail(self.log)}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"sm1-server did not answer /healthz within {timeout} s:\n{log_tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-stream, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def output_dir() -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    return OUTPUT


@pytest.fixture(scope="session")
def server(tiny_checkpoint, output_dir):
    """One server for the tests that do not kill it."""
    srv = ServerProcess(tiny_checkpoint, output_dir).start()
    yield srv
    srv.stop()


@pytest.fixture
def own_server(tiny_checkpoint, output_dir):
    """A server this test may kill (and start again on the same port)."""
    srv = ServerProcess(tiny_checkpoint, output_dir).start()
    yield srv
    srv.stop()


# ---- JACK ----------------------------------------------------------------------------------------------------
def _jack_unavailable() -> str | None:
    import rtmidi

    if shutil.which("jackd") is None:
        return "jackd is not installed (Debian package jackd2; `bash scripts/dev.sh test` installs it)"
    if rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api():
        return "this python-rtmidi was built without the JACK API"
    return None


def realtime_allowed() -> bool:
    """Whether this machine lets a process ask for SCHED_FIFO (many containers do not)."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))"
    if not hasattr(os, "SCHED_FIFO"):
        return False
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@dataclass(frozen=True)
class Jack:
    name: str
    realtime: bool  # JACK runs its process cycle with realtime priority (else timing follows the machine's load)


@pytest.fixture(scope="session")
def jack(output_dir):
    """A JACK server of our own (`jackd -d dummy`) under its own name, so that it never touches a JACK the
    machine may run. Realtime scheduling where the container allows it, else `--no-realtime` (which any
    container can run). Clients (the bridge, the DAW) find it through JACK_DEFAULT_SERVER;
    JACK_NO_START_SERVER stops them from starting another."""
    reason = _jack_unavailable()
    if reason:
        pytest.skip(reason)
    name = f"sm1test{os.getpid()}"
    realtime = realtime_allowed() and os.environ.get("SM1_JACK_REALTIME", "1") != "0"  # 0: measure without
    env = {"JACK_DEFAULT_SERVER": name, "JACK_NO_START_SERVER": "1", "JACK_NO_AUDIO_RESERVATION": "1"}
    log = output_dir / "jackd.log"
    command = ["jackd", *(["-R", "-P", "70"] if realtime else ["--no-realtime"]), "-n", name,
               "-d", "dummy", "-r", str(JACK_RATE), "-p", str(JACK_PERIOD)]  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with log.open("w") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            waited = subprocess.run(["jack_wait", "-w", "-t", "10"], capture_output=True, text=True, timeout=15)
            if proc.poll() is not None or waited.returncode != 0:
                pytest.skip(f"jackd could not start here: {log_tail(log, 5)} {waited.stdout.strip()}")
            yield Jack(name, realtime)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


class Daw:
    """A second rtmidi client on the JACK server, reading a port as a DAW would: each message with the
    monotonic time it arrived (CLOCK_MONOTONIC is the same clock in every process)."""

    def __init__(self, port: str, timeout: float = 15.0) -> None:
        import rtmidi

        self.inp = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name="test-daw")
        self.inp.ignore_types(sysex=True, timing=True, active_sense=True)
        self.messages: list[tuple[float, list[int]]] = []
        deadline = time.monotonic() + timeout
        while True:
            ports = self.inp.get_ports()
            matches = [i for i, p in enumerate(ports) if p.endswith(f":{port}")]
            if matches:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no JACK port {port!r} appeared; ports: {ports}")
            time.sleep(0.05)
        self.inp.set_callback(lambda event, _: self.messages.append((time.monotonic(), event[0])))
        self.inp.open_port(matches[0], "in")

    def close(self) -> None:
        self.inp.close_port()
        self.inp.delete()

    def note_ons(self) -> list[tuple[float, int, int, int]]:
        """(time, channel, pitch, velocity) of each note-on, in arrival order."""
        return [(t, m[0] & 15, m[1], m[2]) for t, m in self.messages if m[0] & 0xF0 == 0x90 and m[2] > 0]

    def hanging(self) -> set[tuple[int, int]]:
        """(channel, pitch) of the notes switched on and never off (All Notes Off ends a whole channel)."""
        on: set[tuple[int, int]] = set()
        for _, m in self.messages:
            kind, ch = m[0] & 0xF0, m[0] & 15
            if kind == 0x90 and m[2] > 0:
                on.add((ch, m[1]))
            elif kind == 0x80 or (kind == 0x90 and m[2] == 0):
                on.discard((ch, m[1]))
            elif kind == 0xB0 and m[1] == 123:
                on = {k for k in on if k[0] != ch}
        return on


class Keyboard:
    """A test "keyboard" (or a DAW sending MIDI clock): a virtual JACK output port the bridge reads."""

    def __init__(self, port: str) -> None:
        import rtmidi

        self.out = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name="test-keyboard")
        self.out.open_virtual_port(port)

    def send(self, message: list[int]) -> None:
        self.out.send_message(message)

    def close(self) -> None:
        self.out.close_port()
        self.out.delete()


class BridgeProcess:
    """`sm1-bridge` on the JACK API in its own process, its log in a file."""

    def __init__(self, server: str, port: str, log_dir: Path, *args: str) -> None:
        self.port = port
        self.log = log_dir / f"bridge-{port}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                ["sm1-bridge", "--api", "jack", "--server", server, "--port", port, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"sm1-bridge did not exit within {timeout} s of signal {sig}:\n{self.text}") from None

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def daw_factory(jack):
    opened: list[Daw] = []

    def make(port: str) -> Daw:
        opened.append(Daw(port))
        return opened[-1]

    yield make
    for d in opened:
        d.close()


@pytest.fixture
def bridge_factory(jack, output_dir):
    started: list[BridgeProcess] = []

    def make(server: str, port: str, *args: str) -> BridgeProcess:
        started.append(BridgeProcess(server, port, output_dir, *args))
        return started[-1]

    yield make
    for b in started:
        if b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait(5)


def reference_stream(server: str, start: dict, beats: float, max_frames: int = 20_000) -> list[dict]:
    """The notes a stream with these `start` fields writes in its first `beats` beats, generated as fast as
    the server can (realtime off): what a listener of the same seed must hear, note for note."""
    from websockets.sync.client import connect

    events: list[dict] = []
    with connect(server.replace("http://", "ws://") + "/v1/stream", max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "realtime": False, **start}))
        for _ in range(max_frames):
            frame = json.loads(ws.recv(timeout=30))
            if frame["type"] == "error":
                raise AssertionError(f"the reference stream failed: {frame}")
            if frame["type"] == "events":
                events += frame["events"]
                if events[-1]["beat"] >= beats:
                    break
        ws.send(json.dumps({"type": "stop"}))
    return [e for e in events if e["beat"] < beats]
