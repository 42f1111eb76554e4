"""Server load: N concurrent real-time WebSocket sessions against a real `sm1-server`.

Starts the server in a subprocess (the checkpoint you name, or the shipped default), then for each N opens
N streams at once (tempo 120, lookahead 2 beats, realtime, each continuing the same dense prompt with its
own seed), lets them play for --seconds, and reports:

  tokens/s      sampled by the server in total over the window (Prometheus counter sm1_tokens_total)
  batch mean    sessions per batched step (ticks that stepped nobody, prefill only, are not counted)
  engine busy   share of the window the engine spent in ticks (1.0: the engine thread is the limit), summed
                over the workers with --set workers=N (N: every worker's engine always busy)
  tick p50/p99  time of one engine tick (prefill + batched step + sampling), from /healthz over the window
  late p50/p99/max  how late a note left the server after its due time minus the lookahead (/healthz; with
                several workers, the largest worker's p50 and p99: an upper bound of the server's)
  lost          events frames missing or out of order in the clients' `seq` numbers (must be 0)
  RSS           the server's resident memory (its workers' included) at the end of the level
  max tok/s     (--capacity) the same N sessions with realtime false: what the server sustains flat out

A level is "real time" when nothing is lost and p99 lateness is under 50 ms. One command:

    python benchmarks/serve_load.py --out benchmarks/results/serve-load-cpu   # CPU, shipped checkpoint
    python benchmarks/serve_load.py --device cuda --sessions 1,64,256,1024,2048,4096 --out ...   # a GPU
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import websockets

from sm1.events import NoteEvent
from sm1.midi import write_midi

REPO = Path(__file__).resolve().parent.parent


def dense_prompt(beats: int = 16) -> bytes:
    """Sixteenth-note arpeggios over a bass and drums, 16 beats: about 10 notes a beat."""
    notes = []
    for step in range(beats * 4):
        beat = step / 4
        chord = [60, 64, 67, 71] if (step // 16) % 2 == 0 else [57, 60, 64, 67]
        notes.append(NoteEvent(chord[step % 4] + 12 * (step % 8 >= 4), 80, 0, 0, beat, 0.25))
        if step % 2 == 0:
            notes.append(NoteEvent(36 if step % 8 == 0 else 42, 100, 0, 9, beat, 0.25))
        if step % 4 == 0:
            notes.append(NoteEvent(chord[0] - 24, 90, 33, 1, beat, 1.0))
    return write_midi(notes, tempo_bpm=120)


class Server:
    def __init__(
        self, checkpoint: str | None, device: str, max_sessions: int, log: Path, settings: dict[str, str] | None = None
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SM1_")}
        env |= {f"SM1_{k.upper()}": v for k, v in (settings or {}).items()}
        env |= {"SM1_PORT": "0", "SM1_DEVICE": device, "SM1_MAX_SESSIONS": str(max_sessions)}
        if checkpoint:
            env["SM1_CHECKPOINT"] = checkpoint
        self.log = log
        with open(log, "w") as f:
            self.process = subprocess.Popen(
                ["sm1-server", "--log-level", "info"], env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO
            )
        deadline = time.monotonic() + 300
        while not (m := re.search(r"(?:Uvicorn running on|workers serving on) http://[\d.]+:(\d+)", log.read_text())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sm1-server did not start:\n{log.read_text()}")
            time.sleep(0.2)
        self.http = f"http://127.0.0.1:{m.group(1)}"
        self.ws = f"ws://127.0.0.1:{m.group(1)}/v1/stream"

    def counters(self) -> dict[str, float]:
        """Running totals from /metrics: tokens, ticks, rows stepped, seconds spent in ticks."""
        text = httpx.get(f"{self.http}/metrics", timeout=30).text
        names = {"tokens": "sm1_tokens_total", "ticks": "sm1_tick_batch_size_count",
                 "rows": "sm1_tick_batch_size_sum", "tick_s": "sm1_tick_seconds_sum"}  # fmt: skip
        return {k: float(re.search(rf"^{v} (\S+)$", text, re.M).group(1)) for k, v in names.items()}

    def rss_mb(self) -> float | None:
        """The server's resident memory, its workers' included (--set workers=N)."""
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            status = [Path(f"/proc/{p}/status").read_text() for p in [pid, *children]]
        except OSError:
            return None
        return sum(int(re.search(r"VmRSS:\s+(\d+) kB", st).group(1)) for st in status) / 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Listener:
    """One stream: counts what it gets and checks the sequence numbers."""

    def __init__(self, i: int) -> None:
        self.i, self.frames, self.notes, self.lost, self.last_seq = i, 0, 0, 0, -1

    async def run(self, ws_url: str, start: dict, started: asyncio.Event, stop: asyncio.Event) -> None:
        async with websockets.connect(ws_url, max_size=None, open_timeout=600) as ws:
            await ws.send(json.dumps(start | {"params": {"seed": self.i}}))
            while json.loads(await ws.recv())["type"] != "ready":
                pass
            started.set()
            while not stop.is_set():
                try:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                except TimeoutError:
                    continue
                if frame["type"] == "events":
                    self.take(frame)
            await ws.send(json.dumps({"type": "stop"}))
            try:
                async for text in ws:
                    frame = json.loads(text)
                    if frame["type"] == "events":
                        self.take(frame)
            except websockets.ConnectionClosed:
                pass

    def take(self, frame: dict) -> None:
        seq = frame["seq"]
        if seq != self.last_seq + 1:
            self.lost += abs(seq - self.last_seq - 1)
        self.last_seq = max(seq, self.last_seq)
        self.frames += 1
        self.notes += len(frame["events"])


def client_process(ws_url: str, start: dict, ids: list[int], commands: mp.Queue, reports: mp.Queue) -> None:
    """A process of listeners: thousands of streams need more than one client process's CPU."""

    async def main() -> None:
        listeners = [Listener(i) for i in ids]
        stop, started = asyncio.Event(), [asyncio.Event() for _ in ids]
        runs = [li.run(ws_url, start, ev, stop) for li, ev in zip(listeners, started, strict=True)]
        tasks = [asyncio.create_task(r) for r in runs]
        all_started = asyncio.ensure_future(asyncio.gather(*(ev.wait() for ev in started)))
        while not all_started.done():  # a stream that fails to start ends the run with its error
            done, _ = await asyncio.wait([all_started, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done - {all_started}:
                reports.put(f"a stream failed to start: {t.exception()!r}")
                return
        reports.put("started")
        await asyncio.to_thread(commands.get)
        stop.set()
        await asyncio.gather(*tasks)
        reports.put({"notes": sum(li.notes for li in listeners), "lost": sum(li.lost for li in listeners)})

    asyncio.run(main())


def level(server: Server, n: int, seconds: float, start: dict, procs: int, settle: float) -> dict:
    """N streams for `seconds`, timed from the moment all have started (read their prompt)."""
    ctx = mp.get_context("spawn")
    reports, commands = ctx.Queue(), [ctx.Queue() for _ in range(procs)]
    workers = [
        ctx.Process(target=client_process, args=(server.ws, start, list(range(j, n, procs)), commands[j], reports))
        for j in range(procs)
    ]
    for w in workers:
        w.start()
    for _ in workers:
        if (report := reports.get(timeout=900)) != "started":
            raise RuntimeError(report)
    time.sleep(settle)  # past every stream's first lookahead, written at once when it starts
    t0, before = time.monotonic(), server.counters()
    time.sleep(seconds)
    t1, after = time.monotonic(), server.counters()
    delta = {k: after[k] - before[k] for k in after}
    health = httpx.get(f"{server.http}/healthz", params={"window_s": t1 - t0}, timeout=60).json()
    for q in commands:
        q.put("stop")
    counts = [reports.get(timeout=300) for _ in workers]
    for w in workers:
        w.join()
    late, tick = health["lateness_ms"], health["tick_ms"]
    return {
        "sessions": n,
        "seconds": round(t1 - t0, 2),
        "tokens_per_s": round(delta["tokens"] / (t1 - t0), 1),
        "batch_mean": round(delta["rows"] / max(delta["ticks"], 1), 1),
        "engine_busy": round(delta["tick_s"] / (t1 - t0), 2),
        "tick_ms_p50": tick.get("p50"),
        "tick_ms_p99": tick.get("p99"),
        "late_ms_p50": late.get("p50"),
        "late_ms_p99": late.get("p99"),
        "late_ms_max": late.get("max"),
        "notes": sum(c["notes"] for c in counts),
        "lost": sum(c["lost"] for c in counts),
        "rss_mb": server.rss_mb(),
    }


def add_set_flag(p: argparse.ArgumentParser) -> None:
    """--set NAME=VALUE, repeatable: a server setting (SM1_<NAME>); `dict(args.set)` gives them all."""
    p.add_argument("--set", action="append", default=[], type=lambda kv: tuple(kv.split("=", 1)), metavar="NAME=VALUE",
                   help="a server setting (SM1_<NAME>), e.g. --set workers=2; repeatable")  # fmt: skip


def random_checkpoint(shape: str, out: Path) -> str:
    """A checkpoint of random weights (seed 0) with d_model,n_layer = `shape`: the step costs the same as a
    trained model's, but what it writes (and so the load of real-time streams) is not music."""
    import torch

    from sm1.checkpoint import save
    from sm1.model import SM1, SM1Config
    from sm1.tokenizer import Tokenizer

    d_model, n_layer = (int(x) for x in shape.split(","))
    tok = Tokenizer.default()
    torch.manual_seed(0)
    model = SM1(SM1Config(vocab_size=tok.vocab_size, d_model=d_model, n_layer=n_layer))
    name = f"random-{d_model}x{n_layer}"
    return str(save(out / name, model, tok, {"note": "random weights, for load tests"}, name=name))


def run(args: argparse.Namespace) -> dict:
    import torch  # only for its version in the report (client processes need not import it)

    sizes = [int(x) for x in args.sessions.split(",")]
    prompt = Path(args.prompt).read_bytes() if args.prompt else dense_prompt()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = random_checkpoint(args.random, out) if args.random else args.checkpoint
    settings = dict(args.set)
    server = Server(checkpoint, args.device, max(sizes) + 8, out / "server.log", settings)
    try:
        model = httpx.get(f"{server.http}/v1/model", timeout=30).json()
        print(f"model {model['name']}: {model['params']:,} params, state {model['state_floats']} floats, "
              f"device {model['device']}", flush=True)  # fmt: skip
        start = {"type": "start", "prompt": base64.b64encode(prompt).decode(), "tempo_bpm": args.tempo,
                 "lookahead_beats": args.lookahead, "realtime": True}  # fmt: skip
        result = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cpus, torch {torch.__version__}",
            "command": " ".join(sys.argv),
            "model": model,
            "tempo_bpm": args.tempo,
            "lookahead_beats": args.lookahead,
            "server_settings": settings,
            "levels": [],
        }
        for n in sizes:
            procs = args.client_procs or max(1, min((os.cpu_count() or 2) // 2, -(-n // 256)))
            row = level(server, n, args.seconds, start, procs, args.settle)
            if args.capacity:
                flat = level(server, n, args.capacity, start | {"realtime": False}, procs, 1.0)
                row["max_tokens_per_s"], row["max_tick_ms_p50"] = flat["tokens_per_s"], flat["tick_ms_p50"]
            row["real_time"] = row["lost"] == 0 and (row["late_ms_p99"] or 0) < 50
            result["levels"].append(row)
            print(json.dumps(row), flush=True)
            # written after every level: a run stopped by a time limit keeps the levels it finished
            (out / "serve_load.json").write_text(json.dumps(result, indent=1) + "\n")
        return result
    finally:
        server.stop()


def table(result: dict) -> str:
    cols = ["sessions", "tokens_per_s", "batch_mean", "engine_busy", "tick_ms_p50", "tick_ms_p99", "late_ms_p50",
            "late_ms_p99", "late_ms_max", "lost", "rss_mb", "max_tokens_per_s", "real_time"]  # fmt: skip
    cols = [c for c in cols if any(c in r for r in result["levels"])]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["levels"]:
        cells = [f"{r[c]:.1f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped one)")
    p.add_argument("--random", metavar="D_MODEL,N_LAYER", help="serve random weights of this shape instead")
    p.add_argument("--device", default="auto")
    p.add_argument("--sessions", default="1,8,32,64,128", help="comma-separated session counts")
    p.add_argument("--seconds", type=float, default=20.0, help="measured time per level")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the last stream started, unmeasured")
    p.add_argument("--capacity", type=float, default=5.0, help="seconds of flat-out (realtime false); 0: skip")
    p.add_argument("--tempo", type=float, default=120.0)
    p.add_argument("--lookahead", type=float, default=2.0)
    p.add_argument("--prompt", help="a .mid to continue (default: a generated dense one, ~10 notes a beat)")
    p.add_argument("--client-procs", type=int, default=0, help="client processes (default: 1 per 256 streams)")
    add_set_flag(p)
    p.add_argument("--out", default="benchmarks/results/serve-load", help="folder for serve_load.json, the log")
    args = p.parse_args()
    print(table(run(args)))


if __name__ == "__main__":
    main()
