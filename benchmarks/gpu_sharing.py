"""Several processes on one GPU: what each one's decode step costs while the others step too.

`sm1-server --workers N` on a GPU runs N engines, each in its own process and so its own CUDA context. This
times the server's step (BatchedStep: the fused step in CUDA graphs, the shipped checkpoint in bf16) in P
processes at once, each stepping `--batch` rows, then reading the tokens back (the one sync a tick makes) and
spending `--think-ms` on the CPU (a tick's per-session Python), again and again, and beside it ONE process
stepping all P x batch rows: what a single engine shared by the P workers would pay for the same rows.

    python benchmarks/gpu_sharing.py --out benchmarks/results/gpu-sharing
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def stepper(batch: int, steps: int, think_ms: float, dtype: str, go: mp.Event, out: mp.Queue) -> None:
    """One process: step `batch` rows `steps` times; the wall time of each step + sync, in ms."""
    import torch

    from sm1.batched_step import BatchedStep
    from sm1.checkpoint import load

    model = load(None, "cuda").model.to(getattr(torch, dtype))
    pool = model.allocate_state(batch + 1)
    step = BatchedStep(model, pool, scratch_slot=batch, use_graphs=True, fused=True)
    slots = torch.arange(batch, device="cuda")
    tokens = torch.randint(0, model.config.vocab_size, (batch,), device="cuda")
    for _ in range(20):  # capture the graph, warm up
        tokens = step(tokens, slots).argmax(-1)
    torch.cuda.synchronize()
    out.put("ready")
    go.wait()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        tokens = step(tokens, slots).argmax(-1)
        tokens.tolist()  # the tick's one sync: its tokens, to the CPU
        times.append((time.perf_counter() - t0) * 1e3)
        spin = time.perf_counter() + think_ms / 1e3
        while time.perf_counter() < spin:  # the tick's Python, holding the CPU
            pass
    out.put({"times": times, "fused": step.fused})


def run_level(procs: int, batch: int, steps: int, think_ms: float, dtype: str) -> dict:
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=stepper, args=(batch, steps, think_ms, dtype, go, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    for _ in ps:
        if out.get(timeout=600) != "ready":
            raise RuntimeError("a stepper failed")
    t0 = time.perf_counter()
    go.set()
    results = [out.get(timeout=600) for _ in ps]
    wall = time.perf_counter() - t0
    for p in ps:
        p.join()
    times = np.concatenate([r["times"] for r in results])
    return {
        "procs": procs,
        "rows_per_proc": batch,
        "step_ms_p50": round(float(np.percentile(times, 50)), 3),
        "step_ms_p99": round(float(np.percentile(times, 99)), 3),
        "tokens_per_s": round(procs * batch * steps / wall, 0),
        "fused": all(r["fused"] for r in results),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", default="1,2,4,8")
    p.add_argument("--batch", type=int, default=64, help="rows each process steps")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--think-ms", type=float, default=1.0, help="CPU time between steps (a tick's Python)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default="benchmarks/results/gpu-sharing")
    args = p.parse_args()
    import torch

    rows = []
    for n in (int(x) for x in args.procs.split(",")):
        for procs, batch in ((n, args.batch), (1, n * args.batch)) if n > 1 else ((1, args.batch),):
            row = run_level(procs, batch, args.steps, args.think_ms, args.dtype)
            row["setup"] = f"{procs} process(es) x {batch} rows"
            rows.append(row)
            print(json.dumps(row), flush=True)
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{torch.cuda.get_device_name()}, {platform.node()}, {os.cpu_count()} cpus",
        "torch": torch.__version__,
        "command": f"python benchmarks/gpu_sharing.py {flags}",
        "levels": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_sharing.json").write_text(json.dumps(result, indent=1) + "\n")
    cols = ["setup", "step_ms_p50", "step_ms_p99", "tokens_per_s", "fused"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
