"""`sm1-server`: run the app under uvicorn, with the graceful drain on SIGTERM/SIGINT.

On the first signal the server stops admitting, sends `end` to every stream and closes it with 1001,
then lets uvicorn finish the HTTP requests in flight and exit. (Plain uvicorn would close streams with
1012 and no `end`.) A second signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from pathlib import Path
from types import FrameType

import torch
import uvicorn
from fastapi import FastAPI

from server.app import create_app
from server.peers import Peers
from server.settings import Settings
from server.workers import run_workers
from sm1.checkpoint import CheckpointError, LoadedCheckpoint, load, resolve_default

log = logging.getLogger("sm1.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, settings: Settings) -> None:
        super().__init__(config)
        self.app, self.settings = app, settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def startup(self, sockets: list | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None or self.should_exit:
            return super().handle_exit(sig, frame)
        self._draining = True
        log.info("signal %d: draining streams (up to %g s), then exiting", sig, self.settings.shutdown_grace_s)
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain_then_exit(sig, frame)))

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        try:
            await self.app.state.runtime.hub.drain(self.settings.shutdown_grace_s)
        finally:
            super().handle_exit(sig, frame)


def parse_args(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="sm1-server",
        description="The SM1 server. Every setting is also an environment variable SM1_<NAME> (or in .env).",
    )
    p.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: the shipped one in checkpoints/)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000; 0: any free port)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--max-sessions", type=int, dest="max_sessions", help="session slots (default 256; per worker)")
    p.add_argument("--workers", type=int, help="server processes on the port and device (default 1)")
    p.add_argument("--log-level", dest="log_level", help="debug, info, warning, error")
    return {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}


def main(argv: list[str] | None = None) -> None:
    settings = Settings(**parse_args(argv))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.checkpoint is None:
        try:
            settings.checkpoint = resolve_default()
        except CheckpointError as e:
            sys.exit(f"sm1-server: {e}; pass --checkpoint DIR (or SM1_CHECKPOINT), or train one (README)")
    if settings.workers > 1:
        load_or_exit(settings.checkpoint, "cpu")  # here too: one line and exit 1, not a traceback per worker
        return run_workers(settings)
    serve(settings)


def load_or_exit(path: Path, device: str | torch.device) -> LoadedCheckpoint:
    """The checkpoint, or one clear line and exit 1."""
    try:
        return load(path, device)
    except CheckpointError as e:
        sys.exit(f"sm1-server: cannot load the checkpoint: {e}")


def serve(settings: Settings, sockets: list[socket.socket] | None = None, peers: Peers | None = None) -> None:
    """One server process: on settings' host and port, or on `sockets` (a worker of several: server/workers.py)."""
    checkpoint = load_or_exit(settings.checkpoint, settings.torch_device())  # before uvicorn: no lifespan traceback
    app = create_app(settings, checkpoint, peers)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        ws_per_message_deflate=settings.ws_compression,
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_s) + 1),
        lifespan="on",
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT it drained for
        DrainingServer(config, app, settings).run(sockets=sockets)


if __name__ == "__main__":
    main()
