"""Sessions as the server sees them: an engine session plus pacing, an outbox, an owner and an id.

* `EngineWorker`: the one thread that touches the engine (ticks, admits, snapshots, param changes are
  serialized without locks; the event loop keeps serving sockets meanwhile).
* `Outbox`: a session's frames on their way to its client, drained by the connection's own sender task.
  The tick loop stops giving a session tokens while its outbox is full, so a slow client only ever slows
  itself.
* `SessionHub`: creates, restores, forks, finds and frees sessions; frees the ones nobody streams after
  the idle timeout; drains streams on shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from server.errors import (
    ApiError,
    BadSnapshot,
    ModelFailed,
    ServerFull,
    SessionBusy,
    ShuttingDown,
    UnknownSession,
)
from server.metrics import Metrics
from server.prompts import prompt_events, prompt_tokens
from server.protocol import CloseCode, ErrorCode, SessionInfo, StreamOptions, events_frame, ready_frame
from server.settings import Settings
from sm1.engine import ClipLength, Engine, EngineFull, EngineSession, Generated, SnapshotError
from sm1.events import NoteEvent
from sm1.pacing import Pacing
from sm1.sampling import SamplingParams

log = logging.getLogger("sm1.server")

Owner = Literal["stream", "rest", "clip"]


class EngineWorker:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sm1-engine")

    async def call(self, fn: Callable[..., Any], *args: Any, on_orphan: Callable[[Any], Any] | None = None) -> Any:
        """Run `fn(*args)` on the engine thread. A job cannot be stopped once it runs: if the caller is
        cancelled meanwhile (a client left), `on_orphan(result)` undoes it there (e.g. frees the slot)."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if on_orphan is not None:
                future.add_done_callback(lambda f: f.cancelled() or f.exception() or self.submit(on_orphan, f.result()))
            raise

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the engine thread without waiting for it."""
        self._executor.submit(fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class Outgoing:
    payload: dict[str, Any]
    deadlines: list[float] | None = None  # when each note should have left (for the lateness metric)


@dataclass
class Closing:
    code: int
    reason: str


class Outbox:
    def __init__(self, limit: int, on_room: Callable[[], None]) -> None:
        self.queue: asyncio.Queue[Outgoing | Closing] = asyncio.Queue()
        self.limit = limit
        self._on_room = on_room

    @property
    def full(self) -> bool:
        return self.queue.qsize() >= self.limit

    def put(self, payload: dict[str, Any]) -> None:
        self.queue.put_nowait(Outgoing(payload))

    def push(self, item: Outgoing) -> None:
        self.queue.put_nowait(item)

    def close(self, code: int, reason: str) -> None:
        self.queue.put_nowait(Closing(code, reason))

    async def get(self) -> Outgoing | Closing:
        item = await self.queue.get()
        if self.queue.qsize() == self.limit - 1:
            self._on_room()  # it was full: its session may have tokens again
        return item


class Attachable(Protocol):
    """A connection streaming a session (stream.StreamConnection)."""

    outbox: Outbox
    task: asyncio.Task | None
    sending_since: float | None  # a send in progress began then

    def end(self, reason: str, code: int) -> None: ...

    def drop_slow(self) -> None: ...

    def fail(self, close_code: int, code: str, message: str) -> None: ...


@dataclass
class ClipJob:
    length: ClipLength
    done: asyncio.Future[list[NoteEvent]]
    events: list[NoteEvent] = field(default_factory=list)


@dataclass(eq=False)
class LiveSession:
    id: str
    es: EngineSession
    pacing: Pacing
    owner: Owner
    connection: Attachable | None = None
    clip: ClipJob | None = None
    backlog: list[Outgoing] = field(default_factory=list)  # frames made while no one was attached
    last_seen: float = field(default_factory=time.monotonic)
    released: bool = False
    prefilled: asyncio.Event = field(default_factory=asyncio.Event)
    failure: str | None = None  # why the model could not read its prompt (set with `prefilled`)

    @property
    def outbox(self) -> Outbox | None:
        return self.connection.outbox if self.connection is not None else None

    def wants_tokens(self, now: float) -> bool:
        if self.released:
            return False
        if self.clip is not None:
            return not self.clip.done.done()
        outbox = self.outbox
        return outbox is not None and not outbox.full and self.pacing.wants_tokens(self.es.beat, now)

    def seconds_until_wanted(self, now: float) -> float | None:
        outbox = self.outbox
        if self.clip is not None or outbox is None or outbox.full:
            return None
        return self.pacing.seconds_until_wanted(self.es.beat, now)

    def deliver(self, g: Generated) -> None:
        """Hand what one tick made to the clip or to the client."""
        if self.clip is not None:
            self.clip.events += [e for e in g.events if self.clip.length.keep(self.es, e)]
            if self.clip.length.done(self.es) and not self.clip.done.done():
                self.clip.done.set_result(self.clip.events)
            return
        if not g.events:
            return
        deadlines = [self.pacing.deadline(e.beat) for e in g.events] if self.pacing.realtime else None
        item = Outgoing(events_frame(g.seq, g.index, g.events), deadlines)
        if self.outbox is not None:
            self.outbox.push(item)
        else:
            self.backlog.append(item)


class SessionHub:
    def __init__(
        self,
        worker: EngineWorker,
        model_name: str,
        settings: Settings,
        metrics: Metrics,
        wake: Callable[[], None],
        id_prefix: str = "",
    ) -> None:
        """`id_prefix`: starts every session id (a worker of several: which one holds the session)."""
        self.worker, self.engine = worker, worker.engine
        self.id_prefix = id_prefix
        self.model_name, self.settings, self.metrics, self.wake = model_name, settings, metrics, wake
        self.sessions: dict[str, LiveSession] = {}
        self.connections: set[Attachable] = set()  # for the drain on shutdown
        self.prefilling: set[LiveSession] = set()  # waiting for their prompt to be read
        self.accepting = True
        self._admitting = 0

    # ---- finding --------------------------------------------------------------------------------------
    def get(self, session_id: str) -> LiveSession:
        ls = self.sessions.get(session_id)
        if ls is None:
            raise UnknownSession(f"no session {session_id!r} (it may have ended, expired or been deleted)")
        ls.last_seen = time.monotonic()
        return ls

    def info(self, ls: LiveSession) -> SessionInfo:
        es = ls.es
        return SessionInfo(
            session=ls.id,
            model=self.model_name,
            state_bytes=self.engine.state_bytes,
            vocab_size=self.engine.tokenizer.vocab_size,
            beat=ls.pacing.position(time.monotonic()),
            token_index=es.token_index,
            seed=es.params.seed,
            params=es.params,
            tempo_bpm=ls.pacing.tempo_bpm,
            lookahead_beats=ls.pacing.lookahead_beats,
            realtime=ls.pacing.realtime,
        )

    # ---- creating -------------------------------------------------------------------------------------
    async def create(self, options: StreamOptions, owner: Owner) -> LiveSession:
        async with self._admission():
            events = await asyncio.to_thread(prompt_events, options.prompt, self.settings)
            tokens = await asyncio.to_thread(prompt_tokens, events, self.engine.tokenizer, self.settings)
            params = options.params or SamplingParams()
            es = await self.worker.call(self.engine.admit, tokens, params, on_orphan=self.engine.release)
        pacing = Pacing(
            tempo_bpm=options.tempo_bpm or self.settings.default_tempo_bpm,
            lookahead_beats=options.lookahead_beats or self.settings.default_lookahead_beats,
            realtime=True if options.realtime is None else options.realtime,
            lead_s=self.settings.pacing_lead_s,
        )
        pacing.anchor(es.start_beat, time.monotonic())
        return await self._prefilled(self._register(es, pacing, owner))

    async def restore(self, blob: bytes) -> LiveSession:
        async with self._admission():
            try:
                es, extra = await self.worker.call(
                    self.engine.restore, blob, on_orphan=lambda restored: self.engine.release(restored[0])
                )
            except SnapshotError as e:
                raise BadSnapshot(str(e)) from e
        return await self._prefilled(self._register(es, self._pacing_from(extra.get("pacing"), es), "rest"))

    async def fork(self, parent: LiveSession, seed: int | None) -> LiveSession:
        async with self._admission():
            es = await self.worker.call(self.engine.fork, parent.es, seed, on_orphan=self.engine.release)
        now = time.monotonic()
        pacing = dataclasses.replace(parent.pacing)
        pacing.anchor(parent.pacing.position(now), now)
        return await self._prefilled(self._register(es, pacing, "rest"))

    async def generate(self, tokens: list[int] | None, params: SamplingParams, length: ClipLength) -> LiveSession:
        """A clip, generated inside the ticks (batched with every stream); await `ls.clip.done`."""
        async with self._admission():
            es = await self.worker.call(self.engine.admit, tokens, params, on_orphan=self.engine.release)
        ls = self._register(es, Pacing(realtime=False), "clip")
        ls.clip = ClipJob(length, asyncio.get_running_loop().create_future())
        self.wake()
        return ls

    def _admission(self) -> _Admission:
        if not self.accepting:
            raise ShuttingDown("the server is shutting down and takes no new sessions")
        if len(self.sessions) + self._admitting >= self.engine.capacity:
            self.metrics.errors.labels("server_full").inc()
            raise ServerFull(f"all {self.engine.capacity} session slots are in use; try again later")
        return _Admission(self)

    async def _prefilled(self, ls: LiveSession) -> LiveSession:
        """Wait until the model has read the session's prompt, so that its clock starts with notes to play
        (the ticks prefill it, a chunk at a time, between the other sessions' steps)."""
        if ls.es.pending:
            self.prefilling.add(ls)
            self.wake()
            try:
                await ls.prefilled.wait()
            except asyncio.CancelledError:  # the client left meanwhile
                if self._forget(ls):
                    self.worker.submit(self.engine.release, ls.es)
                raise
            if ls.failure is not None:
                raise ModelFailed(ls.failure)
        return ls

    def prefill_done(self) -> None:
        """After a tick: let the sessions whose prompt is read go on."""
        for ls in [ls for ls in self.prefilling if not ls.es.pending]:
            self.prefilling.discard(ls)
            ls.prefilled.set()

    def _register(self, es: EngineSession, pacing: Pacing, owner: Owner) -> LiveSession:
        """Its clock stands still until a connection attaches (a REST session may wait minutes for one)."""
        pacing.pause(time.monotonic())
        ls = LiveSession(id=self.id_prefix + secrets.token_urlsafe(12), es=es, pacing=pacing, owner=owner)
        self.sessions[ls.id] = ls
        self.metrics.sessions.set(len(self.sessions))
        return ls

    def _pacing_from(self, d: Any, es: EngineSession) -> Pacing:
        lead = self.settings.pacing_lead_s
        pacing = Pacing(self.settings.default_tempo_bpm, self.settings.default_lookahead_beats, lead_s=lead)
        beat = es.beat
        if isinstance(d, dict):
            try:
                pacing = Pacing(float(d["tempo_bpm"]), float(d["lookahead_beats"]), bool(d["realtime"]), lead)
                beat = float(d["beat"])
            except (KeyError, TypeError, ValueError):
                log.warning("snapshot pacing is unreadable; using the defaults")
        pacing.anchor(beat, time.monotonic())
        return pacing

    # ---- streaming ------------------------------------------------------------------------------------
    def check_attachable(self, ls: LiveSession) -> None:
        if ls.connection is not None:
            raise SessionBusy(f"session {ls.id} is streaming to another connection")
        if ls.clip is not None:
            raise UnknownSession(f"session {ls.id} is a clip being generated, not a stream")

    def attach(self, ls: LiveSession, conn: Attachable) -> None:
        """Start streaming `ls` to `conn`: `ready` first, then anything made while no one listened."""
        self.check_attachable(ls)
        ls.connection = conn
        ls.pacing.resume(time.monotonic())
        conn.outbox.put(ready_frame(self.info(ls)))
        for item in ls.backlog:
            conn.outbox.push(item)
        ls.backlog.clear()
        self.wake()

    async def detach(self, ls: LiveSession) -> None:
        """The connection ended: a stream's own session ends with it, a REST session waits for the next."""
        ls.connection = None
        ls.last_seen = time.monotonic()
        if ls.owner == "stream":
            await self.release(ls)
        else:
            ls.pacing.pause(ls.last_seen)

    async def snapshot(self, ls: LiveSession) -> tuple[bytes, int]:
        """The snapshot and the token index it was taken at (both read on the engine thread, together)."""
        extra = {"pacing": ls.pacing.to_dict(time.monotonic())}
        return await self.worker.call(lambda: (self.engine.snapshot(ls.es, extra), ls.es.token_index))

    # ---- ending ---------------------------------------------------------------------------------------
    async def release(self, ls: LiveSession) -> None:
        if self._forget(ls):
            await self.worker.call(self.engine.release, ls.es)

    def _forget(self, ls: LiveSession) -> bool:
        """Take `ls` out of the hub (its slot is freed next); False if it was already."""
        if ls.released:
            return False
        ls.released = True
        self.sessions.pop(ls.id, None)
        self.prefilling.discard(ls)
        self.metrics.sessions.set(len(self.sessions))
        return True

    async def fail(self, failed: list[LiveSession], message: str) -> None:
        """A tick failed: its streams get an `error` and close 1011, its clips fail, a request waiting for its
        prompt to be read fails; their slots are freed."""
        for ls in failed:
            if ls in self.prefilling:
                ls.failure = message
                ls.prefilled.set()
            if ls.clip is not None and not ls.clip.done.done():
                ls.clip.done.set_exception(ApiError(message))
            elif ls.connection is not None:
                ls.connection.fail(CloseCode.INTERNAL, ErrorCode.INTERNAL, message)
            await self.release(ls)

    async def delete(self, ls: LiveSession) -> None:
        if ls.connection is not None:
            ls.connection.end("deleted", 1000)
        await self.release(ls)

    async def reap_idle(self) -> None:
        """Free sessions that nobody has streamed or touched for idle_timeout_s."""
        timeout = self.settings.idle_timeout_s
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            now = time.monotonic()
            for ls in list(self.sessions.values()):
                if ls.connection is None and ls.clip is None and now - ls.last_seen > timeout:
                    log.info("session %s: idle for %.0f s, freed", ls.id, now - ls.last_seen)
                    await self.release(ls)

    async def watch_sends(self) -> None:
        """Drop the clients whose send has been blocked for send_timeout_s: a client that reads nothing only
        ever stops its own stream."""
        timeout = self.settings.send_timeout_s
        while True:
            await asyncio.sleep(min(timeout / 4, 1.0))
            now = time.monotonic()
            for conn in list(self.connections):
                since = conn.sending_since
                if since is not None and now - since > timeout:
                    conn.drop_slow()

    async def drain(self, grace_s: float) -> None:
        """Shutdown: admit nothing more; every stream gets `end` and a 1001 close."""
        self.accepting = False
        conns = list(self.connections)
        for conn in conns:
            conn.end("server shutting down", 1001)
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        log.info("drained %d stream(s)", len(conns))


class _Admission:
    """Counts an admission in flight (so two at once cannot both take the last slot)."""

    def __init__(self, hub: SessionHub) -> None:
        self.hub = hub

    async def __aenter__(self) -> None:
        self.hub._admitting += 1

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.hub._admitting -= 1
        if isinstance(exc, EngineFull):
            raise ServerFull(str(exc)) from exc
        if isinstance(exc, torch.OutOfMemoryError):  # the device has no room for one more: like a full pool
            log.warning("admission failed: %s", exc)
            raise ServerFull("the device is out of memory; try again later") from exc
