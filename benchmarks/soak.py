"""Soak: N real-time sessions for a long time against a real `sm1-server` (the shipped checkpoint by
default); is it still on time, complete and the same size at the end?

The streams (tempo 120, lookahead 2 beats, each continuing the same dense prompt with its own seed) run in
client processes (serve_load's); every --interval seconds the server's lateness and tick quantiles over
that interval (/healthz) and its RSS are recorded. At the end each stream's `seq` numbers are checked:
events lost or out of order must be 0.

    nice python benchmarks/soak.py --sessions 64 --minutes 10 --out benchmarks/results/soak-cpu
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from serve_load import Server, client_process, dense_prompt


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server = Server(args.checkpoint, "cpu", args.sessions + 8, out / "server.log")
    start = {"type": "start", "prompt": base64.b64encode(dense_prompt()).decode(), "tempo_bpm": 120.0,
             "lookahead_beats": 2.0, "realtime": True}  # fmt: skip
    ctx = mp.get_context("spawn")
    reports, commands = ctx.Queue(), ctx.Queue()
    client = ctx.Process(target=client_process, args=(server.ws, start, list(range(args.sessions)), commands, reports))
    samples = []
    try:
        client.start()
        if (report := reports.get(timeout=900)) != "started":
            raise RuntimeError(report)
        time.sleep(args.settle)  # past every stream's first lookahead, written at once when it starts
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < args.minutes * 60:
            time.sleep(min(args.interval, args.minutes * 60 - elapsed))
            health = httpx.get(f"{server.http}/healthz", params={"window_s": args.interval}, timeout=60).json()
            late, tick = health["lateness_ms"], health["tick_ms"]
            samples.append({
                "t_s": round(time.monotonic() - t0, 1), "sessions": health["sessions"], "notes": late.get("n", 0),
                "late_ms_p50": late.get("p50"), "late_ms_p99": late.get("p99"), "late_ms_max": late.get("max"),
                "tick_ms_p99": tick.get("p99"), "rss_mb": round(server.rss_mb(), 1),
            })  # fmt: skip
            print(json.dumps(samples[-1]), flush=True)
        commands.put("stop")
        counts = reports.get(timeout=300)
        client.join()
    finally:
        server.stop()
    p99s = [s["late_ms_p99"] for s in samples if s["late_ms_p99"] is not None]
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus",
        "command": " ".join(sys.argv),
        "sessions": args.sessions,
        "minutes": round(samples[-1]["t_s"] / 60, 2) if samples else 0,
        "notes": counts["notes"],
        "lost": counts["lost"],
        "late_ms_p99_first": p99s[0] if p99s else None,
        "late_ms_p99_last": p99s[-1] if p99s else None,
        "late_ms_p99_worst": max(p99s, default=None),
        "rss_mb_first": samples[0]["rss_mb"] if samples else None,
        "rss_mb_last": samples[-1]["rss_mb"] if samples else None,
        "samples": samples,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped one)")
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--minutes", type=float, default=10.0, help="measured duration")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after every stream started, unmeasured")
    p.add_argument("--out", default="benchmarks/results/soak", help="folder for soak.json and the server log")
    args = p.parse_args()
    result = run(args)
    (Path(args.out) / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    sys.exit(0 if result["lost"] == 0 and result["samples"] else 1)


if __name__ == "__main__":
    main()
