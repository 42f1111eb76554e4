"""Probe (session 14, call E): as call D, plus the x_proj partials summed as two power-of-2 tiles (64 + 32 programs).

Three kernels: 31bd7ee's (step_persistent_orig.py), b2bdf50's (two weight tiles; step_persistent_head.py) and the
working tree's (also two partial tiles: a 16-byte stack). Call D's text follows.

The shipped kernel (31bd7ee, step_persistent_orig.py) pads W_in's 768 columns to 1024 and W_out's 1536 to 2048 in
its register tiles, and spills (Triton 3.6, sm_90: 255 registers, a 256-byte stack); the new one (the working
tree) holds 512 + 256 and 1024 + 512 (a 104-byte stack). The whole 90M fused+graphs step at one row, one graph
each, synchronized, rep by rep, alternating, 500 each; logits and state against the shipped kernel's; the kernel
in the profiler.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import step_persistent_head as head
import step_persistent_orig as orig
import torch
from torch.profiler import ProfilerActivity, profile

import decode
from sm1 import step_persistent
from sm1.batched_step import BatchedStep

OUT = Path(sys.argv[1])
NEW = step_persistent.layers_step
rows_out: list[dict] = []


def emit(row: dict) -> None:
    rows_out.append(row)
    print(json.dumps(row), flush=True)


def main() -> None:
    dev = torch.device("cuda")
    emit({"part": "machine", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__})
    with torch.no_grad():
        models = decode.sm1_models(["90m"], dev, torch.bfloat16)
        for name, model in models.items():
            B = 1
            gen = torch.Generator(device=dev).manual_seed(B)
            tokens = torch.randint(0, model.config.vocab_size, (B,), device=dev, generator=gen)
            slots = torch.zeros(B, dtype=torch.long, device=dev)
            steps, first, state = {}, {}, {}
            for k, fn in (("shipped", orig.layers_step), ("two tiles", head.layers_step), ("two tiles, two part tiles", NEW)):
                step_persistent.layers_step = fn
                pool = model.allocate_state(B + 1)
                pool.ssm.normal_(generator=torch.Generator(device=dev).manual_seed(1))
                pool.conv.normal_(generator=torch.Generator(device=dev).manual_seed(2))
                start = pool.clone()
                step = BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)
                step(tokens, slots)
                pool.ssm.copy_(start.ssm)
                pool.conv.copy_(start.conv)
                first[k] = step(tokens, slots).float().clone()
                state[k] = pool.ssm.clone()
                steps[k] = step
            step_persistent.layers_step = NEW
            times = {k: [] for k in steps}
            for _ in range(500):
                for k, step in steps.items():
                    step(tokens, slots)
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    step(tokens, slots)
                    torch.cuda.synchronize()
                    times[k].append((time.perf_counter() - t0) * 1e3)
            for k, ts in times.items():
                s = sorted(ts)
                n = len(s)
                emit({"part": "step", "model": name, "batch": B, "variant": k, "median_ms": round(s[n // 2], 4),
                      "p25": round(s[n // 4], 4), "p75": round(s[3 * n // 4], 4),
                      "reps_faster_than_shipped": sum(t < b for t, b in zip(ts, times["shipped"])), "reps": n,
                      "logits_diff_vs_shipped": (first[k] - first["shipped"]).abs().max().item(),
                      "ssm_diff_vs_shipped": (state[k] - state["shipped"]).abs().max().item()})
            for k, step in steps.items():
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(20):
                        step(tokens, slots)
                    torch.cuda.synchronize()
                us = {e.key[:40]: round(e.device_time_total / 20, 1) for e in prof.key_averages()
                      if e.device_time_total > 0}
                emit({"part": "kernels", "model": name, "variant": k, "sum_us": round(sum(us.values()), 1),
                      "layers_kernel_us": us.get("_layers_kernel")})
    (OUT / "s14e.json").write_text(json.dumps(rows_out, indent=1))


if __name__ == "__main__":
    main()
