"""The tick loop: gather the sessions that want a token, run ONE engine tick for all of them on the engine
thread, hand each session what it got. It sleeps until the next session needs tokens (or a wake-up: a new
session, a clock report, an outbox with room again).

A tick also takes the streams that will want a token within `batch_window_s`: writing a token a few ms
early costs nothing (the lookahead is far longer), and it keeps the streams in step, so that they share one
batched step instead of each paying for its own small one. Without it, 64 streams drift apart into ticks of
a few sessions each, and the fixed cost of a step is paid many times over. And where the step pads the
batch anyway (the engine computes at least 16 rows on the CPU), the next streams due, within
FILL_WINDOWS x batch_window_s, take those rows: tokens written early, for nothing, and fewer ticks later."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from server.metrics import Metrics
from server.sessions import EngineWorker, LiveSession, SessionHub
from sm1.engine import PrefillError

log = logging.getLogger("sm1.server")

IDLE_WAIT_S = 0.25  # nothing to do: look again this often anyway
FILL_WINDOWS = 4  # rows the step pads anyway go to streams due within this many batch windows


class TickLoop:
    def __init__(self, worker: EngineWorker, metrics: Metrics, batch_window_s: float) -> None:
        self.worker, self.metrics, self.batch_window_s = worker, metrics, batch_window_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, hub: SessionHub) -> None:
        while True:
            try:
                await self._turn(hub)
            except Exception:  # a fault in the loop's own code must not stop every stream for good
                log.exception("tick loop failed; going on")
                self.metrics.errors.labels("tick_loop").inc()
                await asyncio.sleep(0.1)

    async def _turn(self, hub: SessionHub) -> None:
        """One tick, or one wait for the next session that wants tokens."""
        engine = self.worker.engine
        self._wake.clear()
        soon = time.monotonic() + self.batch_window_s
        live = list(hub.sessions.values())
        ready = [s for s in live if s.wants_tokens(soon)]
        if ready and (free := engine.free_rows(len(ready))):
            ready += self._next_due(live, ready, soon, free)
        if not ready and not engine.has_pending_input:
            waits = [w for s in live if (w := s.seconds_until_wanted(soon)) is not None]
            await self._sleep(min(waits, default=IDLE_WAIT_S))
            return
        t0 = time.perf_counter()
        try:
            generated = await self.worker.call(engine.tick, [s.es for s in ready])
        except PrefillError as e:  # before the step: only the sessions being read are lost
            log.exception("engine tick failed reading input: ending the %d session(s) being read", len(e.sessions))
            self.metrics.errors.labels("engine").inc()
            reading = [s for s in hub.sessions.values() if s.es in e.sessions]
            await hub.fail(reading, "the model failed while reading this session's input (the server logged why)")
            return
        except Exception:
            # a session's state after a half-run step is unknown: end the ones this tick served, keep the rest
            log.exception("engine tick failed: ending the %d session(s) it served", len(ready))
            self.metrics.errors.labels("engine").inc()
            await hub.fail(ready, "the model failed while generating for this session (the server logged why)")
            await asyncio.sleep(0.1)
            return
        self.metrics.tick(time.perf_counter() - t0, batch=len(generated), tokens=len(generated))
        by_engine_session = {s.es: s for s in ready}
        for g in generated:
            by_engine_session[g.session].deliver(g)
        hub.prefill_done()

    def _next_due(self, live: list[LiveSession], ready: list[LiveSession], now: float, n: int) -> list[LiveSession]:
        """Up to `n` streams not in `ready`, soonest due first, due within FILL_WINDOWS - 1 more windows."""
        horizon = (FILL_WINDOWS - 1) * self.batch_window_s
        taken = set(ready)
        due = [(w, i) for i, s in enumerate(live) if s not in taken and (w := s.seconds_until_wanted(now)) is not None]
        return [live[i] for w, i in sorted(due)[:n] if w <= horizon]

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=min(seconds, IDLE_WAIT_S))
