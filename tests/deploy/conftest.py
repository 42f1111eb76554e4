"""Fixtures for the deployment checks: the repository's Dockerfile, .dockerignore and compose files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.deploy.dockerfile import Dockerfile, DockerIgnore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return Dockerfile.read(REPO / "Dockerfile")


@pytest.fixture(scope="session")
def dockerignore() -> DockerIgnore:
    return DockerIgnore((REPO / ".dockerignore").read_text())


@pytest.fixture(scope="session")
def context(dockerignore, tmp_path_factory) -> Path:
    """The build context Docker would be sent (read only: copy it before changing anything)."""
    path = tmp_path_factory.mktemp("context")
    dockerignore.build_context(REPO, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def live_server(tiny_checkpoint, tmp_path_factory):
    """`sm1-server` with the tiny checkpoint on a free loopback port, as a user starts it; yields the port."""
    port, log = free_port(), tmp_path_factory.mktemp("live") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM1_")}
    env |= {"SM1_CHECKPOINT": str(tiny_checkpoint), "SM1_PORT": str(port), "SM1_TORCH_THREADS": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(["sm1-server"], env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    yield port
    process.send_signal(signal.SIGINT)
    process.wait(timeout=15)
