"""Probe (session 11, call C): one CUDA graph whose rows are split into 2 or 4 parts, each part's step on its
own stream (parallel branches of the graph), against the one-part graph (the shipped BatchedStep); and the
one-row persistent kernel's BLOCK_C and NUM_WARPS. Synchronized steps (decode.py's timing) and back-to-back
replays, alternating in rounds."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "benchmarks")]
import decode  # noqa: E402

from sm1 import step_persistent  # noqa: E402
from sm1.batched_step import BatchedStep, GraphInputs  # noqa: E402

OUT = Path(sys.argv[1])
RESULTS: dict[str, list] = {"split": [], "persistent": []}


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


def split_graph(model, pool, B: int, parts: int):
    """A graph of the fused step over B rows in `parts` parallel branches; returns (call, out)."""
    inputs = GraphInputs(B, -1, torch.device("cuda"))
    h = B // parts
    streams = [torch.cuda.Stream() for _ in range(parts)]
    main = torch.cuda.current_stream()

    def body():
        outs = []
        for i, s in enumerate(streams):
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                outs.append(model.step(inputs.tokens[i * h:(i + 1) * h], pool, slots=inputs.slots[i * h:(i + 1) * h],
                                       fused=True))  # fmt: skip
        for s in streams:
            torch.cuda.current_stream().wait_stream(s)
        return torch.cat(outs)

    saved = pool.clone()
    side = torch.cuda.Stream()
    side.wait_stream(main)
    with torch.cuda.stream(side):
        for _ in range(2):
            body()
    main.wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = body()
    pool.ssm.copy_(saved.ssm)
    pool.conv.copy_(saved.conv)

    def call(tokens, slots):
        inputs.stage(tokens, slots)
        g.replay()
        return out

    return call


def split(model) -> None:
    dev = torch.device("cuda")
    for B in (1024, 512, 256):
        gen = torch.Generator(device=dev).manual_seed(B)
        pool = model.allocate_state(B + 1)
        pool.ssm.normal_(generator=gen)
        pool.conv.normal_(generator=gen)
        start = pool.clone()
        tokens = torch.randint(0, decode.VOCAB, (B,), device=dev, generator=gen)
        slots = torch.randperm(B, device=dev, generator=gen)
        calls = {1: BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)}
        for parts in (2, 4):
            calls[parts] = split_graph(model, pool, B, parts)
        want = None
        for parts, call in calls.items():
            pool.ssm.copy_(start.ssm)
            pool.conv.copy_(start.conv)
            got = call(tokens, slots).clone()
            if want is None:
                want, want_ssm = got, pool.ssm.clone()
            RESULTS["split"].append({"batch": B, "parts": parts, "check": True,
                                     "max_abs_diff_vs_one_part": (got - want).abs().max().item(),
                                     "ssm_max_abs_diff": (pool.ssm - want_ssm).abs().max().item()})  # fmt: skip
            say(json.dumps(RESULTS["split"][-1]))
        for rnd in range(3):
            for parts, call in calls.items():
                row = {"batch": B, "parts": parts, "round": rnd,
                       "sync_ms": sync_ms(lambda: call(tokens, slots), 200),  # noqa: B023
                       "back_to_back_ms": b2b_ms(lambda: call(tokens, slots))}  # noqa: B023  # fmt: skip
                row["tokens_per_s_sync"] = round(B / row["sync_ms"] * 1e3)
                RESULTS["split"].append(row)
                say(json.dumps(row))
        (OUT / "s11c.json").write_text(json.dumps(RESULTS, indent=1))


def persistent(model) -> None:
    dev = torch.device("cuda")
    pool = model.allocate_state(2)
    tokens = torch.tensor([5], device=dev)
    slots = torch.tensor([0], device=dev)
    settings = [(16, 8), (8, 8), (32, 8), (16, 4), (16, 16), (8, 4), (32, 16)]
    for rnd in range(2):
        for block_c, warps in settings:
            step_persistent.BLOCK_C, step_persistent.NUM_WARPS = block_c, warps
            try:
                step = BatchedStep(model, pool, scratch_slot=1, use_graphs=True, fused=True)
                row = {"BLOCK_C": block_c, "NUM_WARPS": warps, "round": rnd, "fused": step.fused,
                       "sync_ms": sync_ms(lambda: step(tokens, slots), 300),  # noqa: B023
                       "back_to_back_ms": b2b_ms(lambda: step(tokens, slots))}  # noqa: B023  # fmt: skip
            except Exception as e:
                row = {"BLOCK_C": block_c, "NUM_WARPS": warps, "round": rnd, "error": repr(e)[:150]}
            RESULTS["persistent"].append(row)
            say(json.dumps(row))
    step_persistent.BLOCK_C, step_persistent.NUM_WARPS = 16, 8
    (OUT / "s11c.json").write_text(json.dumps(RESULTS, indent=1))


def main() -> None:
    say("copy bandwidth", round(decode.copy_bandwidth("cuda") / 1e9), "GB/s", torch.cuda.get_device_name())
    (_, model), = decode.sm1_models(["90m"], torch.device("cuda"), torch.bfloat16).items()
    with torch.no_grad():
        split(model)
        persistent(model)
    say("done")


if __name__ == "__main__":
    main()
