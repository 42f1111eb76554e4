"""Bad input never kills the server: each case gets a clear error (or the standard close code), one log
line, and the server goes on serving everyone else."""

import asyncio
import base64
import json
import socket
import time

import httpx
import pytest
import websockets

from tests.server.conftest import MIDI, Stream, connect, midi_bytes

KEY = {"Authorization": "Bearer let-me-in"}


def strict_connect(server, **kw):
    return connect(server, additional_headers=KEY, **kw)


def wait_for_sessions(server, n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while server.health()["sessions"] != n:
        assert time.monotonic() < deadline, f"sessions stayed at {server.health()['sessions']}, expected {n}"
        time.sleep(0.05)


async def errors(s: Stream, n: int) -> list[dict]:
    """The next n error frames (events in between are skipped)."""
    return [await s.expect("error") for _ in range(n)]


def test_bad_messages_get_error_frames_and_the_session_goes_on(strict_server):
    note = {"pitch": 200, "velocity": 90, "program": 0, "channel": 0, "beat": 0, "duration_beats": 1}
    bad = [
        ("{not json", "bad_json", "not valid JSON"),
        ("[1, 2]", "bad_json", "JSON object"),
        (json.dumps({"type": "dance"}), "unknown_type", "'dance'"),
        (json.dumps({"beat": 1}), "unknown_type", "'type'"),
        (json.dumps({"type": "clock"}), "invalid_field", "beat: Field required"),
        (json.dumps({"type": "clock", "beat": -1}), "invalid_field", "beat"),
        (json.dumps({"type": "params", "temperature": -1}), "invalid_field", "temperature"),
        (json.dumps({"type": "params", "constraints": {"pitch_min": 90, "pitch_max": 9}}), "invalid_field", "above"),
        (json.dumps({"type": "params", "temprature": 1}), "invalid_field", "temprature"),
        (json.dumps({"type": "notes", "events": [note]}), "invalid_field", "pitch must be an integer 0..127"),
        (json.dumps({"type": "start"}), "already_started", "already"),
        (b"\x00\x01binary", "bad_frame", "binary"),
    ]

    async def main():
        async with strict_connect(strict_server) as ws:
            s = Stream(ws)
            await s.send(type="start", params={"seed": 1}, realtime=False)
            await s.expect("ready")
            for raw, _, _ in bad:
                await ws.send(raw)
            got = await errors(s, len(bad))
            after = await s.events(5)
            return got, after

    got, after = asyncio.run(main())
    for (_, code, words), frame in zip(bad, got, strict=True):
        assert frame["code"] == code and words in frame["message"], frame
    assert len(after) == 5
    assert "invalid_field: temperature: Input should be greater than or equal to 0" in strict_server.log_text()


def test_messages_before_start_are_refused(strict_server):
    async def main():
        async with strict_connect(strict_server) as ws:
            s = Stream(ws)
            await s.send(type="pause")
            refused = await s.expect("error")
            await s.send(type="start", session="no-such-session")
            unknown = await s.expect("error")
            await s.send(type="start")
            return refused, unknown, await s.expect("ready")

    refused, unknown, ready = asyncio.run(main())
    assert refused["code"] == "not_started" and "'start' before 'pause'" in refused["message"]
    assert unknown["code"] == "unknown_session"
    assert ready["session"]


BAD_FILES = sorted((MIDI / "bad").glob("*.mid"))


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.name for p in BAD_FILES])
def test_a_corrupt_prompt_is_refused_with_its_reason(server, path):
    data = path.read_bytes()

    async def main():
        async with connect(server) as ws:
            s = Stream(ws)
            await s.send(type="start", prompt=base64.b64encode(data).decode())
            refused = await s.expect("error")
            await s.send(type="start")  # the connection is still good for a start without the bad prompt
            return refused, await s.expect("ready")

    refused, ready = asyncio.run(main())
    assert refused["code"] == "bad_prompt" and refused["message"].startswith("prompt: ")
    assert ready["session"]
    with server.client() as http:
        r = http.post("/v1/generate", files={"prompt": (path.name, data, "audio/midi")})
    assert r.status_code == 422 and r.json()["code"] == "bad_prompt" and path.name in r.json()["message"]


