"""A /v1/stream session that survives dropped connections (docs/protocol.md).

The client asks for a snapshot every few seconds. When the connection drops it reconnects with backoff and
attaches to its session again; where the server no longer has it (the stream ended with the connection,
the server restarted, another replica answers) it restores the latest snapshot through POST /v1/sessions
and attaches to that. The restored session writes again what came after the snapshot (same state, same
random generator): frames up to the last token index already received are skipped, so the listener
hears every note once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from sm1.events import NoteEvent

log = logging.getLogger("sm1.client")

MAX_FRAME = 64 << 20  # a snapshot of a large model is several MB of base64
# close codes (RFC 6455) after which trying again cannot help
# `error` codes of a failed start that may pass: the old connection is not yet seen gone, no free slot, a drain
RETRY_LATER = {"session_busy", "server_full", "shutting_down"}
FINAL_CLOSES = {1000: "the server ended the session", 1008: "refused by policy", 1009: "a message was too large"}


class StreamRefused(Exception):
    """The server refused the stream (bad prompt, bad key, ...): retrying would not help."""


@dataclass
class Backoff:
    """Waits between reconnection attempts: first, doubling up to `most`, with +-20% jitter so that many
    clients dropped at once do not all come back in the same instant."""

    first: float = 0.25
    most: float = 8.0
    attempts: int | None = None  # None: keep trying

    def delay(self, attempt: int) -> float:
        return min(self.most, self.first * 2**attempt) * random.uniform(0.8, 1.2)


def base_urls(server: str) -> tuple[str, str]:
    """(http base, WebSocket url of /v1/stream) from what a user types: host:port, http://..., ws://..."""
    server = server.rstrip("/")
    if "://" not in server:
        server = f"http://{server}"
    scheme, rest = server.split("://", 1)
    rest = rest.removesuffix("/v1/stream")
    secure = scheme in ("https", "wss")
    return f"{'https' if secure else 'http'}://{rest}", f"{'wss' if secure else 'ws'}://{rest}/v1/stream"


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def error_line(body: dict[str, Any] | str) -> str:
    """One line for a person from an `error` frame or a REST error body."""
    if isinstance(body, dict):
        return f"{body.get('message') or body.get('detail') or body} ({body.get('code', 'error')})"
    return body


