"""Probe (session 11, call A): where a synchronized step's time goes besides its kernels; cuBLAS against
cublasLt and a Triton GEMM for the three products; a ring-buffer conv window against the shifted one.

    python3 s11a_probe.py OUT LIMIT_S
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "benchmarks"), str(HERE.parent / "scripts")]
import decode  # noqa: E402

from sm1 import step_triton as st  # noqa: E402
from sm1.batched_step import BatchedStep  # noqa: E402

T0 = time.time()
OUT = Path(sys.argv[1])
LIMIT = float(sys.argv[2])
RESULTS: dict[str, list] = {"overhead": [], "gemm": [], "conv": []}


def say(*a) -> None:
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save() -> None:
    (OUT / "s11a.json").write_text(json.dumps(RESULTS, indent=1))


def med_us(fn, reps: int = 200, sync: bool = True) -> float:
    """Median wall µs of fn (synchronized after each when sync)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return round(sorted(ts)[len(ts) // 2], 1)


# ---------------------------------------------------------------- 1. a synchronized step, piece by piece
def overhead(model, B: int) -> dict:
    dev = torch.device("cuda")
    pool = model.allocate_state(B + 1)
    tokens = torch.randint(0, decode.VOCAB, (B,), device=dev)
    slots = torch.arange(B, device=dev)
    step = BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)
    step(tokens, slots)
    graph, tok_buf, slot_buf, out = step._graphs[step.rows(B)]

    def pre():
        tok_buf.fill_(0)
        slot_buf.fill_(step.pad_slot)
        tok_buf[:B].copy_(tokens)
        slot_buf[:B].copy_(slots)

    def copies():
        tok_buf[:B].copy_(tokens)
        slot_buf[:B].copy_(slots)

    row = {"batch": B}
    row["sync_only"] = med_us(lambda: None)
    row["pre_ops_sync"] = med_us(pre)
    row["pre_ops_host"] = med_us(pre, sync=False)
    row["copies_only_sync"] = med_us(copies)
    row["replay_sync"] = med_us(graph.replay)
    row["replay_host"] = med_us(graph.replay, sync=False, reps=50)
    row["step_sync"] = med_us(lambda: step(tokens, slots))
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    gpu = []
    for _ in range(50):
        e0.record()
        graph.replay()
        e1.record()
        torch.cuda.synchronize()
        gpu.append(e0.elapsed_time(e1) * 1e3)
    row["replay_gpu_events"] = round(sorted(gpu)[25], 1)
    torch.cuda.synchronize()
    e0.record()
    for _ in range(200):
        graph.replay()
    e1.record()
    torch.cuda.synchronize()
    row["replay_back_to_back"] = round(e0.elapsed_time(e1) * 1e3 / 200, 1)
    e0.record()
    for _ in range(200):
        step(tokens, slots)
    e1.record()
    torch.cuda.synchronize()
    row["step_back_to_back"] = round(e0.elapsed_time(e1) * 1e3 / 200, 1)
    # the graph's node count, if this torch can say
    try:
        row["graph_nodes"] = graph.raw_cuda_graph().num_nodes  # type: ignore[attr-defined]
    except Exception:
        pass
    if B in (1, 1024):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step(tokens, slots)
                torch.cuda.synchronize()
        prof.export_chrome_trace(str(OUT / f"trace_b{B}.json"))
    return row


# ---------------------------------------------------------------- 2. the three products
@triton.jit
def _mm(a_ptr, b_ptr, c_ptr, M, N, K, sam, sbk, sbn, scm, ADD: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr):  # fmt: skip
    """c (+)= a @ b, a (M, K) row-major, b (K, N) with strides (sbk, sbn), fp32 accumulate."""
    pid = tl.program_id(0)
    n_m, n_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    width = GROUP * n_n
    g = pid // width
    first_m = g * GROUP
    size_m = min(n_m - first_m, GROUP)
    pm = first_m + (pid % width) % size_m
    pn = (pid % width) // size_m
    rm = pm * BM + tl.arange(0, BM)
    rn = pn * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * sam + (k + rk)[None, :], mask=(rm < M)[:, None] & (k + rk < K)[None, :], other=0.0)
        b = tl.load(b_ptr + (k + rk)[:, None] * sbk + rn[None, :] * sbn, mask=(k + rk < K)[:, None] & (rn < N)[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    cp = c_ptr + rm[:, None] * scm + rn[None, :]
    cmask = (rm < M)[:, None] & (rn < N)[None, :]
    if ADD:
        acc += tl.load(cp, mask=cmask, other=0.0).to(tl.float32)
    tl.store(cp, acc.to(c_ptr.dtype.element_ty), mask=cmask)


def tri_mm(a, b, c, add, BM, BN, BK, warps, stages):
    M, K = a.shape
    N = b.shape[1]
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    _mm[grid](a, b, c, M, N, K, a.stride(0), b.stride(0), b.stride(1), c.stride(0), ADD=add, BM=BM, BN=BN, BK=BK,
              GROUP=8, num_warps=warps, num_stages=stages)  # fmt: skip


def graph_us(fn, n_layers: int) -> float:
    """µs a call of fn(layer) inside a CUDA graph of one call per layer (weights of 24 layers: L2-cold, as in
    the step), replayed 20 times back to back."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(n_layers):
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(n_layers):
            fn(i)
    for _ in range(3):
        g.replay()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(20):
        g.replay()
    e1.record()
    torch.cuda.synchronize()
    return round(e0.elapsed_time(e1) * 1e3 / 20 / n_layers, 2)


TILES = [(BM, BN, BK, w, 4 if BK == 64 else 3) for BM in (64, 128) for BN in (64, 128, 256) for BK in (64, 128)
         for w in (4, 8)]  # fmt: skip


def gemms(B: int) -> list[dict]:
    dev, L, bf = torch.device("cuda"), 24, torch.bfloat16
    Dm, E, P = 768, 1536, 64
    shapes = {  # name: (a (B, K), weight as the step stores it, add)
        "in_proj": (torch.randn(B, Dm, device=dev, dtype=bf), [torch.randn(2 * E, Dm, device=dev, dtype=bf) / 30 for _ in range(L)]),
        "x_proj": (torch.randn(B, E, device=dev, dtype=bf), [torch.randn(E, P, device=dev, dtype=bf) / 30 for _ in range(L)]),
        "out_proj": (torch.randn(B, E, device=dev, dtype=bf), [torch.randn(Dm, E, device=dev, dtype=bf) / 30 for _ in range(L)]),
    }  # fmt: skip
    rows = []
    for name, (a, ws) in shapes.items():
        if name == "in_proj":
            ref_fn = lambda i: torch.nn.functional.linear(a, ws[i])  # noqa: E731
            bt = [w.t() for w in ws]  # (K, N) views
            c = torch.empty(B, 2 * E, device=dev, dtype=bf)
            add = False
        elif name == "x_proj":
            ref_fn = lambda i: a @ ws[i]  # noqa: E731
            bt = ws
            c = torch.empty(B, P, device=dev, dtype=bf)
            add = False
        else:
            res = torch.randn(B, Dm, device=dev, dtype=bf)
            ref_fn = lambda i: res.addmm_(a, ws[i].t())  # noqa: E731
            bt = [w.t() for w in ws]
            c = res
            add = True
        want = (a.float() @ bt[0].float()) + (res.float() if add else 0)
        for lib in ("cublas", "cublaslt"):
            torch.backends.cuda.preferred_blas_library(lib)
            if add:
                saved = res.clone()
            us = graph_us(ref_fn, L)
            if add:
                res.copy_(saved)
            rows.append({"product": name, "batch": B, "impl": lib, "us": us})
            say("GEMM", rows[-1])
        torch.backends.cuda.preferred_blas_library("cublas")
        best = None
        for BM, BN, BK, w, s in TILES:
            if time.time() - T0 > LIMIT * 0.7:
                break
            try:
                if add:
                    saved = res.clone()
                    tri_mm(a, bt[0], c, add, BM, BN, BK, w, s)
                    err = (c.float() - want).abs().max().item()
                    res.copy_(saved)
                else:
                    tri_mm(a, bt[0], c, add, BM, BN, BK, w, s)
                    err = (c.float() - want).abs().max().item()
                us = graph_us(lambda i: tri_mm(a, bt[i], c, add, BM, BN, BK, w, s), L)  # noqa: B023
                if add:
                    res.copy_(saved)
            except Exception as e:
                rows.append({"product": name, "batch": B, "impl": f"triton {BM}x{BN}x{BK} w{w} s{s}", "error": repr(e)[:100]})
                continue
            rows.append({"product": name, "batch": B, "impl": f"triton {BM}x{BN}x{BK} w{w} s{s}", "us": us, "max_err": round(err, 4)})
            if best is None or us < best["us"]:
                best = rows[-1]
        say("GEMM best triton", best)
    return rows


# ---------------------------------------------------------------- 3. the conv window as a ring
@triton.jit
def _conv_ring_kernel(u_ptr, xz_ptr, xz_stride, conv_ptr, pos_ptr, slots_ptr, cw_ptr, cb_ptr, xc_ptr, rs_ptr, B, Dm,
                      E, eps, K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """The conv tile with each window a ring of K - 1 inputs: the oldest at pos % (K - 1), overwritten by x."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rm = rows < B
    slot = tl.load(slots_ptr + rows, mask=rm, other=-1)
    p = tl.load(pos_ptr + tl.maximum(slot, 0), mask=rm, other=0) % (K - 1)
    scale = st._rscale(u_ptr, rows, rm, Dm, eps, BLOCK_D)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cols < E
    om = rm[:, None] & cm[None, :]
    x = tl.load(xz_ptr + rows[:, None] * xz_stride + cols[None, :], mask=om, other=0.0).to(tl.float32) * scale[:, None]
    win = conv_ptr + tl.maximum(slot, 0)[:, None] * (K - 1) * E + cols[None, :]
    sm = (slot >= 0)[:, None] & cm[None, :]
    acc = tl.load(cb_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K - 1):
        idx = (p + k) % (K - 1)
        v = tl.load(win + idx[:, None] * E, mask=sm, other=0.0)
        acc += v.to(tl.float32) * tl.load(cw_ptr + k * E + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    acc += x * tl.load(cw_ptr + (K - 1) * E + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    tl.debug_barrier()
    tl.store(win + p[:, None] * E, x.to(conv_ptr.dtype.element_ty), mask=sm)
    tl.store(xc_ptr + rows[:, None] * E + cols[None, :], st._silu(acc), mask=om)
    if tl.program_id(1) == 0:
        tl.store(rs_ptr + rows, scale, mask=rm)


def convs(B: int) -> list[dict]:
    dev, L, bf = torch.device("cuda"), 24, torch.bfloat16
    Dm, E, K = 768, 1536, 4
    u = torch.randn(B, Dm, device=dev, dtype=bf)
    xz = torch.randn(B, 2 * E, device=dev, dtype=bf)
    pools = [torch.randn(B + 1, K - 1, E, device=dev, dtype=bf) for _ in range(L)]
    cw = torch.randn(K, E, device=dev, dtype=bf)
    cb = torch.randn(E, device=dev, dtype=bf)
    xc = torch.empty(B, E, device=dev, dtype=bf)
    rs = torch.empty(B, device=dev, dtype=torch.float32)
    slots = torch.randperm(B, device=dev)
    pos = torch.randint(0, 1000, (B + 1,), device=dev, dtype=torch.int32)
    wide = triton.cdiv(B, st.CONV_ROWS) * triton.cdiv(E, st.CONV_C_WIDE) >= 2 * st._sm_count(dev)
    C = st.CONV_C_WIDE if wide else st.CONV_C

    def shifted(i):
        st._conv_kernel[(triton.cdiv(B, st.CONV_ROWS), triton.cdiv(E, C))](
            u, xz, xz.stride(0), pools[i], slots, cw, cb, xc, rs, B, Dm, E, 1e-5, K=K, BLOCK_B=st.CONV_ROWS,
            BLOCK_C=C, BLOCK_D=1024, num_warps=st.CONV_WARPS)  # fmt: skip

    def ring(i, rows=st.CONV_ROWS, c=C, w=st.CONV_WARPS):
        _conv_ring_kernel[(triton.cdiv(B, rows), triton.cdiv(E, c))](
            u, xz, xz.stride(0), pools[i], pos, slots, cw, cb, xc, rs, B, Dm, E, 1e-5, K=K, BLOCK_B=rows, BLOCK_C=c,
            BLOCK_D=1024, num_warps=w)  # fmt: skip

    # same conv output: a shifted window is a ring at position 0
    p0 = pools[0].clone()
    pos.zero_()
    shifted(0)
    a = xc.clone()
    after_shift = pools[0].clone()
    pools[0].copy_(p0)
    ring(0)
    b = xc.clone()
    newest_ok = torch.equal(pools[0][slots, 0], after_shift[slots, 2])
    rows = [{"batch": B, "check_max_diff": (a.float() - b.float()).abs().max().item(), "ring_wrote_x": newest_ok}]
    pos.random_(0, 1000)
    for rnd in range(2):
        rows.append({"batch": B, "round": rnd, "kernel": f"shifted {st.CONV_ROWS}x{C} w{st.CONV_WARPS}",
                     "us": graph_us(shifted, L)})  # fmt: skip
        for r, c, w in ((16, C, 8), (16, 128, 4), (16, 128, 8), (16, 256, 4), (32, 128, 8), (16, 64, 4)):
            try:
                us = graph_us(lambda i: ring(i, r, c, w), L)  # noqa: B023
            except Exception as e:
                us = repr(e)[:80]
            rows.append({"batch": B, "round": rnd, "kernel": f"ring {r}x{c} w{w}", "us": us})
    for r in rows:
        say("CONV", r)
    return rows


def main() -> None:
    device = torch.device("cuda")
    bw = decode.copy_bandwidth("cuda")
    say(f"copy bandwidth {bw / 1e9:.0f} GB/s", torch.cuda.get_device_name())
    RESULTS["bandwidth_GBps"] = round(bw / 1e9, 1)
    (name, model), = decode.sm1_models(["90m"], device, torch.bfloat16).items()
    with torch.no_grad():
        for B in (1, 16, 1024):
            RESULTS["overhead"].append(overhead(model, B))
            say("OVERHEAD", json.dumps(RESULTS["overhead"][-1]))
            save()
        for B in (1024, 256):
            RESULTS["conv"] += convs(B)
            save()
        for B in (1024, 256):
            RESULTS["gemm"] += gemms(B)
            save()
    say("done")


if __name__ == "__main__":
    main()
