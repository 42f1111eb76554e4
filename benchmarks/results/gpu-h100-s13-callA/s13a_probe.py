"""Probe (session 13, call A): x_proj split over the channels (sm1/step_triton.py `x_proj`) against cuBLAS.

1. x_proj alone, and out_proj (split_matmul with the residual add) alone: 24 launches (24 layers' weights and
   inputs) in one CUDA graph, event-timed, cuBLAS against split tiles, at 16/64/256/1024 rows; max abs diff
   against float64.
2. The whole 90M fused CUDA-graph step (BatchedStep), one graph per variant (the knobs are read at capture):
   cuBLAS, the default x_proj split, the fastest x_proj tile of part 1, and that with the fastest out_proj tile;
   timed synchronized, rep by rep, alternating among the variants; first-step logits against cuBLAS's.
3. Profiler: each kernel's GPU us a step, cuBLAS x_proj against the default split, at 256 and 1024 rows.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import decode
from sm1 import step_triton
from sm1.batched_step import BatchedStep

OUT = Path(sys.argv[1])
BATCHES = (2, 16, 64, 256, 1024)
TILES = [(64, 64, 4), (32, 64, 4), (32, 32, 4), (64, 128, 4)]
OUT_TILES = [(128, 128, 64, 8), (64, 128, 64, 4), (128, 64, 64, 4), (64, 64, 64, 4), (64, 128, 128, 8)]
KNOBS = ("XPROJ_ROWS", "XPROJ_K", "XPROJ_WARPS")
OUT_KNOBS = ("OUT_ROWS", "OUT_COLS", "OUT_K", "OUT_WARPS")
rows_out: list[dict] = []
best: dict[tuple[str, int], tuple] = {}


def emit(row: dict) -> None:
    rows_out.append(row)
    print(json.dumps(row), flush=True)


def set_variant(v: tuple[int, int, int] | None, o: tuple[int, int, int, int] | None = None) -> None:
    step_triton.XPROJ_SPLIT = v is not None
    for k, x in zip(KNOBS, v or (64, 64, 4)):
        setattr(step_triton, k, x)
    step_triton.OUT_SPLIT = o is not None
    for k, x in zip(OUT_KNOBS, o or (128, 128, 64, 8)):
        setattr(step_triton, k, x)


def name(v, o=None) -> str:
    x = "cublas" if v is None else "x%dx%dw%d" % v
    return x if o is None else x + "+out%dx%dx%dw%d" % o


def graph_us(fn, L: int) -> float:
    """fn() captured once in a CUDA graph (it runs L products), replayed: median us a product."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(5):
        graph.replay()
    ts = []
    for _ in range(50):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / L)
    ts.sort()
    return round(ts[25], 2)