class StreamClient:
    """Streams one session from `server`, calling `on_events(events)` with each note exactly once.

    start: the fields of the first `start` message (prompt, params, tempo_bpm, lookahead_beats, realtime).
    on_ready(frame, resumed): after every `ready` (resumed: a reconnection, not the first start).
    position: the listener's playback position in beats, reported as `clock` every `clock_every_s` and
      after every reconnection (None: the server paces by its own clock).
    on_status(line): what a person should know (connected, lost, retrying, errors the server sent).
    """

    def __init__(
        self,
        server: str,
        start: dict[str, Any],
        on_events: Callable[[list[NoteEvent]], None],
        *,
        on_ready: Callable[[dict[str, Any], bool], None] | None = None,
        on_status: Callable[[str], None] = log.info,
        position: Callable[[], tuple[float, float]] | None = None,
        api_key: str | None = None,
        backoff: Backoff | None = None,
        snapshot_every_s: float = 2.0,
        clock_every_s: float = 0.5,
    ) -> None:
        self.http_url, self.ws_url = base_urls(server)
        self.start_fields = {k: v for k, v in start.items() if v is not None}
        self.on_events, self.on_ready, self.on_status = on_events, on_ready, on_status
        self.position = position
        self.headers = auth_headers(api_key)
        self.backoff = backoff or Backoff()
        self.snapshot_every_s, self.clock_every_s = snapshot_every_s, clock_every_s
        self.session: str | None = None
        self.snapshot: str | None = None  # base64, the latest the server sent
        self.last_index = -1  # token index of the last events frame delivered
        self.reconnects = 0
        self._restored_ids: set[str] = set()  # sessions made over REST: they outlive the connection
        self._ws: ClientConnection | None = None
        self._stopping = asyncio.Event()

    # ---- what the application sends ------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> bool:
        """Send a message if connected (params, notes, clock, pause, ...); False if it could not go."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.send(json.dumps(message))
            return True
        except ConnectionClosed:
            return False

    async def stop(self) -> None:
        """End the stream: `stop`, then the server's `end` and close (run() then returns)."""
        self._stopping.set()
        await self.send({"type": "stop"})

    # ---- the connection -------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Stream until stop() or a refusal (StreamRefused); reconnect whenever the connection drops."""
        attempt = 0
        try:
            while not self._stopping.is_set():
                try:
                    await self._connect_and_stream()
                    return
                except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake, httpx.TransportError) as e:
                    if self._stopping.is_set():
                        return
                    if self.backoff.attempts is not None and attempt >= self.backoff.attempts:
                        raise StreamRefused(f"cannot reach {self.ws_url} after {attempt} attempts: {_why(e)}") from e
                    delay = self.backoff.delay(attempt)
                    self.on_status(f"connection lost ({_why(e)}); retrying in {delay:.1f} s")
                    attempt += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
                    continue
                finally:
                    self._ws = None
        finally:
            await self._forget_restored()

    async def _connect_and_stream(self) -> None:
        async with connect(
            self.ws_url, additional_headers=self.headers, max_size=MAX_FRAME, open_timeout=5, close_timeout=2
        ) as ws:
            ready = await self._start(ws)
            self._ws = ws
            resumed = self.reconnects > 0
            self.reconnects += 1
            self.on_status(
                f"{'resumed' if resumed else 'streaming'} session {self.session} "
                f"(model {ready.get('model')}, from token {ready.get('token_index')})"
            )
            if self.on_ready is not None:
                self.on_ready(ready, resumed)
            await self._report_clock(ws)
            chores = asyncio.create_task(self._chores(ws))
            try:
                await self._receive(ws)
            finally:
                chores.cancel()
                await asyncio.gather(chores, return_exceptions=True)

    async def _start(self, ws: ClientConnection) -> dict[str, Any]:
        """Start the session, or attach to it again, or restore it from its snapshot; the `ready` frame."""
        try:
            if self.session is None:
                return await self._request_start(ws, {"type": "start", **self.start_fields})
            try:
                return await self._request_start(ws, {"type": "start", "session": self.session})
            except _StartFailed as e:
                if e.code != "unknown_session":
                    raise
            if self.snapshot is None:
                self.on_status(f"session {self.session} is gone and no snapshot was taken yet: starting afresh")
                self.last_index = -1
                return await self._request_start(ws, {"type": "start", **self.start_fields})
            self.session = await self._restore(self.snapshot)
            return await self._request_start(ws, {"type": "start", "session": self.session})
        except _StartFailed as e:
            if e.code in RETRY_LATER:
                raise ConnectionError(e.line) from e
            raise StreamRefused(e.line) from e

    async def _request_start(self, ws: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
        await ws.send(json.dumps(message))
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("type") == "ready":
                self.session = frame["session"]
                return frame
            if frame.get("type") == "error":
                raise _StartFailed(frame)
            if frame.get("type") == "events":  # a backlog can only follow `ready`; be lenient anyway
                self._deliver(frame)

    async def _restore(self, snapshot: str) -> str:
        async with httpx.AsyncClient(base_url=self.http_url, headers=self.headers, timeout=10.0) as http:
            r = await http.post("/v1/sessions", json={"snapshot": snapshot})
        if r.status_code == 503:
            raise ConnectionError(f"the server cannot take the session now: {error_line(_json(r))}")
        if r.status_code != 201:
            raise StreamRefused(f"restoring the snapshot failed: {error_line(_json(r))}")
        session = r.json()["session"]
        self._restored_ids.add(session)
        return session

    async def _forget_restored(self) -> None:
        """Sessions restored over REST live on after their connection ends: delete them on the way out."""
        if not self._restored_ids:
            return
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(base_url=self.http_url, headers=self.headers, timeout=2.0) as http:
                for sid in self._restored_ids:
                    await http.delete(f"/v1/sessions/{sid}")
        self._restored_ids.clear()

    async def _receive(self, ws: ClientConnection) -> None:
        try:
            async for text in ws:
                frame = json.loads(text)
                kind = frame.get("type")
                if kind == "events":
                    self._deliver(frame)
                elif kind == "snapshot":
                    self.snapshot = frame["data"]
                elif kind == "error":
                    self.on_status(f"server: {error_line(frame)}")
                elif kind == "end":
                    self.on_status(f"stream ended: {frame.get('reason', '')}")
        except ConnectionClosed:
            pass
        code, reason = ws.close_code, ws.close_reason or ""
        if self._stopping.is_set():
            return
        if code in FINAL_CLOSES:
            raise StreamRefused(f"{FINAL_CLOSES[code]} (close {code}{': ' + reason if reason else ''})")
        raise ConnectionError(f"closed with code {code}{': ' + reason if reason else ''}")

    def _deliver(self, frame: dict[str, Any]) -> None:
        index = frame.get("token_index", -1)
        if index <= self.last_index:
            return  # written again by a restored session: already played
        self.last_index = index
        self.on_events([NoteEvent.from_json(e) for e in frame["events"]])

    async def _chores(self, ws: ClientConnection) -> None:
        """Clock reports and snapshots, on their own schedules."""
        loop = asyncio.get_running_loop()
        next_snapshot = loop.time()
        while True:
            await asyncio.sleep(self.clock_every_s)
            await self._report_clock(ws)
            if self.snapshot_every_s > 0 and loop.time() >= next_snapshot:
                next_snapshot = loop.time() + self.snapshot_every_s
                await ws.send(json.dumps({"type": "snapshot"}))

    async def _report_clock(self, ws: ClientConnection) -> None:
        if self.position is not None:
            beat, tempo = self.position()
            await ws.send(json.dumps({"type": "clock", "beat": max(0.0, beat), "tempo_bpm": tempo}))


class _StartFailed(Exception):
    def __init__(self, frame: dict[str, Any]) -> None:
        self.code = frame.get("code", "")
        self.line = error_line(frame)
        super().__init__(self.line)


def _json(r: httpx.Response) -> dict[str, Any] | str:
    try:
        return r.json()
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:200]}"


def _why(e: BaseException) -> str:
    if isinstance(e, InvalidStatus):
        return f"HTTP {e.response.status_code}"
    return str(e) or type(e).__name__
