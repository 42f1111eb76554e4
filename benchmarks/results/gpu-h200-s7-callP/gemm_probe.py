"""cuBLAS layouts for the decode step's three products at 256 and 1024 rows (90M model shapes), each in a CUDA
graph of 20 calls. Scratch: python .scratch/gemm_probe.py OUTDIR"""
import json
import pathlib
import sys

import torch
import torch.nn.functional as F

out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
dev, dt = torch.device("cuda"), torch.bfloat16
torch.manual_seed(0)
Dm, E, P = 768, 1536, 64
w_in = torch.randn(2 * E, Dm, device=dev, dtype=dt) / 30
w_inT = w_in.t().contiguous()
w_x = torch.randn(E, P, device=dev, dtype=dt) / 30
w_xT = w_x.t().contiguous()
w_out = torch.randn(Dm, E, device=dev, dtype=dt) / 30
w_outT = w_out.t().contiguous()


def graph_us(fn, n=20, reps=20):
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps / n * 1e3


rows = []
for B in (256, 1024):
    u = torch.randn(B, Dm, device=dev, dtype=dt)
    xc = torch.randn(B, E, device=dev, dtype=dt)
    y = torch.randn(B, E, device=dev, dtype=dt)
    res = torch.randn(B, Dm, device=dev, dtype=dt)
    cases = {
        "in_proj F.linear(u, W (2E,Dm)) [current]": lambda: F.linear(u, w_in),
        "in_proj u @ W^T stored (Dm,2E)": lambda: u @ w_inT,
        "in_proj two halves F.linear": lambda: (F.linear(u, w_in[:E]), F.linear(u, w_in[E:])),
        "x_proj xc @ w_x (E,P) [current]": lambda: xc @ w_x,
        "x_proj F.linear(xc, w_x^T (P,E))": lambda: F.linear(xc, w_xT),
        "out_proj res.addmm_(y, W^T view) [current]": lambda: res.addmm_(y, w_out.t()),
        "out_proj res.addmm_(y, W^T stored (E,Dm))": lambda: res.addmm_(y, w_outT),
        "out_proj res + F.linear(y, W)": lambda: res.add_(F.linear(y, w_out)),
    }
    for name, fn in cases.items():
        us = graph_us(fn)
        rows.append({"batch": B, "product": name, "us": round(us, 2)})
        print(json.dumps(rows[-1]), flush=True)
    # same results?
    print("x_proj layouts equal:", torch.equal(xc @ w_x, F.linear(xc, w_xT)))
(out / "gemm_probe.json").write_text(json.dumps(rows, indent=1))
