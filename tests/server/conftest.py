"""A real `sm1-server` in a subprocess on a free loopback port, and real clients to talk to it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets

MIDI = Path("/work/shared/midi")


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log: Path
    api_key: str | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def client(self, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.http, headers=headers, timeout=30, **kw)

    def health(self) -> dict:
        return httpx.get(f"{self.http}/healthz", timeout=10).json()

    def log_text(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(checkpoint: Path, log: Path, **settings) -> Server:
    """sm1-server with SM1_<NAME> settings, on a port the OS picks (read back from uvicorn's log)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM1_")}
    env |= {"SM1_CHECKPOINT": str(checkpoint), "SM1_PORT": "0", "SM1_TORCH_THREADS": "1"}
    env |= {f"SM1_{k.upper()}": str(v) for k, v in settings.items()}
    with open(log, "w") as f:
        process = subprocess.Popen(["sm1-server"], env=env, stdout=f, stderr=subprocess.STDOUT, cwd=log.parent)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        found = re.search(r"(?:Uvicorn running on|workers serving on) http://127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            return Server(process, int(found.group(1)), log, settings.get("api_key"))
        if process.poll() is not None:
            raise RuntimeError(f"sm1-server exited with {process.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"sm1-server did not start:\n{log.read_text()}")


@pytest.fixture(scope="session")
def server(tiny_checkpoint, tmp_path_factory):
    """The server with its default settings (a short send timeout, so a stalled client is dropped soon)."""
    s = start_server(tiny_checkpoint, tmp_path_factory.mktemp("server") / "server.log", send_timeout_s=3)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def strict_server(tiny_checkpoint, tmp_path_factory):
    """Small limits and an API key, to meet every limit quickly."""
    s = start_server(
        tiny_checkpoint,
        tmp_path_factory.mktemp("strict") / "server.log",
        api_key="let-me-in",
        max_sessions=3,
        max_frame_bytes=64 * 1024,
        max_prompt_bytes=20_000,
        max_messages_per_s=20,
        message_burst=40,
        send_timeout_s=2,
        ws_ping_interval_s=1,
        ws_ping_timeout_s=1,
        queue_frames=8,
        max_clip_beats=64,
        idle_timeout_s=2,
        cors_origins="http://daw.example,http://localhost:5173",
    )
    yield s
    s.stop()


class Stream:
    """A WebSocket client that keeps every frame it gets, with the time it arrived."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.frames: list[tuple[float, dict]] = []

    async def send(self, **msg) -> None:
        await self.ws.send(json.dumps(msg))

    async def recv(self, timeout: float = 10) -> dict:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append((time.monotonic(), frame))
        return frame

    async def expect(self, type_: str, timeout: float = 10) -> dict:
        """The next frame of this type (events before it are kept in `frames`)."""
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if frame["type"] == type_:
                return frame

    async def events(self, n: int, timeout: float = 20) -> list[dict]:
        """The notes of the next `n` notes' worth of `events` frames."""
        notes: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(notes) < n:
            frame = await self.expect("events", max(0.01, deadline - time.monotonic()))
            notes += frame["events"]
        return notes[:n]

    async def closed(self, timeout: float = 10) -> tuple[int, str]:
        """Read until the server closes; its close code and reason."""
        try:
            while True:
                await self.recv(timeout)
        except websockets.ConnectionClosed as e:
            return e.rcvd.code, e.rcvd.reason


def connect(server: Server, **kw) -> websockets.connect:
    return websockets.connect(server.ws, max_size=None, **kw)


def midi_bytes(name: str) -> bytes:
    return (MIDI / name).read_bytes()
