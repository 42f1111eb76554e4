"""Probe (session 14, call A): the mixer tile with the next tile's loads in flight (mixer_variants._mixer_persist).

1. The mixer alone, 24 layers' inputs and pools in one CUDA graph (event-timed, median us a layer), at 256 and 1024
   rows: the shipped tile, the same tile's traffic with trivial arithmetic (_mixer_copy: what this access
   pattern can move), and the persistent tile at several shapes; bytes moved and GB/s beside each; the
   persistent tile's y and state against the shipped tile's on the same inputs.
2. x_proj alone: cuBLAS mm against cuBLAS strided-batched over 2 or 4 chunks of K (fp32 out) plus the sum.
3. The whole 90M fused+graphs step, shipped mixer against the fastest persistent tile (patched in before the
   graphs are captured), synchronized, rep by rep, alternating; the first step's logits against the shipped.
4. Profiler: each kernel's GPU us a step at 1024 rows, shipped and persistent.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import mixer_variants as mv
import torch
import triton
from torch.profiler import ProfilerActivity, profile

import decode
from scan import copy_bandwidth
from sm1 import step_triton
from sm1.batched_step import BatchedStep

OUT = Path(sys.argv[1])
E, P, R, N, L = 1536, 64, 48, 1, 24
rows_out: list[dict] = []
SHIPPED_MIXER_UPDATE = step_triton.mixer_update


def emit(row: dict) -> None:
    rows_out.append(row)
    print(json.dumps(row), flush=True)


def graph_us(fn, reps: int = 50) -> float:
    """fn() (L launches) captured once in a CUDA graph, replayed: median us a launch."""
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
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / L)
    ts.sort()
    return round(ts[len(ts) // 2], 2)


def layer_inputs(B: int, dev: torch.device, g: torch.Generator) -> dict:
    bf = torch.bfloat16
    xz = torch.randn(B, 2 * E, device=dev, dtype=bf, generator=g)
    return dict(xc=torch.randn(B, E, device=dev, dtype=bf, generator=g), z=xz[:, E:],
                rs=torch.rand(B, device=dev, generator=g) + 0.5,
                xp=torch.randn(B, P, device=dev, dtype=bf, generator=g) / 4,
                wdt=torch.randn(P, E, device=dev, dtype=bf, generator=g) / 8,
                dtb=torch.randn(E, device=dev, dtype=bf, generator=g) - 3,
                A=-torch.rand(E, N, device=dev, generator=g) - 0.1,
                D=torch.randn(E, device=dev, dtype=bf, generator=g),
                ssm=torch.randn(B + 8, E, N, device=dev, generator=g),
                slots=torch.randperm(B + 8, device=dev, generator=g)[:B].contiguous(),
                y=torch.empty(B, E, device=dev, dtype=bf))


def launch(kind: str, t: dict, rows: int, C: int, warps: int, groups: int = 0) -> None:
    B = t["xc"].shape[0]
    args = (t["xc"], t["z"], t["z"].stride(0), t["rs"], t["xp"], t["wdt"], t["dtb"], t["A"], t["D"], t["ssm"],
            t["slots"], t["y"], B, E)
    meta = dict(R=R, N=N, P=P, IEEE=False, BLOCK_B=rows, BLOCK_C=C, num_warps=warps)
    if kind == "persist":
        mv._mixer_persist[(triton.cdiv(E, C) * groups,)](*args, **meta, GROUPS=groups)
    else:
        kernel = step_triton._mixer_kernel if kind == "shipped" else mv._mixer_copy
        kernel[(triton.cdiv(B, rows), triton.cdiv(E, C))](*args, **meta)


def mixer_alone(dev: torch.device, bw: float, sms: int) -> dict:
    best = {}
    for B in (256, 1024):
        g = torch.Generator(device=dev).manual_seed(B)
        layers = [layer_inputs(B, dev, g) for _ in range(L)]
        nbytes = B * E * (2 + 2 + 4 * N * 2 + 2)  # x, z, state read and written, y
        shipped_rows = step_triton.MIXER_ROWS_TALL if (B // step_triton.MIXER_ROWS_TALL) * (E // 64) >= 4 * sms \
            else step_triton.MIXER_ROWS
        variants = [("shipped", shipped_rows, 64, 8, 0), ("shipped", 16, 64, 8, 0), ("copy", shipped_rows, 64, 8, 0)]
        for rows, C, warps in ((16, 64, 8), (16, 64, 4), (32, 64, 8), (16, 128, 8), (32, 32, 4), (16, 32, 4)):
            for groups in sorted({max(1, round(k * sms / triton.cdiv(E, C))) for k in (1, 2, 3, 4)}):
                if groups <= triton.cdiv(B, rows):
                    variants.append(("persist", rows, C, warps, groups))
        t0 = layers[0]
        ssm0 = t0["ssm"].clone()
        launch("shipped", t0, shipped_rows, 64, 8)
        want_y, want_ssm = t0["y"].clone(), t0["ssm"].clone()
        for kind, rows, C, warps, groups in variants:
            label = f"{kind} {rows}x{C} w{warps}" + (f" g{groups}" if groups else "")
            try:
                t0["ssm"].copy_(ssm0)
                launch(kind, t0, rows, C, warps, groups)
                diff_y = (t0["y"].float() - want_y.float()).abs().max().item()
                diff_h = (t0["ssm"] - want_ssm).abs().max().item()
                us = graph_us(lambda: [launch(kind, t, rows, C, warps, groups) for t in layers])
                row = {"part": "mixer", "batch": B, "variant": label, "us_per_layer": us,
                       "gb_s": round(nbytes / us / 1e3, 1), "x_floor": round(us / (nbytes / bw * 1e6), 2),
                       "max_abs_diff_y_vs_shipped": diff_y, "max_abs_diff_state_vs_shipped": diff_h}
                emit(row)
                if kind == "persist" and diff_y == 0 and diff_h == 0 and us < best.get(B, (None, 1e9))[1]:
                    best[B] = ((rows, C, warps, groups), us)
            except Exception as e:
                emit({"part": "mixer", "batch": B, "variant": label, "error": repr(e)[:300]})
        del layers
        torch.cuda.empty_cache()
    return best


def xproj_alone(dev: torch.device) -> None:
    g = torch.Generator(device=dev).manual_seed(0)
    ws = [torch.randn(E, P, device=dev, dtype=torch.bfloat16, generator=g) / 40 for _ in range(L)]
    for B in (256, 1024):
        xs = [torch.randn(B, E, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(L)]
        ref = xs[0].double() @ ws[0].double()

        def split(x, w, S):
            parts = torch.bmm(x.view(B, S, E // S).transpose(0, 1), w.view(S, E // S, P), out_dtype=torch.float32)
            return parts.sum(0).to(x.dtype)

        for label, fn in (("cublas mm", lambda x, w: x @ w), ("bmm 2 chunks + sum", lambda x, w: split(x, w, 2)),
                          ("bmm 4 chunks + sum", lambda x, w: split(x, w, 4))):
            try:
                diff = (fn(xs[0], ws[0]).double() - ref).abs().max().item()
                us = graph_us(lambda: [fn(x, w) for x, w in zip(xs, ws)])
                emit({"part": "xproj", "batch": B, "variant": label, "us_per_layer": us, "max_abs_diff_vs_f64": diff})
            except Exception as e:
                emit({"part": "xproj", "batch": B, "variant": label, "error": repr(e)[:300]})


def persist_mixer_update(tile: tuple[int, int, int, int]):
    rows, C, warps, groups = tile

    def mixer_update(block, w, xc, z, rs, ssm, slots):
        mixer = block.mixer
        cfg = mixer.cfg
        B, E_ = xc.shape
        xp = xc @ w.w_x
        y = torch.empty_like(xc)
        g = min(groups, triton.cdiv(B, rows))
        mv._mixer_persist[(triton.cdiv(E_, C) * g,)](
            xc, z, z.stride(0), rs, xp, w.w_dt, mixer.dt_proj.bias, w.A, mixer.D, ssm, slots, y, B, E_,
            R=cfg.dt_rank, N=cfg.d_state, P=xp.shape[1], IEEE=step_triton._ieee(xc), BLOCK_B=rows, BLOCK_C=C,
            GROUPS=g, num_warps=warps)
        return y

    return mixer_update


def whole_step(model, dev: torch.device, best: dict) -> None:
    for B in (16, 64, 256, 1024):
        tile = best.get(B if B >= 256 else 256)
        if tile is None:
            continue
        variants = {"shipped": SHIPPED_MIXER_UPDATE, "persist %dx%d w%d g%d" % tile[0]: persist_mixer_update(tile[0])}
        gen = torch.Generator(device=dev).manual_seed(B)
        tokens = torch.randint(0, decode.VOCAB, (B,), device=dev, generator=gen)
        slots = torch.randperm(B, device=dev, generator=gen)
        steps, first = {}, {}
        for k, fn in variants.items():
            step_triton.mixer_update = fn
            pool = model.allocate_state(B + 1)
            pool.ssm.normal_(generator=torch.Generator(device=dev).manual_seed(1))
            pool.conv.normal_(generator=torch.Generator(device=dev).manual_seed(2))
            start = pool.clone()
            step = BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)
            if not step.fused:
                emit({"part": "step", "batch": B, "variant": k, "error": "fused step refused"})
            step(tokens, slots)
            pool.ssm.copy_(start.ssm)
            pool.conv.copy_(start.conv)
            first[k] = step(tokens, slots).float().clone()
            steps[k] = step
        step_triton.mixer_update = SHIPPED_MIXER_UPDATE
        times = {k: [] for k in steps}
        for _ in range(300):
            for k, step in steps.items():
                step(tokens, slots)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                step(tokens, slots)
                torch.cuda.synchronize()
                times[k].append((time.perf_counter() - t0) * 1e3)
        base = times["shipped"]
        for k, ts in times.items():
            s = sorted(ts)
            n = len(s)
            emit({"part": "step", "batch": B, "variant": k, "median_ms": round(s[n // 2], 4),
                  "p25": round(s[n // 4], 4), "p75": round(s[3 * n // 4], 4),
                  "reps_faster_than_shipped": sum(t < b for t, b in zip(ts, base)), "reps": n,
                  "tok_s": round(B / s[n // 2] * 1e3),
                  "max_abs_logit_diff_vs_shipped": (first[k] - first["shipped"]).abs().max().item()})
        del steps
        torch.cuda.empty_cache()


def kernels(model, dev: torch.device, best: dict) -> None:
    B = 1024
    if B not in best:
        return
    for k, fn in (("shipped", SHIPPED_MIXER_UPDATE), ("persist", persist_mixer_update(best[B][0]))):
        step_triton.mixer_update = fn
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
        emit({"part": "kernels", "batch": B, "variant": k, "sum_us": round(sum(us.values()), 1),
              "top": dict(sorted(us.items(), key=lambda kv: -kv[1])[:8])})
    step_triton.mixer_update = SHIPPED_MIXER_UPDATE


def main() -> None:
    dev = torch.device("cuda")
    bw = copy_bandwidth("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    emit({"part": "machine", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
          "triton": triton.__version__, "copy_bandwidth_gb_s": round(bw / 1e9, 1), "sms": sms})
    with torch.no_grad():
        best = mixer_alone(dev, bw, sms)
        emit({"part": "best", "tiles": {str(k): v for k, v in best.items()}})
        xproj_alone(dev)
        (_, model), = decode.sm1_models(["90m"], dev, torch.bfloat16).items()
        whole_step(model, dev, best)
        kernels(model, dev, best)
    (OUT / "s14a.json").write_text(json.dumps(rows_out, indent=1))


if __name__ == "__main__":
    main()
