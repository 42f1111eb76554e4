"""Several worker processes behind one port: how a worker reaches the others.

With `workers` > 1 (server/workers.py), each worker is a whole server (engine, tick loop, sessions) on one
device, and the kernel spreads new connections over them (SO_REUSEPORT). A session lives in the worker that
made it, and its id says which (`w3.<token>`). A REST call for another worker's session is passed on to that
worker over its unix socket; a stream that attaches to one is relayed there frame by frame (the owner does
everything, so the protocol is the same whichever worker a client reaches). /healthz sums the workers and
/metrics is Prometheus's multiprocess collector.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from fastapi import Request, Response
from starlette.websockets import WebSocket

_SESSION_ID = r"w(\d+)\.[\w-]+"  # w<worker>.<token>
_SESSION_PATH = re.compile(rf"/v1/sessions/{_SESSION_ID}(?:/.*)?")
_HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive"}
_KEY_HEADERS = ("authorization", "x-api-key")


@dataclass
class Peers:
    """This worker's number, how many there are, and the folder that holds their unix sockets."""

    index: int
    count: int
    run_dir: Path
    _clients: dict[int, httpx.AsyncClient] = field(default_factory=dict)

    def socket_path(self, i: int) -> Path:
        return self.run_dir / f"w{i}.sock"

    @property
    def id_prefix(self) -> str:
        return f"w{self.index}."

    def owner(self, session_id: str) -> int | None:
        """The other worker that holds `session_id`; None: this one (or no worker: the lookup here says so)."""
        found = re.fullmatch(_SESSION_ID, session_id)
        return self._other(found and int(found.group(1)))

    def owner_of_path(self, path: str) -> int | None:
        """The other worker that holds the session a /v1/sessions/{id}... path names."""
        found = _SESSION_PATH.fullmatch(path)
        return self._other(found and int(found.group(1)))

    def _other(self, i: int | None) -> int | None:
        return i if i is not None and i != self.index and i < self.count else None

    def others(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    def client(self, i: int) -> httpx.AsyncClient:
        if i not in self._clients:
            transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path(i)))
            self._clients[i] = httpx.AsyncClient(transport=transport, base_url="http://sm1", timeout=60)
        return self._clients[i]

    async def forward(self, request: Request, i: int, body: bytes) -> Response:
        """`request` as worker `i` answers it."""
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}]
        url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        reply = await self.client(i).request(request.method, url, headers=headers, content=body)
        out = {k: v for k, v in reply.headers.items() if k.lower() not in _HOP_BY_HOP | {"content-encoding"}}
        out["X-SM1-Forwarded-By"] = str(self.index)
        return Response(reply.content, status_code=reply.status_code, headers=out)

    async def health(self, window_s: float) -> list[dict[str, Any]]:
        """Every other worker's own /healthz body (a worker that does not answer: status "unreachable")."""

        async def one(i: int) -> dict[str, Any]:
            try:
                reply = await self.client(i).get("/healthz", params={"window_s": window_s, "scope": "worker"})
                return reply.json()
            except (httpx.HTTPError, ValueError) as e:
                return {"worker": i, "status": "unreachable", "error": str(e)}

        return list(await asyncio.gather(*(one(i) for i in self.others())))

    async def relay(self, ws: WebSocket, i: int, first: str) -> None:
        """Pass a stream through to worker `i` (which holds its session): `first` (the `start` frame), then
        every frame both ways, then the owner's close code and reason."""
        headers = [(k, v) for k, v in ws.headers.items() if k.lower() in _KEY_HEADERS]
        uri = "ws://sm1/v1/stream" + (f"?{ws.url.query}" if ws.url.query else "")
        async with websockets.unix_connect(
            str(self.socket_path(i)), uri, additional_headers=headers, max_size=None, compression=None,
            ping_interval=None,
        ) as owner:  # fmt: skip
            await owner.send(first)

            async def down() -> None:
                async for frame in owner:
                    await (ws.send_text(frame) if isinstance(frame, str) else ws.send_bytes(frame))

            async def up() -> None:
                while (m := await ws.receive())["type"] != "websocket.disconnect":
                    await owner.send(m["text"] if m.get("text") is not None else m["bytes"])

            tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if tasks[0] in done:  # the owner closed: so does the client, the same way
            with contextlib.suppress(RuntimeError):  # the client had gone too
                await ws.close(owner.close_code or 1011, owner.close_reason or "")

    @staticmethod
    def combine(own: dict[str, Any], others: list[dict[str, Any]]) -> dict[str, Any]:
        """One /healthz body for the server: counts summed; of the quantiles, the largest worker's (an upper
        bound: no more than 1% of all ticks are slower than the slowest worker's p99); each worker's own."""
        bodies = [own, *others]
        up = [b for b in bodies if b.get("status") != "unreachable"]
        body = {k: v for k, v in own.items() if k not in ("worker", "pid")}
        for key in ("sessions", "capacity", "connections"):
            body[key] = sum(b[key] for b in up)
        body["tokens_per_second"] = round(sum(b["tokens_per_second"] for b in up), 1)
        for key in ("tick_ms", "lateness_ms"):
            parts = [b[key] for b in up if b[key].get("n")]
            body[key] = {"n": sum(p["n"] for p in parts)} | {
                q: max(p[q] for p in parts) for q in ("p50", "p99", "max") if parts
            }
        if any(b.get("status") != "ok" for b in bodies):
            body["status"] = "draining" if own.get("status") == "draining" else "degraded"
        body["workers"] = sorted(bodies, key=lambda b: b["worker"])
        return body

    async def close(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients.values()))
