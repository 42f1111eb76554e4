"""Probe (session 11, call D): a graph's launch costs the host about 30 us at 128 nodes (the 90M step at 16 rows
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
    variants = {"one graph": None, "1 | 23": [1], "2 | 22": [2], "4 | 20": [4], "1 | 3 | 20": [1, 4]}
    with torch.no_grad():
        for B in (1024, 256, 16, 2):
            gen = torch.Generator(device=dev).manual_seed(B)
            pool = model.allocate_state(B + 1)
            pool.ssm.normal_(generator=gen)
            pool.conv.normal_(generator=gen)
            start = pool.clone()
            tokens = torch.randint(0, decode.VOCAB, (B,), device=dev, generator=gen)
            slots = torch.randperm(B, device=dev, generator=gen)
            calls = {}
            for name, cuts in variants.items():
                calls[name] = (BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True) if cuts is None
                               else split_graphs(model, pool, B, cuts))  # fmt: skip
            want = None
            for name, call in calls.items():
                pool.ssm.copy_(start.ssm)
                pool.conv.copy_(start.conv)
                got = call(tokens, slots).clone()
                if want is None:
                    want, want_ssm, want_conv = got, pool.ssm.clone(), pool.conv.clone()
                ROWS.append({"batch": B, "variant": name, "max_abs_diff_vs_one_graph": (got - want).abs().max().item(),
                             "state_equal": bool(torch.equal(pool.ssm, want_ssm) and torch.equal(pool.conv, want_conv))})  # fmt: skip
                say(json.dumps(ROWS[-1]))
            for rnd in range(3):
                for name, call in calls.items():
                    row = {"batch": B, "variant": name, "round": rnd,
                           "sync_ms": sync_ms(lambda: call(tokens, slots), 200),  # noqa: B023
                           "back_to_back_ms": b2b_ms(lambda: call(tokens, slots))}  # noqa: B023  # fmt: skip
                    ROWS.append(row)
                    say(json.dumps(row))
            (OUT / "s11d.json").write_text(json.dumps(ROWS, indent=1))
    say("done")


if __name__ == "__main__":
    main()
