"""Time the conv and mixer tile kernels of the fused decode step (sm1/step_triton.py) alone, over launch sizes.

At batch 1024 a step of the 90M model spends half its GPU time in these two kernels, each at 2-2.5x its
memory floor. This times each kernel of one block by itself (CUDA graph of `--calls` launches, median of 5
replays) for every (rows, channels, warps) tile, checks its output against the default tile's, and prints
the memory floor beside it (the bytes it must move at the device's copy bandwidth). Then the in_proj + conv
kernel over its (rows, channels, BLOCK_K, warps, stages) tiles beside what it replaces, cuBLAS's in_proj and
the conv kernel, each tile's xc, z and windows checked against theirs:

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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from decode import sm1_models, table
from scan import copy_bandwidth

from sm1 import step_triton

ROWS, CHANNELS, WARPS = (16, 32, 64), (32, 64, 128, 256), (2, 4, 8)
IN_CONV_TILES = list(itertools.product((64, 128), (64, 128, 256), (64,), (4, 8), (3, 4)))  # M, N, K, warps, stages
IN_CONV_KNOBS = ("IN_CONV_M", "IN_CONV_N", "IN_CONV_K", "IN_CONV_WARPS", "IN_CONV_STAGES")


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


def tune_in_conv(block: torch.nn.Module, B: int, calls: int, bandwidth: float) -> list[dict]:
    """The in_proj + conv kernel over IN_CONV_TILES beside cuBLAS's in_proj followed by the conv kernel (the
    path below IN_CONV_MIN_ROWS, with its default tiles), on the same rows; each tile's xc, z and moved
    windows are checked against that path's (max |diff|)."""
    cfg, dev, dtype = block.mixer.cfg, block.norm.weight.device, block.norm.weight.dtype
    E, D = cfg.d_inner, cfg.d_model
    gen = torch.Generator(device=dev).manual_seed(B)
    u = torch.randn(B, D, device=dev, generator=gen).to(dtype)
    conv = torch.randn(B, cfg.d_conv - 1, E, device=dev, generator=gen).to(dtype)
    slots = torch.randperm(B, device=dev, generator=gen)
    w = step_triton.decode_weights(block)
    size = dtype.itemsize
    # W_in and u read, the window read and written, xc and z written
    floor = (w.w_in.numel() + B * D + 2 * B * E * (cfg.d_conv - 1) + 2 * B * E) * size

    def cublas() -> tuple[torch.Tensor, ...]:
        xz = F.linear(u, w.w_in)
        return step_triton.conv_update(block, w, u, xz, conv, slots)[0], xz[:, E:]

    def fused() -> tuple[torch.Tensor, ...]:
        return step_triton.in_conv_update(block, w, u, conv, slots)[:2]

    saved = conv.clone()
    want = *(t.float() for t in cublas()), conv.float()
    runs = [("in_proj+conv cuBLAS", cublas, None)] + [("in_proj+conv", fused, t) for t in IN_CONV_TILES]
    defaults = {n: getattr(step_triton, n) for n in IN_CONV_KNOBS}
    rows = []
    for kernel, fn, tile in runs:
        row = {"kernel": kernel, "batch": B}
        if tile is not None:
            for n, v in zip(IN_CONV_KNOBS, tile, strict=True):
                setattr(step_triton, n, v)
            row |= dict(zip(("rows", "channels", "block_k", "warps", "stages"), tile, strict=True))
        try:
            conv.copy_(saved)
            got = *(t.float() for t in fn()), conv.float()
            row["max_abs_diff_vs_cublas"] = max((g - v).abs().max().item() for g, v in zip(got, want, strict=True))
            row["us"] = round(graph_us(fn, calls), 2)
            row["x_floor"] = round(row["us"] / (floor / bandwidth * 1e6), 2)
        except Exception as e:  # a tile Triton cannot build (too many registers, shared memory)
            row["error"] = repr(e)[:120]
        for n, v in defaults.items():
            setattr(step_triton, n, v)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="90m")
    p.add_argument("--batches", default="256,1024")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--kernels", default="tiles,in_conv", help="tiles (the conv and mixer tiles), in_conv, or both")
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
            if "tiles" in args.kernels.split(","):
                result["rows"] += tune(model.layers[0], B, args.calls, bandwidth)
            if "in_conv" in args.kernels.split(","):
                result["rows"] += tune_in_conv(model.layers[0], B, args.calls, bandwidth)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(result, indent=2) + "\n")
    ranked = sorted((r for r in result["rows"] if "us" in r), key=lambda r: (r["kernel"], r["batch"], r["us"]))
    print(table(ranked, ["kernel", "batch", "rows", "channels", "block_k", "warps", "stages", "us", "x_floor",
                         "max_abs_diff_vs_default", "max_abs_diff_vs_cublas"]))  # fmt: skip


if __name__ == "__main__":
    main()
