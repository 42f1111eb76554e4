"""Churn: many connect / start / disconnect cycles against a real `sm1-server`; does anything leak?

Each cycle opens a WebSocket, starts a session, waits for `ready` and its first `events`, and leaves in one
of three ways, in turn: `stop` (a clean end), a plain close without `stop`, or an abrupt drop (the TCP
connection aborted, no close frame). `--concurrency` cycles run at once. Reports:

  rss_before/after_mb   server RSS after a warm-up and once every cycle has ended (must stay within 10%)
  sessions_after        sm1_sessions in /metrics at the end (must be 0: no slot leaks)
  unexpected_log_lines  server log lines at WARNING or above, and tracebacks (must be 0)

    nice python benchmarks/churn.py --cycles 10000 --out benchmarks/results/churn-cpu
    nice python benchmarks/churn.py --cycles 5000 --set workers=2 --out benchmarks/results/churn-cpu-workers2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import websockets
from serve_load import Server, add_set_flag

LEAVE = ("stop", "close", "abort")


async def cycle(ws_url: str, i: int) -> None:
    async with websockets.connect(ws_url, max_size=None, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "start", "params": {"seed": i}, "realtime": False}))
        while json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] != "events":
            pass
        how = LEAVE[i % len(LEAVE)]
        if how == "stop":
            await ws.send(json.dumps({"type": "stop"}))
            try:
                async for _ in ws:  # the rest of the events, `end`, then the server's close
                    pass
            except websockets.ConnectionClosed:
                pass
        elif how == "abort":
            ws.transport.abort()


async def churn(ws_url: str, start: int, cycles: int, concurrency: int) -> list[str]:
    """Run cycles start..start+cycles, `concurrency` at a time; the failures' reprs."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(start, start + cycles):
        queue.put_nowait(i)
    failures: list[str] = []

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            try:
                await cycle(ws_url, i)
            except (OSError, TimeoutError, websockets.WebSocketException) as e:
                failures.append(f"cycle {i}: {e!r}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


def sessions_now(http: str) -> float:
    text = httpx.get(f"{http}/metrics", timeout=30).text
    return float(re.search(r"^sm1_sessions (\S+)$", text, re.M).group(1))


def settle(server: Server, timeout: float = 30) -> float:
    """Wait for the server to free every slot (an aborted stream is noticed a moment later)."""
    deadline = time.monotonic() + timeout
    while (n := sessions_now(server.http)) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    return n


def unexpected_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback", line)]


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(args.set)
    server = Server(args.checkpoint, "cpu", args.concurrency + 8, out / "server.log", settings)
    try:
        failures = asyncio.run(churn(server.ws, 0, args.warmup, args.concurrency))
        settle(server)
        rss_before = server.rss_mb()
        t0 = time.monotonic()
        failures += asyncio.run(churn(server.ws, args.warmup, args.cycles, args.concurrency))
        seconds = time.monotonic() - t0
        sessions_after = settle(server)
        rss_after = server.rss_mb()
        log = server.log.read_text()
    finally:
        server.stop()
    unexpected = unexpected_lines(log)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus",
        "command": " ".join(sys.argv),
        "cycles": args.cycles,
        "warmup_cycles": args.warmup,
        "concurrency": args.concurrency,
        "server_settings": settings,
        "seconds": round(seconds, 1),
        "cycles_per_s": round(args.cycles / seconds, 1),
        "ways_of_leaving": list(LEAVE),
        "failed_cycles": len(failures),
        "failures": failures[:20],
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "rss_change_pct": round(100 * (rss_after - rss_before) / rss_before, 2),
        "sessions_after": sessions_after,
        "lost_without_stop_logged": log.count("connection lost without 'stop'"),
        "unexpected_log_lines": len(unexpected),
        "unexpected_log_sample": unexpected[:10],
        "ok": not failures and not unexpected and sessions_after == 0 and rss_after <= 1.1 * rss_before,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped one)")
    p.add_argument("--cycles", type=int, default=10_000)
    p.add_argument("--warmup", type=int, default=200, help="cycles before RSS is first read (allocators warm up)")
    p.add_argument("--concurrency", type=int, default=8, help="cycles at once")
    add_set_flag(p)
    p.add_argument("--out", default="benchmarks/results/churn", help="folder for churn.json and the server log")
    args = p.parse_args()
    result = run(args)
    (Path(args.out) / "churn.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("failures", "unexpected_log_sample")}))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
