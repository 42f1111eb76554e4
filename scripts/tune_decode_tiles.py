"""Time the conv and mixer tile kernels of the fused decode step (sm1/step_triton.py) alone, over launch sizes.

At batch 1024 a step of the 90M model spends half its GPU time in these two kernels, each at 2-2.5x its
memory floor. This times each kernel of one block by itself (CUDA graph of `--calls` launches, median of 5
replays) for every (rows, channels, warps) tile, checks its output against the default tile's, and prints
the memory floor beside it (the bytes it must move at the device's copy bandwidth):

    python scripts/tune_decode_tiles.py --batches 256,1024 --out benchmarks/results/tune-tiles
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from decode import sm1_models, table
from scan import copy_bandwidth

from sm1 import step_triton

ROWS, CHANNELS, WARPS = (16, 32, 64), (32, 64, 128, 256), (2, 4, 8, 16)  # 16 warps: a 16 x 256 conv tile at 8 warps
# takes 205 registers a thread (one program, 8 warps an SM), at 16 warps 128 (16 warps an SM); not yet timed


def graph_us(fn, calls: int) -> float:
    """Median µs per call of `fn`, captured `calls` times in one CUDA graph."""
    for _ in range(2):
        fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[2]


def tune(block: torch.nn.Module, B: int, calls: int, bandwidth: float) -> list[dict]:
    cfg, dev, dtype = block.mixer.cfg, block.norm.weight.device, block.norm.weight.dtype
    E, D = cfg.d_inner, cfg.d_model
    gen = torch.Generator(device=dev).manual_seed(B)
    u = torch.randn(B, D, device=dev, generator=gen).to(dtype)
    conv = torch.randn(B, cfg.d_conv - 1, E, device=dev, generator=gen).to(dtype)
    ssm = torch.randn(B, E, cfg.d_state, device=dev, generator=gen)
    slots = torch.randperm(B, device=dev, generator=gen)
    w = step_triton.decode_weights(block)
    xz = u @ w.w_in.T
    size = dtype.itemsize
    # conv: x read, window read and written, xc written; mixer: xc, z read, y written, the state read and written
    floors = {"conv": (2 * B * E + 2 * B * E * (cfg.d_conv - 1)) * size, "mixer": 3 * B * E * size + 2 * ssm.nbytes}
    ones = torch.ones(B, device=dev)
    runs = {  # each tile's rows, channels and warps go to these knobs (the conv's width to both of its widths)
        "conv": ((("CONV_ROWS",), ("CONV_C", "CONV_C_WIDE"), ("CONV_WARPS",)),
                 lambda: step_triton.conv_update(block, w, u, xz, conv, slots)[0]),
        "mixer": ((("MIXER_ROWS",), ("MIXER_C",), ("MIXER_WARPS",)),
                  lambda: step_triton.mixer_update(block, w, xz[:, :E], xz[:, E:], ones, ssm, slots)),
    }  # fmt: skip
    rows = []
    for kernel, (knobs, fn) in runs.items():
        defaults = {n: getattr(step_triton, n) for names in knobs for n in names}
        saved = conv.clone(), ssm.clone()
        want = fn().float()
        for setting in itertools.product(ROWS, CHANNELS, WARPS):
            for names, v in zip(knobs, setting, strict=True):
                for n in names:
                    setattr(step_triton, n, v)
            conv.copy_(saved[0])
            ssm.copy_(saved[1])
            row = {"kernel": kernel, "batch": B, "rows": setting[0], "channels": setting[1], "warps": setting[2]}
            try:
                row["max_abs_diff_vs_default"] = (fn().float() - want).abs().max().item()
                row["us"] = round(graph_us(fn, calls), 2)
                row["x_floor"] = round(row["us"] / (floors[kernel] / bandwidth * 1e6), 2)
            except Exception as e:  # a tile Triton cannot build (too many registers, shared memory)
                row["error"] = repr(e)[:120]
            rows.append(row)
            print(json.dumps(row), flush=True)
        for n, v in defaults.items():
            setattr(step_triton, n, v)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="90m")
    p.add_argument("--batches", default="256,1024")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/tune-tiles")
    args = p.parse_args()
    device = torch.device("cuda")
    bandwidth = copy_bandwidth("cuda")
    model = next(iter(sm1_models([args.model], device, torch.bfloat16).values()))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": torch.cuda.get_device_name(),
        "torch": torch.__version__, "command": " ".join(sys.argv), "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1),
        "rows": [],
    }  # fmt: skip
    with torch.no_grad():
        for B in (int(b) for b in args.batches.split(",")):
            result["rows"] += tune(model.layers[0], B, args.calls, bandwidth)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(result, indent=2) + "\n")
    ranked = sorted((r for r in result["rows"] if "us" in r), key=lambda r: (r["kernel"], r["batch"], r["us"]))
    print(table(ranked, ["kernel", "batch", "rows", "channels", "warps", "us", "x_floor", "max_abs_diff_vs_default"]))


if __name__ == "__main__":
    main()
