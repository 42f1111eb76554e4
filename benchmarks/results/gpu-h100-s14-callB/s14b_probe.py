"""Probe (session 14, call B): the decode kernels asking L2 for weights ahead of the products that read them.

The whole 90M fused+graphs step, one graph per variant (the knobs are read at capture), timed synchronized, rep
by rep, alternating; the first step's logits and state against the variant without prefetch; then each variant's
kernels in the profiler. One row: step_persistent.PREFETCH 0 / 1 / 2 (the layer that far ahead). More rows:
step_triton.PREFETCH_TILES off / on (the conv tiles ask for out_proj's weight, the mixer tiles for the next
layer's in_proj weight).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import decode
from sm1 import step_persistent, step_triton
from sm1.batched_step import BatchedStep

OUT = Path(sys.argv[1])
BATCHES = {1: ("PREFETCH", step_persistent, (0, 1, 2))} | {
    B: ("PREFETCH_TILES", step_triton, (False, True)) for B in (2, 16, 64, 256, 1024)}
rows_out: list[dict] = []


def emit(row: dict) -> None:
    rows_out.append(row)
    print(json.dumps(row), flush=True)


def main() -> None:
    dev = torch.device("cuda")
    emit({"part": "machine", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__})
    with torch.no_grad():
        (_, model), = decode.sm1_models(["90m"], dev, torch.bfloat16).items()
        for B, (knob, module, variants) in BATCHES.items():
            default = getattr(module, knob)
            gen = torch.Generator(device=dev).manual_seed(B)
            tokens = torch.randint(0, decode.VOCAB, (B,), device=dev, generator=gen)
            slots = torch.randperm(B, device=dev, generator=gen)
            steps, first, state = {}, {}, {}
            for v in variants:
                setattr(module, knob, v)
                pool = model.allocate_state(B + 1)
                pool.ssm.normal_(generator=torch.Generator(device=dev).manual_seed(1))
                pool.conv.normal_(generator=torch.Generator(device=dev).manual_seed(2))
                start = pool.clone()
                step = BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)
                step(tokens, slots)  # captured with this PREFETCH
                pool.ssm.copy_(start.ssm)
                pool.conv.copy_(start.conv)
                first[v] = step(tokens, slots).float().clone()
                state[v] = (pool.ssm.clone(), pool.conv.clone())
                steps[v] = step
            setattr(module, knob, default)
            base = variants[0]
            times = {v: [] for v in steps}
            for _ in range(300 if B > 1 else 500):
                for v, step in steps.items():
                    step(tokens, slots)
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    step(tokens, slots)
                    torch.cuda.synchronize()
                    times[v].append((time.perf_counter() - t0) * 1e3)
            for v, ts in times.items():
                s = sorted(ts)
                n = len(s)
                emit({"part": "step", "batch": B, "knob": knob, "value": v, "median_ms": round(s[n // 2], 4),
                      "p25": round(s[n // 4], 4), "p75": round(s[3 * n // 4], 4),
                      "tok_s": round(B / s[n // 2] * 1e3),
                      "reps_faster_than_off": sum(t < b for t, b in zip(ts, times[base])), "reps": n,
                      "logits_diff_vs_off": (first[v] - first[base]).abs().max().item(),
                      "ssm_diff_vs_off": (state[v][0] - state[base][0]).abs().max().item(),
                      "conv_diff_vs_off": (state[v][1].float() - state[base][1].float()).abs().max().item()})
            if B in (1, 16, 1024):
                for v, step in steps.items():
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(20):
                            step(tokens, slots)
                        torch.cuda.synchronize()
                    us = {e.key[:48]: round(e.device_time_total / 20, 1) for e in prof.key_averages()
                          if e.device_time_total > 0}
                    emit({"part": "kernels", "batch": B, "knob": knob, "value": v, "sum_us": round(sum(us.values()), 1),
                          "top": dict(sorted(us.items(), key=lambda kv: -kv[1])[:6])})
            del steps
            torch.cuda.empty_cache()
    (OUT / "s14b.json").write_text(json.dumps(rows_out, indent=1))


if __name__ == "__main__":
    main()
