"""Probe (session 14, call C): in_proj's z half off the critical path.

The mixer alone needs z (the gate); the conv and x_proj need only the x half of in_proj. So in_proj can be two
products: x = u @ W_x^T on the step's stream, z = u @ W_z^T on a second stream forked at the block's start and joined
before the mixer kernel, where it runs beside the x product, the conv and x_proj (a compute-bound product beside
memory- and latency-bound kernels). The whole 90M fused+graphs step, one graph each, synchronized, rep by rep,
alternating: shipped; the two halves one after the other on one stream (what splitting costs); the z half beside.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.profiler import ProfilerActivity, profile

import decode
from sm1 import step_triton as st
from sm1.batched_step import BatchedStep

OUT = Path(sys.argv[1])
SHIPPED = st.block_step
rows_out: list[dict] = []
_streams: dict = {}


def emit(row: dict) -> None:
    rows_out.append(row)
    print(json.dumps(row), flush=True)


def mixer_kernel(block, w, xc, xp, z, rs, ssm, slots):
    mixer = block.mixer
    cfg = mixer.cfg
    B, E = xc.shape
    y = torch.empty_like(xc)
    tall = triton.cdiv(B, st.MIXER_ROWS_TALL) * triton.cdiv(E, st.MIXER_C) >= 4 * st._sm_count(xc.device)
    rows = st.MIXER_ROWS_TALL if tall else st.MIXER_ROWS
    st._mixer_kernel[(triton.cdiv(B, rows), triton.cdiv(E, st.MIXER_C))](
        xc, z, z.stride(0), rs, xp, w.w_dt, mixer.dt_proj.bias, w.A, mixer.D, ssm, slots, y, B, E, R=cfg.dt_rank,
        N=cfg.d_state, P=xp.shape[1], IEEE=st._ieee(xc), BLOCK_B=rows, BLOCK_C=st.MIXER_C, num_warps=st.MIXER_WARPS)
    return y


def halves_step(block, u, ssm, conv, slots):
    """in_proj as two products on one stream."""
    w = st.decode_weights(block)
    E = block.mixer.cfg.d_inner
    x = F.linear(u, w.w_in[:E])
    z = F.linear(u, w.w_in[E:])
    xc, rs = st.conv_update(block, w, u, x, conv, slots)
    xp = xc @ w.w_x
    y = mixer_kernel(block, w, xc, xp, z, rs, ssm, slots)
    return u.addmm_(y, block.mixer.out_proj.weight.t())


def beside_step(block, u, ssm, conv, slots):
    """in_proj's z half on a second stream, joined before the mixer kernel."""
    w = st.decode_weights(block)
    E = block.mixer.cfg.d_inner
    main = torch.cuda.current_stream()
    side = _streams.setdefault(u.device, torch.cuda.Stream(u.device))
    side.wait_stream(main)
    with torch.cuda.stream(side):
        z = F.linear(u, w.w_in[E:])
    x = F.linear(u, w.w_in[:E])
    xc, rs = st.conv_update(block, w, u, x, conv, slots)
    xp = xc @ w.w_x
    main.wait_stream(side)
    z.record_stream(main)
    y = mixer_kernel(block, w, xc, xp, z, rs, ssm, slots)
    return u.addmm_(y, block.mixer.out_proj.weight.t())


VARIANTS = {"shipped": SHIPPED, "halves, one stream": halves_step, "z beside": beside_step}


def main() -> None:
    dev = torch.device("cuda")
    emit({"part": "machine", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__})
    with torch.no_grad():
        (_, model), = decode.sm1_models(["90m"], dev, torch.bfloat16).items()
        for B in (2, 16, 64, 256, 1024):
            gen = torch.Generator(device=dev).manual_seed(B)
            tokens = torch.randint(0, decode.VOCAB, (B,), device=dev, generator=gen)
            slots = torch.randperm(B, device=dev, generator=gen)
            steps, first, state = {}, {}, {}
            for k, fn in VARIANTS.items():
                st.block_step = fn
                try:
                    pool = model.allocate_state(B + 1)
                    pool.ssm.normal_(generator=torch.Generator(device=dev).manual_seed(1))
                    pool.conv.normal_(generator=torch.Generator(device=dev).manual_seed(2))
                    start = pool.clone()
                    step = BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)
                    step(tokens, slots)
                    if not (step.fused and step.use_graphs):
                        emit({"part": "step", "batch": B, "variant": k, "error": "fused or graphs refused"})
                        continue
                    pool.ssm.copy_(start.ssm)
                    pool.conv.copy_(start.conv)
                    first[k] = step(tokens, slots).float().clone()
                    state[k] = pool.ssm.clone()
                    steps[k] = step
                except Exception as e:
                    emit({"part": "step", "batch": B, "variant": k, "error": repr(e)[:300]})
            st.block_step = SHIPPED
            times = {k: [] for k in steps}
            for _ in range(300):
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
                emit({"part": "step", "batch": B, "variant": k, "median_ms": round(s[n // 2], 4),
                      "p25": round(s[n // 4], 4), "p75": round(s[3 * n // 4], 4), "tok_s": round(B / s[n // 2] * 1e3),
                      "reps_faster_than_shipped": sum(t < b for t, b in zip(ts, times["shipped"])), "reps": n,
                      "logits_diff_vs_shipped": (first[k] - first["shipped"]).abs().max().item(),
                      "ssm_diff_vs_shipped": (state[k] - state["shipped"]).abs().max().item()})
            if B in (16, 1024):
                for k, step in steps.items():
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(10):
                            step(tokens, slots)
                        torch.cuda.synchronize()
                    us = {e.key[:48]: round(e.device_time_total / 10, 1) for e in prof.key_averages()
                          if e.device_time_total > 0}
                    emit({"part": "kernels", "batch": B, "variant": k, "sum_us": round(sum(us.values()), 1),
                          "top": dict(sorted(us.items(), key=lambda kv: -kv[1])[:7])})
            del steps
            torch.cuda.empty_cache()
    (OUT / "s14c.json").write_text(json.dumps(rows_out, indent=1))


if __name__ == "__main__":
    main()
