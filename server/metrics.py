"""What the server measures: Prometheus metrics (GET /metrics) and exact recent quantiles (GET /healthz).

Each app has its own registry, so several apps (tests) never share counters. Several workers (server/workers.py)
write theirs to files in PROMETHEUS_MULTIPROC_DIR, and any of them renders the sums: counters and histograms
add up, the gauges are the live workers' sum.
"""

from __future__ import annotations

import os
import time

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess


class Recent:
    """The last `n` timestamped samples of one quantity, for exact quantiles over a recent window (histograms
    only give buckets). A ring of two preallocated arrays, every page written at start: the server's memory
    does not creep up as the ring fills (a deque of tuples grew the RSS by tens of MB while it filled)."""

    def __init__(self, n: int = 200_000) -> None:
        self.times = np.full(n, -np.inf)  # monotonic seconds; -inf: never written
        self.values = np.full(n, np.nan)
        self._next = 0

    def add(self, x: float) -> None:
        i = self._next % len(self.times)
        self.times[i], self.values[i] = time.monotonic(), x
        self._next += 1

    def summary(self, window_s: float, scale: float = 1000.0) -> dict[str, float | int]:
        """n, p50, p99 and max (times `scale`: ms for seconds) of the samples of the last `window_s`."""
        xs = self.values[self.times >= time.monotonic() - window_s]
        if not len(xs):
            return {"n": 0}
        p50, p99, top = (float(v) * scale for v in (*np.quantile(xs, [0.5, 0.99]), xs.max()))
        return {"n": len(xs), "p50": round(p50, 3), "p99": round(p99, 3), "max": round(top, 3)}


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        live = "livesum"  # with several workers: the sum over the running ones
        self.sessions = Gauge("sm1_sessions", "Sessions holding a slot of the pool", registry=r, multiprocess_mode=live)
        self.connections = Gauge(
            "sm1_stream_connections", "Open WebSocket connections", registry=r, multiprocess_mode=live
        )
        self.tokens = Counter("sm1_tokens", "Tokens sampled", registry=r)
        self.tokens_per_second = Gauge(
            "sm1_tokens_per_second", "Tokens sampled over the last second", registry=r, multiprocess_mode=live
        )
        self.events = Counter("sm1_events", "Note events sent to clients", registry=r)
        self.tick_seconds = Histogram(
            "sm1_tick_seconds",
            "Time of one tick (prefill + batched step + sampling), seconds",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=r,
        )
        self.tick_batch = Histogram(
            "sm1_tick_batch_size",
            "Sessions in one batched step",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
            registry=r,
        )
        self.lateness = Histogram(
            "sm1_event_lateness_seconds",
            "How late a note left the server after its due time minus the lookahead (0 if on time)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.errors = Counter("sm1_errors", "Bad input and failures, by kind", ["kind"], registry=r)
        self.recent_ticks = Recent()
        self.recent_lateness = Recent()
        self._window_start, self._window_tokens = time.monotonic(), 0
        self.last_tokens_per_second = 0.0

    def tick(self, seconds: float, batch: int, tokens: int) -> None:
        self.tick_seconds.observe(seconds)
        self.recent_ticks.add(seconds)
        if batch:
            self.tick_batch.observe(batch)
        self.tokens.inc(tokens)
        self._window_tokens += tokens
        self._roll()

    def _roll(self) -> None:
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self.last_tokens_per_second = self._window_tokens / (now - self._window_start)
            self.tokens_per_second.set(self.last_tokens_per_second)
            self._window_start, self._window_tokens = now, 0

    def late(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.lateness.observe(seconds)
        self.recent_lateness.add(seconds)

    def render(self) -> bytes:
        self._roll()
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_worker)
        return generate_latest(every_worker)
