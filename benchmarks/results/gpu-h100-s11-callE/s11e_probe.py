"""Probe (session 11, call E: call D's split graphs, timed alternately rep by rep): a graph's launch costs the host about 30 us at 128 nodes (the 90M step at 16 rows
and more), and its first kernel waits for it. Split the step into consecutive graphs, a small one first: the
GPU runs it while the host launches the rest. Synchronized steps (decode.py's timing) and back-to-back, against
the shipped single graph, alternating in rounds."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "benchmarks")]
import decode  # noqa: E402

from sm1 import step_triton  # noqa: E402
from sm1.batched_step import BatchedStep, GraphInputs  # noqa: E402

OUT = Path(sys.argv[1])
ROWS: list[dict] = []


def say(*a) -> None:
    print(*a, flush=True)


def sync_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3)
    return round(sorted(ts)[len(ts) // 2], 4)


def b2b_ms(fn, n: int = 200) -> float:
    fn()
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(n):
        fn()
    e1.record()
    torch.cuda.synchronize()
    return round(e0.elapsed_time(e1) / n, 4)


def split_graphs(model, pool, B: int, cuts: list[int]):
    """The fused step as consecutive graphs: layers [0, cuts[0]), [cuts[0], cuts[1]), ..., the rest + head."""
    inputs = GraphInputs(B, -1, torch.device("cuda"))
    L = len(model.layers)
    bounds = [0, *cuts, L]
    handle = torch.cuda.graph_pool_handle()

    def part(first: int, last: int, x):
        if first == 0:
            x = model.embedding(inputs.tokens)
        for i in range(first, last):
            x = step_triton.block_step(model.layers[i], x, pool.ssm[i], pool.conv[i], inputs.slots)
        return step_triton.logits(model, model.norm_f(x)) if last == L else x

    saved = pool.clone()
    main = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(main)
    with torch.cuda.stream(side):
        x = None
        for a, b in zip(bounds, bounds[1:]):
            x = part(a, b, x)
    main.wait_stream(side)
    graphs, x = [], None
    for a, b in zip(bounds, bounds[1:]):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=handle):
            x = part(a, b, x)
        graphs.append(g)
    out = x
    torch.cuda.synchronize()
    pool.ssm.copy_(saved.ssm)
    pool.conv.copy_(saved.conv)

    def call(tokens, slots):
        inputs.stage(tokens, slots)
        for g in graphs:
            g.replay()
        return out

    return call


def main() -> None:
    say("copy bandwidth", round(decode.copy_bandwidth("cuda") / 1e9), "GB/s", torch.cuda.get_device_name())
    dev = torch.device("cuda")
    (_, model), = decode.sm1_models(["90m"], dev, torch.bfloat16).items()
    variants = {"one graph": None, "1 | 3 | 20": [1, 4], "2 | 22": [2]}
    with torch.no_grad():
        for B in (1024, 512, 256, 64, 16, 4):
            gen = torch.Generator(device=dev).manual_seed(B)
            pool = model.allocate_state(B + 1)
            tokens = torch.randint(0, decode.VOCAB, (B,), device=dev, generator=gen)
            slots = torch.randperm(B, device=dev, generator=gen)
            calls = {name: (BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True) if cuts is None
                            else split_graphs(model, pool, B, cuts)) for name, cuts in variants.items()}  # fmt: skip
            times: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(5):
                for call in calls.values():
                    call(tokens, slots)
            torch.cuda.synchronize()
            for _ in range(400):  # one synchronized step of each in turn, rep by rep
                for name, call in calls.items():
                    t0 = time.perf_counter()
                    call(tokens, slots)
                    torch.cuda.synchronize()
                    times[name].append((time.perf_counter() - t0) * 1e3)
            for name, ts in times.items():
                ts.sort()
                row = {"batch": B, "variant": name, "median_ms": round(ts[len(ts) // 2], 4),
                       "p25_ms": round(ts[len(ts) // 4], 4), "p75_ms": round(ts[3 * len(ts) // 4], 4),
                       "back_to_back_ms": b2b_ms(lambda: calls[name](tokens, slots))}  # noqa: B023  # fmt: skip
                ROWS.append(row)
                say(json.dumps(row))
            (OUT / "s11e.json").write_text(json.dumps(ROWS, indent=1))
    say("done")


if __name__ == "__main__":
    main()
