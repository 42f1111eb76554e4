"""What a tick costs beside the model: the engine's per-session Python, isolated with a model too small to matter.

On a GPU the model step of hundreds of sessions takes well under a millisecond (benchmarks/decode.py), yet the
server's ticks at 512-1,024 streams took 16-36 ms (benchmarks/serve_load.py --device cuda): the rest is the
tick's work per session. This runs `Engine.tick` for N sessions of a 1-layer, 16-wide model on this machine's
CPU (serve_load's dense prompt, each session its own seed) and reports the time a tick takes outside the model
step, per session, and where it goes (cProfile, in a second pass: the profiler's own cost inflates those
figures, so read them as shares).

    python benchmarks/tick_overhead.py --out benchmarks/results/tick-overhead
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from serve_load import dense_prompt

from sm1.engine import Engine
from sm1.midi import read_midi
from sm1.model import SM1, SM1Config
from sm1.sampling import SamplingParams
from sm1.tokenizer import Tokenizer

# where a tick's time goes, by the functions cProfile names (cumulative time of each)
PARTS = {
    "sampling (batched, all rows)": "sampling.py:.*\\(sample\\)",
    "uniform draws (one per session)": "sampling.py:.*\\(uniform\\)",
    "constraint masks (one per session)": "sampling.py:.*\\(allowed\\)",
    "decoding tokens to notes": "tokenizer.py:.*\\(feed\\)",
    "sampler bookkeeping": "sampling.py:.*\\(observe\\)",
    "the model step": "batched_step.py:.*\\(__call__\\)",
}


def engine_with_sessions(n: int, tokenizer: Tokenizer) -> tuple[Engine, list]:
    torch.manual_seed(0)
    model = SM1(SM1Config(vocab_size=tokenizer.vocab_size, d_model=16, n_layer=1)).eval()
    engine = Engine(model, tokenizer, capacity=n)
    prompt = tokenizer.encode(read_midi(dense_prompt()))
    sessions = [engine.admit(prompt, SamplingParams(seed=i)) for i in range(n)]
    while engine.has_pending_input:
        engine.tick([])
    for _ in range(5):  # warm-up
        engine.tick(sessions)
    return engine, sessions


def measure(n: int, ticks: int, tokenizer: Tokenizer) -> dict:
    engine, sessions = engine_with_sessions(n, tokenizer)
    step_s = []
    step = engine._step

    def timed_step(*args, **kwargs):
        t0 = time.perf_counter()
        out = step(*args, **kwargs)
        step_s.append(time.perf_counter() - t0)
        return out

    engine._step = timed_step
    t0 = time.perf_counter()
    for _ in range(ticks):
        engine.tick(sessions)
    tick = (time.perf_counter() - t0) / ticks
    model = sum(step_s) / len(step_s)
    profile = cProfile.Profile()
    profile.runcall(lambda: [engine.tick(sessions) for _ in range(ticks)])
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    total = sum(v[2] for v in stats.values())
    shares = {}
    for part, pattern in PARTS.items():
        rx = re.compile(pattern)
        shares[part] = round(sum(v[3] for k, v in stats.items() if rx.search(f"{k[0]}:{k[1]}({k[2]})")) / total, 3)
    return {
        "sessions": n,
        "tick_ms": round(tick * 1e3, 3),
        "model_step_ms": round(model * 1e3, 3),
        "us_per_session_outside_the_step": round((tick - model) / n * 1e6, 1),
        "shares_of_profiled_time": shares,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", default="64,256,1024")
    p.add_argument("--ticks", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/tick-overhead"))
    args = p.parse_args()
    torch.set_num_threads(1)
    tokenizer = Tokenizer.default()
    rows = [measure(int(n), args.ticks, tokenizer) for n in args.sessions.split(",")]
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "command": " ".join(sys.argv),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tick_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    parts = list(PARTS)
    print("| sessions | tick ms | model step ms | us a session outside the step | " + " | ".join(parts) + " |")
    print("|" + "---|" * (4 + len(parts)))
    for r in rows:
        shares = " | ".join(f"{r['shares_of_profiled_time'][k]:.0%}" for k in parts)
        print(f"| {r['sessions']} | {r['tick_ms']} | {r['model_step_ms']} | "
              f"{r['us_per_session_outside_the_step']} | {shares} |")  # fmt: skip
    print(f"\n{result['machine']}, {result['date']}: {result['command']}")


if __name__ == "__main__":
    main()