def xproj_alone(dev: torch.device) -> None:
    E, P, L = 1536, 64, 24
    g = torch.Generator(device=dev).manual_seed(0)
    ws = [torch.randn(E, P, device=dev, dtype=torch.bfloat16, generator=g) / 40 for _ in range(L)]
    for B in (16, 64, 256, 1024):
        xs = [torch.randn(B, E, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(L)]
        ref = xs[0].double() @ ws[0].double()
        for v in [None, *TILES]:
            set_variant(v)
            try:
                out = step_triton.x_proj(xs[0], ws[0])
                diff = (out.double() - ref).abs().max().item()
                us = graph_us(lambda: [step_triton.x_proj(x, w) for x, w in zip(xs, ws)], L)
                emit({"part": "xproj", "batch": B, "variant": name(v), "us_per_layer": us,
                      "max_abs_diff_vs_f64": diff, "ref_max": ref.abs().max().item()})
                if v is not None and us < best.get(("x", B), (None, 1e9))[1]:
                    best[("x", B)] = (v, us)
            except Exception as e:
                emit({"part": "xproj", "batch": B, "variant": name(v), "error": repr(e)[:200]})
    set_variant(TILES[0])


def out_alone(dev: torch.device) -> None:
    E, Dm, L = 1536, 768, 24
    g = torch.Generator(device=dev).manual_seed(0)
    ws = [torch.randn(Dm, E, device=dev, dtype=torch.bfloat16, generator=g) / 40 for _ in range(L)]
    for B in (16, 64, 256, 1024):
        ys = [torch.randn(B, E, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(L)]
        us_ = [torch.randn(B, Dm, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(L)]
        ref = us_[0].double() + ys[0].double() @ ws[0].double().T
        for o in [None, *OUT_TILES]:
            set_variant(None, o)
            try:
                diff = (step_triton.out_proj(us_[0].clone(), ys[0], ws[0]).double() - ref).abs().max().item()
                us = graph_us(lambda: [step_triton.out_proj(u, y, w) for u, y, w in zip(us_, ys, ws)], L)
                emit({"part": "out", "batch": B, "variant": name(None, o) if o else "cublas", "us_per_layer": us,
                      "max_abs_diff_vs_f64": diff, "ref_max": ref.abs().max().item()})
                if o is not None and us < best.get(("out", B), (None, 1e9))[1]:
                    best[("out", B)] = (o, us)
            except Exception as e:
                emit({"part": "out", "batch": B, "variant": name(None, o), "error": repr(e)[:200]})
    set_variant(TILES[0])


def whole_step(model: torch.nn.Module, dev: torch.device) -> None:
    for B in BATCHES:
        bx = best.get(("x", max(B, 16)), (TILES[0],))[0]
        bo = best.get(("out", max(B, 16)), (OUT_TILES[0],))[0]
        variants = [(None, None), (TILES[0], None), (bx, None), (bx, bo)]
        variants = list(dict.fromkeys(variants))
        gen = torch.Generator(device=dev).manual_seed(B)
        tokens = torch.randint(0, decode.VOCAB, (B,), device=dev, generator=gen)
        slots = torch.randperm(B, device=dev, generator=gen)
        steps, first = {}, {}
        for v, o in variants:
            set_variant(v, o)
            pool = model.allocate_state(B + 1)
            pool.ssm.normal_(generator=torch.Generator(device=dev).manual_seed(1))
            pool.conv.normal_(generator=torch.Generator(device=dev).manual_seed(2))
            start = pool.clone()
            step = BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)
            step(tokens, slots)  # captures with this variant's knobs
            pool.ssm.copy_(start.ssm)
            pool.conv.copy_(start.conv)
            first[name(v, o)] = step(tokens, slots).float().clone()
            steps[name(v, o)] = step
        times = {k: [] for k in steps}
        for _ in range(200):
            for k, step in steps.items():
                step(tokens, slots)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                step(tokens, slots)
                torch.cuda.synchronize()
                times[k].append((time.perf_counter() - t0) * 1e3)
        base = times["cublas"]
        for k, ts in times.items():
            wins = sum(t < b for t, b in zip(ts, base))
            s = sorted(ts)
            emit({"part": "step", "batch": B, "variant": k, "median_ms": round(s[100], 4), "p25": round(s[50], 4),
                  "p75": round(s[150], 4), "reps_faster_than_cublas": wins, "reps": len(ts),
                  "tok_s": round(B / s[100] * 1e3), "max_abs_logit_diff_vs_cublas":
                  (first[k] - first["cublas"]).abs().max().item()})
        del steps
        torch.cuda.empty_cache()
    set_variant(TILES[0])


def kernels(model: torch.nn.Module, dev: torch.device) -> None:
    for B in (256, 1024):
        bx, bo = best.get(("x", B), (TILES[0],))[0], best.get(("out", B), (OUT_TILES[0],))[0]
        for v, o in ((None, None), (bx, None), (bx, bo)):
            set_variant(v, o)
            pool = model.allocate_state(B + 1)
            tokens = torch.randint(0, decode.VOCAB, (B,), device=dev)
            slots = torch.randperm(B, device=dev)
            step = BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)
            for _ in range(3):
                step(tokens, slots)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    step(tokens, slots)
                torch.cuda.synchronize()
            us = {e.key[:60]: round(e.device_time_total / 10, 1) for e in prof.key_averages() if e.device_time_total > 0}
            top = dict(sorted(us.items(), key=lambda kv: -kv[1])[:8])
            emit({"part": "kernels", "batch": B, "variant": name(v, o), "sum_us": round(sum(us.values()), 1), "top": top})
    set_variant(TILES[0])


def main() -> None:
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    parts = sys.argv[2].split(",") if len(sys.argv) > 2 else ["xproj", "out", "step", "kernels"]
    with torch.no_grad():
        if "xproj" in parts:
            xproj_alone(dev)
        (_, model), = decode.sm1_models(["90m"], dev, torch.bfloat16).items()
        if "out" in parts:
            out_alone(dev)
        if "step" in parts:
            whole_step(model, dev)
        if "kernels" in parts:
            kernels(model, dev)
    (OUT / "s13a.json").write_text(json.dumps(rows_out, indent=1))


if __name__ == "__main__":
    main()
