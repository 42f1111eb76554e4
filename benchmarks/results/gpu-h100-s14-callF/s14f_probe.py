"""Probe (session 14, call F): the head (norm_f, lm_head, fp32 logits) folded into the one-row kernel.

Old: 9f002f6's kernel (step_persistent_head.py: the layers only), then norm_f, the padded head product and the cast
as separate launches; new: the working tree's step_logits. Call D's text follows, for the harness.

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
import torch
from torch.profiler import ProfilerActivity, profile

import decode
from sm1 import step_persistent, step_triton
from sm1.batched_step import BatchedStep

OUT = Path(sys.argv[1])
NEW = step_persistent.step_logits
rows_out: list[dict] = []


head._eps = lambda block, u: step_triton._eps(block.norm, u)  # 9f002f6's _eps took the block


def old_step_logits(model, u, ssm, conv, slots):
    """The old kernel keeps its stacked weights apart from the new one's (both cache on model._step_weights, and a
    graph's weights must stay alive)."""
    new_cache, model._step_weights = getattr(model, "_step_weights", None), getattr(model, "_old_step_weights", None)
    try:
        u = head.layers_step(model, u, ssm, conv, slots)
    finally:
        model._old_step_weights, model._step_weights = model._step_weights, new_cache
    return step_triton.logits(model, model.norm_f(u))


def emit(row: dict) -> None:
    rows_out.append(row)
    print(json.dumps(row), flush=True)


def main() -> None:
    dev = torch.device("cuda")
    emit({"part": "machine", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__})
    with torch.no_grad():
        models = decode.sm1_models(["90m", "default"], dev, torch.bfloat16)
        for name, model in models.items():
            B = 1
            gen = torch.Generator(device=dev).manual_seed(B)
            tokens = torch.randint(0, model.config.vocab_size, (B,), device=dev, generator=gen)
            slots = torch.zeros(B, dtype=torch.long, device=dev)
            steps, first, state = {}, {}, {}
            for k, fn in (("shipped", old_step_logits), ("head folded in", NEW)):
                step_persistent.step_logits = fn
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
            step_persistent.step_logits = NEW
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
                      "layers_kernel_us": us.get("_layers_kernel"), "kernels": us})
    (OUT / "s14f.json").write_text(json.dumps(rows_out, indent=1))


if __name__ == "__main__":
    main()
