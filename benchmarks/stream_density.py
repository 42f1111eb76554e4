"""How many tokens a second one real-time stream asks for, beside how many one stream can get.

A session gets at most one token per tick (each token depends on the one before), so a stream keeps up only
while its own demand stays under 1 / tick time, whatever the server's total capacity. This runs the engine
alone (no server, no sockets), continues serve_load's dense prompt with N seeds, and reports per stream:

  mean tok/s    tokens per second of music at --tempo, over the whole clip
  peak tok/s    the most tokens in any --window seconds of music, per second (the writer's margin,
                pacing_lead_s + batch_window_s, is what absorbs a burst)

and, beside them, the ceiling: 1 / (tick time) of the engine at batch N on this machine (the server's own
ticks also wait for the event loop's share of the GIL, so its ceiling is lower).

    python benchmarks/stream_density.py --out benchmarks/results/stream-density
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from serve_load import dense_prompt
from tqdm import tqdm

from sm1.checkpoint import load
from sm1.engine import Engine
from sm1.midi import read_midi
from sm1.sampling import SamplingParams


def demand(seconds_of: np.ndarray, window: float) -> tuple[float, float]:
    """Mean and peak tokens per second of one stream, from the music time at which each token is needed."""
    total = float(seconds_of[-1]) or 1.0
    starts = np.arange(0.0, max(total - window, 0.0) + 1e-9, 0.05)
    counts = np.searchsorted(seconds_of, starts + window) - np.searchsorted(seconds_of, starts)
    return len(seconds_of) / total, float(counts.max()) / window


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    ck = load(args.checkpoint)
    prompt = ck.tokenizer.encode(read_midi(Path(args.prompt).read_bytes() if args.prompt else dense_prompt()))
    engine = Engine(ck.model, ck.tokenizer, capacity=args.streams)
    streams = [engine.admit(prompt, SamplingParams(seed=i)) for i in range(args.streams)]
    while engine.has_pending_input:
        engine.tick([])
    start = {s: s.beat for s in streams}
    needed: dict = {s: [] for s in streams}  # music seconds at which each token is needed
    t0 = time.perf_counter()
    for _ in tqdm(range(args.tokens), desc="tokens per stream", unit="tick"):
        for g in engine.tick(streams):
            needed[g.session].append((g.session.beat - start[g.session]) * 60.0 / args.tempo)
    tick_s = (time.perf_counter() - t0) / args.tokens
    rows = [demand(np.array(needed[s]), args.window) for s in streams]
    mean, peak = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    ceiling = 1.0 / tick_s
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"torch {torch.__version__}, {args.threads} torch thread(s)",
        "command": " ".join(sys.argv),
        "checkpoint": ck.name,
        "streams": args.streams,
        "tempo_bpm": args.tempo,
        "window_s": args.window,
        "music_seconds_median": round(float(np.median([needed[s][-1] for s in streams])), 1),
        "tick_ms": round(tick_s * 1e3, 2),
        "ceiling_tok_s": round(ceiling, 1),
        "mean_tok_s": {q: round(float(np.percentile(mean, p)), 1) for q, p in (("p50", 50), ("p90", 90), ("max", 100))},
        "peak_tok_s": {q: round(float(np.percentile(peak, p)), 1) for q, p in (("p50", 50), ("p90", 90), ("max", 100))},
        "streams_over_ceiling_mean": int((mean > ceiling).sum()),
        "streams_over_ceiling_peak": int((peak > ceiling).sum()),
    }


def table(r: dict) -> str:
    lines = ["| per stream | p50 | p90 | max | ceiling (1 / tick) | streams over it |", "|---|---|---|---|---|---|"]
    peak = f"peak tok/s over {r['window_s']:g} s"
    for name, key, over in (("mean tok/s", "mean_tok_s", "streams_over_ceiling_mean"),
                            (peak, "peak_tok_s", "streams_over_ceiling_peak")):  # fmt: skip
        q, ceiling = r[key], r["ceiling_tok_s"]
        lines.append(f"| {name} | {q['p50']} | {q['p90']} | {q['max']} | {ceiling} | {r[over]} of {r['streams']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped one)")
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--tokens", type=int, default=2400, help="tokens per stream")
    p.add_argument("--tempo", type=float, default=120.0)
    p.add_argument("--window", type=float, default=0.2, help="seconds of music for the peak rate")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the server's default on 2 cores: 1)")
    p.add_argument("--prompt", help="a .mid to continue (default: serve_load's dense prompt)")
    p.add_argument("--out", default="benchmarks/results/stream-density")
    args = p.parse_args()
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream_density.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['machine']}; {result['checkpoint']}, {result['streams']} streams at {result['tempo_bpm']:g} BPM, "
          f"tick {result['tick_ms']} ms at batch {result['streams']}")  # fmt: skip
    print(table(result))


if __name__ == "__main__":
    main()
