"""Fixtures of the reliability tests: the server tests' real `sm1-server` launcher and stream client
(tests/server/conftest.py), plus servers started with faults or limits of our own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from sm1.checkpoint import save
from sm1.model import SM1, SM1Config
from sm1.tokenizer import Tokenizer
from tests.server.conftest import Server, Stream, connect, start_server

__all__ = ["Server", "Stream", "connect", "serving", "wait_for_sessions"]


@contextmanager
def serving(checkpoint: Path, log_dir: Path, **settings) -> Iterator[Server]:
    """`sm1-server` with SM1_<NAME> settings for the length of a `with`."""
    server = start_server(checkpoint, log_dir / "server.log", **settings)
    try:
        yield server
    finally:
        server.stop()


def wait_for_sessions(server: Server, n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (got := server.health()["sessions"]) != n:
        assert time.monotonic() < deadline, f"sessions stayed at {got}, expected {n}"
        time.sleep(0.05)


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the same shape as `tiny_checkpoint` with other (random) weights."""
    tokenizer = Tokenizer.default()
    torch.manual_seed(1)
    model = SM1(SM1Config(vocab_size=tokenizer.vocab_size, d_model=32, n_layer=2))
    return save(tmp_path_factory.mktemp("checkpoints") / "other", model, tokenizer, {}, name="other")


@pytest.fixture(scope="session")
def fuzz_server(tiny_checkpoint, tmp_path_factory):
    """Short clips and a short idle timeout, so that thousands of fuzzed requests stay cheap."""
    log_dir = tmp_path_factory.mktemp("fuzz")
    with serving(tiny_checkpoint, log_dir, max_clip_beats=8, max_clip_tokens=64, idle_timeout_s=2) as s:
        yield s
