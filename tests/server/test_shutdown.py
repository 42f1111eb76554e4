"""SIGTERM: the server stops admitting, sends `end` to every stream, closes each with 1001, and exits."""

import asyncio
import os
import signal
import subprocess

import httpx
import pytest

from tests.server.conftest import Stream, connect, start_server


def test_sigterm_ends_every_stream_with_1001(tiny_checkpoint, tmp_path):
    server = start_server(tiny_checkpoint, tmp_path / "server.log")
    try:

        async def main():
            streams = []
            for seed in (1, 2):
                ws = await connect(server)
                s = Stream(ws)
                await s.send(type="start", params={"seed": seed}, realtime=False)
                await s.events(3)
                streams.append(s)
            server.process.send_signal(signal.SIGTERM)
            ends = [await s.expect("end") for s in streams]
            closes = [await s.closed() for s in streams]
            return ends, closes

        ends, closes = asyncio.run(main())
        assert [e["reason"] for e in ends] == ["server shutting down"] * 2
        assert closes == [(1001, "server shutting down")] * 2
        assert server.process.wait(timeout=20) is not None
        assert "drained 2 stream(s)" in server.log_text()
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.http}/healthz", timeout=2)


def test_without_a_checkpoint_the_server_exits_with_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM1_")} | {"SM1_CHECKPOINTS": str(tmp_path)}
    done = subprocess.run(["sm1-server"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"sm1-server: no checkpoint found under {tmp_path} (expected a folder with config.json); "
        "pass --checkpoint DIR (or SM1_CHECKPOINT), or train one (README)"
    )
