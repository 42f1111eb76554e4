"""Probe (session 11, call F): PyTorch's TunableOp (torch.cuda.tunable) picking among cuBLAS/cuBLASLt algorithms
for the step's three products, alone (24 layers' weights in a CUDA graph, as in call A) and in the whole
step (a graph captured with tuned products against one captured without, replayed rep by rep)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "benchmarks"), str(HERE)]
import decode  # noqa: E402
from s11a_probe import graph_us  # noqa: E402

from sm1.batched_step import BatchedStep  # noqa: E402

OUT = Path(sys.argv[1])
ROWS: list[dict] = []
tun = torch.cuda.tunable


def say(*a) -> None:
    print(*a, flush=True)


def products(B: int):
    dev, L, bf = torch.device("cuda"), 24, torch.bfloat16
    Dm, E, P = 768, 1536, 64
    torch.manual_seed(B)
    u, xc, y = (torch.randn(B, n, device=dev, dtype=bf) for n in (Dm, E, E))
    res = torch.randn(B, Dm, device=dev, dtype=bf)
    w_in = [torch.randn(2 * E, Dm, device=dev, dtype=bf) / 30 for _ in range(L)]
    w_x = [torch.randn(E, P, device=dev, dtype=bf) / 30 for _ in range(L)]
    w_out = [torch.randn(Dm, E, device=dev, dtype=bf) / 30 for _ in range(L)]
    return {
        "in_proj": lambda i: torch.nn.functional.linear(u, w_in[i]),
        "x_proj": lambda i: xc @ w_x[i],
        "out_proj": lambda i: res.addmm_(y, w_out[i].t()),
    }


def alone(tag: str) -> None:
    for B in (1024, 256):
        for name, fn in products(B).items():
            fn(0)  # tunes here when tuning is on (outside any capture)
            torch.cuda.synchronize()
            ROWS.append({"part": "alone", "tunable": tag, "batch": B, "product": name, "us": graph_us(fn, 24)})
            say(json.dumps(ROWS[-1]))


def step_ab(model) -> None:
    dev = torch.device("cuda")
    for B in (1024, 256, 16):
        pool = model.allocate_state(B + 1)
        gen = torch.Generator(device=dev).manual_seed(B)
        tokens = torch.randint(0, decode.VOCAB, (B,), device=dev, generator=gen)
        slots = torch.randperm(B, device=dev, generator=gen)
        steps = {}
        for tag, on in (("off", False), ("tuned", True)):
            tun.enable(on)
            tun.tuning_enable(on)
            steps[tag] = BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)
            steps[tag](tokens, slots)  # captured now, with or without the tuned products
            torch.cuda.synchronize()
        tun.enable(False)
        start = pool.clone()
        outs = {}
        for tag, step in steps.items():
            pool.ssm.copy_(start.ssm)
            pool.conv.copy_(start.conv)
            outs[tag] = step(tokens, slots).clone()
        times: dict[str, list[float]] = {t: [] for t in steps}
        for _ in range(400):
            for tag, step in steps.items():
                t0 = time.perf_counter()
                step(tokens, slots)
                torch.cuda.synchronize()
                times[tag].append((time.perf_counter() - t0) * 1e3)
        for tag, ts in times.items():
            ts.sort()
            ROWS.append({"part": "step", "tunable": tag, "batch": B, "median_ms": round(ts[200], 4),
                         "p25_ms": round(ts[100], 4), "p75_ms": round(ts[300], 4),
                         "max_abs_diff_vs_off": (outs[tag] - outs["off"]).abs().max().item()})  # fmt: skip
            say(json.dumps(ROWS[-1]))


def main() -> None:
    say("copy bandwidth", round(decode.copy_bandwidth("cuda") / 1e9), "GB/s", torch.cuda.get_device_name())
    tun.set_filename(str(OUT / "tunableop_results.csv"))
    tun.set_max_tuning_iterations(30)
    with torch.no_grad():
        alone("off")
        tun.enable(True)
        tun.tuning_enable(True)
        t0 = time.time()
        alone("tuned")
        say("tuning + timing took", round(time.time() - t0, 1), "s")
        say("results", json.dumps(tun.get_results())[:3000])
        tun.enable(False)
        (_, model), = decode.sm1_models(["90m"], torch.device("cuda"), torch.bfloat16).items()
        step_ab(model)
    (OUT / "s11f.json").write_text(json.dumps(ROWS, indent=1))
    say("done")


if __name__ == "__main__":
    main()
