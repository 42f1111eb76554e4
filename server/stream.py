"""WebSocket /v1/stream: one connection streams at most one session.

Two tasks per connection: the receive loop reads client messages in order and acts on them; the sender
drains the connection's outbox (events from the tick loop, replies, errors, the close). The tick loop
never waits for a socket: when a client stops reading, its outbox fills, its session stops getting tokens,
and after send_timeout_s without progress the connection is dropped and its slot freed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import websockets
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from server.errors import ApiError, ServerFull, ShuttingDown
from server.protocol import (
    MESSAGE_TYPES,
    ClockMessage,
    CloseCode,
    ErrorCode,
    NotesMessage,
    ParamsMessage,
    StartMessage,
    client_message,
    describe_errors,
    end_frame,
    error_frame,
    snapshot_frame,
)
from server.sessions import Closing, LiveSession, Outbox

if TYPE_CHECKING:
    from server.runtime import Runtime

log = logging.getLogger("sm1.server")


class RateLimit:
    """Token bucket: `rate` messages a second on average, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.last = float(burst), time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class StreamConnection:
    def __init__(self, ws: WebSocket, rt: Runtime) -> None:
        self.ws, self.rt = ws, rt
        self.hub, self.settings, self.metrics = rt.hub, rt.settings, rt.metrics
        self.outbox = Outbox(self.settings.queue_frames, on_room=rt.tick.wake)
        self.rate = RateLimit(self.settings.max_messages_per_s, self.settings.message_burst)
        self.session: LiveSession | None = None
        self.task: asyncio.Task | None = None
        self.sending_since: float | None = None  # when the send in progress began (SessionHub.watch_sends)
        self._sender: asyncio.Task | None = None
        self._slow = False
        self.closing = False
        self.client_gone = False
        self.relay_to: tuple[int, str] | None = None  # (worker, start frame): another worker holds the session
        client = ws.client
        self.peer = f"{client.host}:{client.port}" if client else "?"

    async def serve(self) -> None:
        self.task = asyncio.current_task()
        self.hub.connections.add(self)
        self.metrics.connections.inc()
        sender = self._sender = asyncio.create_task(self._send_loop())
        receiver = asyncio.create_task(self._receive_loop())
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if self.relay_to is not None:
                sender.cancel()
                await self._relay(*self.relay_to)
            elif receiver in done and not self.client_gone:
                await asyncio.wait({sender}, timeout=self.settings.send_timeout_s)  # flush, then the close
        finally:
            for t in (sender, receiver):
                t.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            self.hub.connections.discard(self)
            self.metrics.connections.dec()
            if self.session is not None:
                if self.client_gone:
                    what = "freed" if self.session.owner == "stream" else "kept for the next connection"
                    log.info("stream %s session %s: connection lost without 'stop'; session %s",
                             self.peer, self.session.id, what)  # fmt: skip
                await self.hub.detach(self.session)

    # ---- ending ---------------------------------------------------------------------------------------
    def end(self, reason: str, code: int) -> None:
        """An `end` frame, then the close (stop, the session deleted, shutdown)."""
        if self.closing:
            return
        self._stop_streaming()
        self.outbox.put(end_frame(reason))
        self.outbox.close(code, reason)

    def fail(self, close_code: int, code: str, message: str) -> None:
        """An `error` frame, then the close (a policy the client broke, or no room)."""
        if self.closing:
            return
        self.error(code, message)
        self._stop_streaming()
        self.outbox.close(close_code, message[:120])  # a close reason must fit in 123 bytes

    def _stop_streaming(self) -> None:
        self.closing = True
        if self.session is not None:
            self.session.connection = None  # nothing more is queued behind the close

    def error(self, code: str, message: str) -> None:
        sid = self.session.id if self.session else "-"
        log.warning("stream %s session %s: %s: %s", self.peer, sid, code, message)
        self.metrics.errors.labels(code).inc()
        self.outbox.put(error_frame(code, message))

    # ---- sending --------------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        try:
            while True:
                item = await self.outbox.get()
                if isinstance(item, Closing):
                    await self._timed(self.ws.close(item.code, item.reason))
                    return
                await self._timed(self.ws.send_text(json.dumps(item.payload, separators=(",", ":"))))
                if item.deadlines:
                    now = time.monotonic()
                    for deadline in item.deadlines:
                        self.metrics.late(now - deadline)
                    self.metrics.events.inc(len(item.deadlines))
        except asyncio.CancelledError:
            if not self._slow:
                raise
            sid = self.session.id if self.session else "-"
            timeout = self.settings.send_timeout_s
            log.warning("stream %s session %s: client read nothing for %g s: dropped", self.peer, sid, timeout)
            self.metrics.errors.labels("slow_client").inc()
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.client_gone = True

    async def _timed(self, send: Any) -> None:
        """A send, watched by SessionHub.watch_sends: one blocked for send_timeout_s drops the client (a
        timeout around every send, asyncio.wait_for, took 15% of the event loop's time under load)."""
        self.sending_since = time.monotonic()
        try:
            await send
        finally:
            self.sending_since = None

    def drop_slow(self) -> None:
        """A send has been blocked send_timeout_s: the client reads nothing. Its sender stops, and with it
        the connection (its session is freed as if it had gone)."""
        if self._sender is not None and not self._slow:
            self._slow = True
            self._sender.cancel()

    # ---- receiving ------------------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self.client_gone = not self.closing
                return
            if self.closing:
                continue
            text = message.get("text")
            if text is None:
                self.error(ErrorCode.BAD_FRAME, "binary frames are not part of the protocol: send JSON text")
            elif len(text) > self.settings.max_frame_bytes:
                limit = self.settings.max_frame_bytes
                self.fail(CloseCode.TOO_BIG, ErrorCode.FRAME_TOO_LARGE, f"frame over max_frame_bytes {limit}")
            elif not self.rate.allow():
                rate = self.settings.max_messages_per_s
                self.fail(CloseCode.POLICY, ErrorCode.TOO_MANY_MESSAGES, f"more than {rate:g} messages a second")
            else:
                await self._handle(text)
                if self.relay_to is not None:
                    return

    async def _handle(self, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError as e:
            return self.error(ErrorCode.BAD_JSON, f"not valid JSON: {e}")
        if not isinstance(data, dict):
            return self.error(ErrorCode.BAD_JSON, "a message must be a JSON object with a 'type' field")
        try:
            msg = client_message.validate_python(data)
        except ValidationError as e:
            return self.error(*_describe(e, data))  # the first loc of each error is the message type
        if msg.type != "start" and self.session is None:
            return self.error(ErrorCode.NOT_STARTED, f"send 'start' before '{msg.type}'")
        peers = self.rt.peers
        owner = peers.owner(msg.session) if peers and msg.type == "start" and msg.session else None
        if owner is not None and self.session is None:
            self.relay_to = (owner, text)  # serve() hands the connection over
            return
        try:
            await getattr(self, f"_on_{msg.type}")(msg)
        except ServerFull as e:
            self.fail(CloseCode.TRY_LATER, e.code, e.message)
        except ShuttingDown as e:
            self.error(e.code, e.message)
            self.end("server shutting down", CloseCode.GOING_AWAY)
        except ApiError as e:
            self.error(e.code, e.message)
        except ValidationError as e:
            self.error(ErrorCode.INVALID_FIELD, describe_errors(e))
        except Exception:
            log.exception("stream %s: %s failed", self.peer, msg.type)
            self.error(ErrorCode.INTERNAL, f"'{msg.type}' failed on the server (it logged why)")

    async def _relay(self, worker: int, start: str) -> None:
        """The session is another worker's: from here on this connection is a pipe to it (server/peers.py)."""
        assert self.rt.peers is not None
        log.info("stream %s: relayed to worker %d, which holds the session", self.peer, worker)
        self.metrics.connections.dec()  # the owner counts it: /metrics sums the workers
        try:
            await self.rt.peers.relay(self.ws, worker, start)
        except (OSError, websockets.exceptions.WebSocketException) as e:
            log.warning("stream %s: worker %d does not answer (%s)", self.peer, worker, e)
            message = "the worker that held this session is not running (its sessions are lost)"
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await self.ws.send_json(error_frame(ErrorCode.UNKNOWN_SESSION, message))
                await self.ws.close(CloseCode.INTERNAL, "session lost")
        finally:
            self.metrics.connections.inc()  # serve() takes it off again as the connection ends

    # ---- messages -------------------------------------------------------------------------------------
    async def _on_start(self, msg: StartMessage) -> None:
        if self.session is not None:
            return self.error(ErrorCode.ALREADY_STARTED, f"this connection already streams session {self.session.id}")
        if msg.session is None:
            ls = await self.hub.create(msg, owner="stream")
        else:
            if msg.prompt is not None:
                return self.error(ErrorCode.INVALID_FIELD, "give either 'session' or 'prompt', not both")
            ls = self.hub.get(msg.session)
            self.hub.check_attachable(ls)
            await self._apply_options(ls, msg)
        if self.closing:  # the client left or was closed while the session was being made
            if ls.owner == "stream":
                await self.hub.release(ls)
            return
        self.session = ls
        self.hub.attach(ls, self)
        log.info("stream %s: session %s started (%s)", self.peer, ls.id, "attached" if msg.session else "new")

    async def _apply_options(self, ls: LiveSession, msg: StartMessage) -> None:
        if msg.params is not None:
            await self.rt.worker.call(self.rt.engine.set_params, ls.es, msg.params, msg.params.seed is not None)
        if msg.tempo_bpm is not None:
            ls.pacing.set_tempo(msg.tempo_bpm, time.monotonic())
        if msg.lookahead_beats is not None:
            ls.pacing.lookahead_beats = msg.lookahead_beats
        if msg.realtime is not None:
            ls.pacing.realtime = msg.realtime

    async def _on_params(self, msg: ParamsMessage) -> None:
        ls, changes = self.session, msg.changes()
        params = ls.es.params.updated(changes)
        await self.rt.worker.call(self.rt.engine.set_params, ls.es, params, "seed" in changes)

    async def _on_notes(self, msg: NotesMessage) -> None:
        await self.rt.worker.call(self.rt.engine.feed_notes, self.session.es, msg.events)
        self.rt.tick.wake()

    async def _on_clock(self, msg: ClockMessage) -> None:
        now = time.monotonic()
        self.session.pacing.anchor(msg.beat, now)
        if msg.tempo_bpm is not None:
            self.session.pacing.set_tempo(msg.tempo_bpm, now)
        self.rt.tick.wake()

    async def _on_pause(self, msg: Any) -> None:
        self.session.pacing.pause(time.monotonic())

    async def _on_resume(self, msg: Any) -> None:
        self.session.pacing.resume(time.monotonic())
        self.rt.tick.wake()

    async def _on_reset(self, msg: Any) -> None:
        ls = self.session
        await self.rt.worker.call(self.rt.engine.reset, ls.es)
        ls.pacing.anchor(ls.es.beat, time.monotonic())
        self.rt.tick.wake()

    async def _on_snapshot(self, msg: Any) -> None:
        ls = self.session
        blob, token_index = await self.hub.snapshot(ls)
        self.outbox.put(snapshot_frame(ls.id, base64.b64encode(blob).decode(), len(blob), token_index))

    async def _on_stop(self, msg: Any) -> None:
        self.end("stopped", CloseCode.NORMAL)


def _describe(e: ValidationError, data: dict[str, Any]) -> tuple[str, str]:
    """Error code and message for a message that did not validate."""
    kinds = {err["type"] for err in e.errors()}
    if "union_tag_not_found" in kinds:
        return ErrorCode.UNKNOWN_TYPE, f"a message needs a 'type' field, one of {', '.join(MESSAGE_TYPES)}"
    if "union_tag_invalid" in kinds:
        expected = ", ".join(MESSAGE_TYPES)
        return ErrorCode.UNKNOWN_TYPE, f"unknown message type {data.get('type')!r}; expected one of {expected}"
    return ErrorCode.INVALID_FIELD, describe_errors(e, skip=1)