def test_prompts_that_are_not_base64_or_too_large_are_refused(strict_server):
    big = base64.b64encode(midi_bytes("Funkytown.mid")).decode()  # 39,919 bytes: over max_prompt_bytes 20,000

    async def main():
        async with strict_connect(strict_server) as ws:
            s = Stream(ws)
            await s.send(type="start", prompt="this is not base64!")
            not_b64 = await s.expect("error")
            await s.send(type="start", prompt=big)
            too_big = await s.expect("error")
            return not_b64, too_big

    not_b64, too_big = asyncio.run(main())
    assert not_b64["code"] == "bad_prompt" and "base64" in not_b64["message"]
    assert too_big["code"] == "prompt_too_large"
    with strict_server.client() as http:
        r = http.post("/v1/generate", files={"prompt": ("f.mid", midi_bytes("Funkytown.mid"), "audio/midi")})
        assert r.status_code == 413 and r.json()["code"] == "prompt_too_large"
        r = http.post("/v1/generate", content=b"x" * 100_000, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "body_too_large"


def test_bad_rest_requests_get_clear_errors(strict_server):
    with strict_server.client() as http:
        r = http.post("/v1/generate", content=b"{oops", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["code"] == "invalid_field"
        r = http.post("/v1/generate", json={"temperature": -1})
        assert r.status_code == 422 and "temperature" in r.json()["message"]
        r = http.post("/v1/generate", json={"length_beats": 1000})
        assert r.status_code == 422 and r.json()["code"] == "clip_too_long"
        r = http.post("/v1/generate", content=iter([b'{"seed": 1}']), headers={"Content-Type": "application/json"})
        assert r.status_code == 411 and r.json()["code"] == "length_required"
        octets = {"Content-Type": "application/octet-stream"}
        r = http.post("/v1/sessions", content=b"SM1SNAP\x00garbage", headers=octets)
        assert r.status_code == 422 and r.json()["code"] == "bad_snapshot"
        r = http.post("/v1/sessions/nope/fork")
        assert r.status_code == 404 and r.json()["code"] == "unknown_session"
        r = http.post("/v1/sessions/nope/fork", json={"seed": -1})
        assert r.status_code == 422 and r.json() == {
            "code": "invalid_field", "message": "seed: Input should be greater than or equal to 0"}


def test_an_oversized_frame_closes_with_1009(strict_server):
    async def main():
        async with strict_connect(strict_server) as ws:
            s = Stream(ws)
            await s.send(type="start", prompt=base64.b64encode(midi_bytes("Maestro_2.mid")).decode())  # 138 KB
            return await s.closed()

    code, _ = asyncio.run(main())
    assert code == 1009
    assert strict_server.health()["status"] == "ok"


def test_a_flood_of_messages_closes_with_1008(strict_server):
    async def main():
        async with strict_connect(strict_server) as ws:
            s = Stream(ws)
            await s.send(type="start", realtime=False)
            await s.expect("ready")
            for i in range(100):
                await s.send(type="clock", beat=float(i))
            error = await s.expect("error")
            return error, await s.closed()

    error, (code, reason) = asyncio.run(main())
    assert error["code"] == "too_many_messages" and code == 1008 and "messages a second" in reason
    wait_for_sessions(strict_server, 0)


def test_too_many_sessions_close_with_1013(strict_server):
    wait_for_sessions(strict_server, 0)

    async def main():
        async with strict_connect(strict_server) as a, strict_connect(strict_server) as b, strict_connect(
            strict_server
        ) as c:
            for ws in (a, b, c):
                await Stream(ws).send(type="start")
                await Stream(ws).expect("ready")
            async with strict_connect(strict_server) as d:
                s = Stream(d)
                await s.send(type="start")
                full = await s.expect("error")
                closed = await s.closed()
            with strict_server.client() as http:
                rest = http.post("/v1/sessions", json={})
            return full, closed, rest

    full, (code, reason), rest = asyncio.run(main())
    assert full["code"] == "server_full" and code == 1013 and "3 session slots" in reason
    assert rest.status_code == 503 and rest.json()["code"] == "server_full" and rest.headers["retry-after"]
    wait_for_sessions(strict_server, 0)


def test_the_api_key_is_required_when_set(strict_server):
    assert httpx.get(f"{strict_server.http}/v1/model").status_code == 401
    wrong = httpx.get(f"{strict_server.http}/v1/model", headers={"X-API-Key": "guess"})
    assert wrong.status_code == 401 and wrong.json()["code"] == "unauthorized"
    assert httpx.get(f"{strict_server.http}/v1/model", headers={"X-API-Key": "let-me-in"}).status_code == 200
    assert httpx.get(f"{strict_server.http}/healthz").status_code == 200  # probes need no key

    async def main():
        async with connect(strict_server) as ws:
            s = Stream(ws)
            refused = await s.expect("error")
            closed = await s.closed()
        async with websockets.connect(strict_server.ws + "?api_key=let-me-in") as ws:  # browsers: no headers
            s = Stream(ws)
            await s.send(type="start")
            return refused, closed, await s.expect("ready")

    refused, (code, reason), ready = asyncio.run(main())
    assert refused["code"] == "unauthorized" and code == 1008 and "API key" in reason
    assert ready["session"]


def test_a_client_that_never_reads_is_dropped_while_others_keep_streaming(strict_server):
    wait_for_sessions(strict_server, 0)

    async def main():
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", strict_server.port))
        async with strict_connect(strict_server, sock=sock, max_queue=1) as stalled:
            await stalled.send(json.dumps({"type": "start", "realtime": False}))  # and never read again
            async with strict_connect(strict_server) as ws:
                s = Stream(ws)
                await s.send(type="start", params={"seed": 3}, tempo_bpm=960, lookahead_beats=2)
                await s.expect("ready")
                t0 = time.monotonic()
                while time.monotonic() - t0 < 4:
                    await s.recv()
                alone = strict_server.health()["sessions"]
                return [f for _, f in s.frames if f["type"] == "events"], alone

    frames, alone = asyncio.run(main())
    assert [f["seq"] for f in frames] == list(range(len(frames))) and len(frames) >= 5
    assert alone == 1  # the stalled client's slot was freed while the other streamed
    assert "connection lost without 'stop'; session freed" in strict_server.log_text()


def test_a_client_that_vanishes_mid_stream_frees_its_slot(strict_server):
    wait_for_sessions(strict_server, 0)

    async def main():
        ws = await strict_connect(strict_server)
        s = Stream(ws)
        await s.send(type="start", realtime=False)
        await s.events(3)
        ws.transport.abort()  # no close frame, no FIN handshake: gone

    asyncio.run(main())
    wait_for_sessions(strict_server, 0, timeout=5)
    assert strict_server.health()["status"] == "ok"


def test_a_rest_session_nobody_streams_is_freed_after_the_idle_timeout(strict_server):
    with strict_server.client() as http:
        sid = http.post("/v1/sessions", json={}).json()["session"]
        assert http.get(f"/v1/sessions/{sid}/snapshot").status_code == 200  # touching it keeps it
        time.sleep(3.5)  # idle_timeout_s=2, checked every 0.5 s
        assert http.get(f"/v1/sessions/{sid}/snapshot").status_code == 404
    assert "idle for" in strict_server.log_text()


def test_cors_allows_only_the_configured_origins(strict_server):
    def preflight(origin: str) -> httpx.Response:
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        return httpx.options(f"{strict_server.http}/v1/generate", headers=headers)

    assert preflight("http://daw.example").headers["access-control-allow-origin"] == "http://daw.example"
    assert "access-control-allow-origin" not in preflight("http://evil.example").headers
