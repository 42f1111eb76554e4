"""Security: the API key guards every route but the health probe (compared in constant time), and each
limit a client can reach has a test here or in tests/server/test_bad_input.py (frame size, message rate,
prompt bytes, body size on /v1/generate, clip beats, CORS). No request path reaches the filesystem."""

import ast
import asyncio
import base64
import inspect
import json
import socket
from pathlib import Path

import httpx
import pytest

import server.auth
from tests.reliability.conftest import Stream, connect, serving

KEY = "open-sesame"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def guarded(tiny_checkpoint, tmp_path_factory):
    limits = {"max_prompt_tokens": 300, "max_clip_tokens": 100, "max_prompt_bytes": 20_000}
    with serving(tiny_checkpoint, tmp_path_factory.mktemp("guarded"), api_key=KEY, **limits) as s:
        yield s


def notes(n: int) -> list[dict]:
    return [
        {"pitch": 60 + i % 12, "velocity": 80, "program": 0, "channel": 0, "beat": i / 2, "duration_beats": 0.5}
        for i in range(n)
    ]


def test_every_route_of_the_openapi_schema_but_healthz_needs_the_key(guarded):
    schema = httpx.get(f"{guarded.http}/openapi.json").json()
    operations = [(m, p) for p, ops in schema["paths"].items() for m in ops]
    assert len(operations) >= 8
    for method, path in operations:
        url = guarded.http + path.replace("{session_id}", "abc")
        status = httpx.request(method, url, json={}).status_code
        assert status == (200 if path == "/healthz" else 401), (method, path, status)
        wrong = httpx.request(method, url, json={}, headers={"Authorization": "Bearer open-sesame!"})
        assert wrong.status_code == (200 if path == "/healthz" else 401), (method, path)


def test_the_key_is_compared_in_constant_time():
    tree = ast.parse(inspect.getsource(server.auth))
    calls = [n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    equality = [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in n.ops)
    ]  # fmt: skip
    assert "compare_digest" in calls and not equality  # `==` on strings stops at the first difference


def test_a_prompt_of_too_many_notes_is_refused_on_the_stream_and_in_rest(guarded):
    async def main():
        async with connect(guarded, additional_headers=AUTH) as ws:
            s = Stream(ws)
            await s.send(type="start", prompt=notes(400))
            refused = await s.expect("error")
            await s.send(type="start", prompt=notes(20))
            return refused, await s.expect("ready")

    refused, ready = asyncio.run(main())
    assert refused["code"] == "prompt_too_large" and "max_prompt_tokens 300" in refused["message"]
    assert ready["session"]
    r = httpx.post(f"{guarded.http}/v1/generate", json={"prompt": notes(400)}, headers=AUTH, timeout=30)
    assert r.status_code == 413 and r.json()["code"] == "prompt_too_large"


def test_a_clip_of_too_many_tokens_is_refused(guarded):
    r = httpx.post(f"{guarded.http}/v1/generate", json={"length_tokens": 101}, headers=AUTH, timeout=30)
    assert r.status_code == 422
    assert r.json() == {"code": "clip_too_long", "message": "length_tokens 101 is over max_clip_tokens 100"}


def test_a_notes_message_of_more_than_1024_events_is_refused(guarded):
    async def main():
        async with connect(guarded, additional_headers=AUTH) as ws:
            s = Stream(ws)
            await s.send(type="start", realtime=False)
            await s.expect("ready")
            await s.send(type="notes", events=notes(1025))
            return await s.expect("error")

    refused = asyncio.run(main())
    assert refused["code"] == "invalid_field" and "events" in refused["message"]


def test_a_snapshot_body_over_the_limit_is_refused_before_it_is_read(guarded):
    huge = b"SM1SNAP\x00" + bytes(2_000_000)
    headers = AUTH | {"Content-Type": "application/octet-stream"}
    r = httpx.post(f"{guarded.http}/v1/sessions", content=huge, headers=headers, timeout=30)
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    assert guarded.health()["sessions"] == 0


def raw_get(port: int, path: str) -> tuple[int, str]:
    """GET with the path sent byte for byte (HTTP clients remove dot segments before sending)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n".encode()
        )
        reply = b"".join(iter(lambda: sock.recv(65536), b"")).decode(errors="replace")
    return int(reply.split()[1]), reply


@pytest.mark.parametrize(
    "path",
    [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "/static/../../server/settings.py",
        "/settings.py",
        "/v1/sessions/..%2f..%2fetc%2fpasswd/snapshot",
    ],
)
def test_no_request_path_reaches_a_file_outside_the_browser_page(guarded, path):
    status, body = raw_get(guarded.port, path)
    assert status == 404
    assert "root:" not in body and "BaseSettings" not in body


def test_an_uploaded_file_name_is_only_ever_quoted(guarded):
    name = "../../../../tmp/sm1-upload-test.mid"
    r = httpx.post(
        f"{guarded.http}/v1/generate", files={"prompt": (name, b"MThd junk", "audio/midi")}, headers=AUTH, timeout=30
    )
    assert r.status_code == 422 and name in r.json()["message"]
    assert not Path("/tmp/sm1-upload-test.mid").exists()


def test_a_base64_prompt_is_decoded_in_memory_not_opened_as_a_path(guarded):
    r = httpx.post(f"{guarded.http}/v1/generate", json={"prompt": "/etc/passwd"}, headers=AUTH, timeout=30)
    assert r.status_code == 422 and r.json()["code"] == "bad_prompt" and "root:" not in r.text
    as_b64 = base64.b64encode(b"/etc/passwd").decode()
    r = httpx.post(f"{guarded.http}/v1/generate", content=json.dumps({"prompt": as_b64}), headers=AUTH, timeout=30)
    assert r.status_code == 422 and r.json()["code"] == "bad_prompt"
