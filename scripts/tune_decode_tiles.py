"""Time the conv and mixer tile kernels of the fused decode step (sm1/step_triton.py) over launch sizes, inside
the whole CUDA-graph step.

At batch 1024 a step of the 90M model spends half its GPU time in these two kernels. Each runs once a layer
on that layer's state, which is not in L2 (24 layers of 1024 rows of state are about 0.4 GB): timed alone on
one block's buffers, over and over, a kernel reads L2-warm data and ranks the tiles differently (the mixer's
16 x 64 tile at 8 warps was fastest alone, 16.7 us, and is not in the step: benchmarks/RESULTS.md,
2026-12-05). So this replays the engine's step (BatchedStep: fused kernels, CUDA graph) for every (rows,
channels, warps) tile of one kernel, the other kernel at its default, and reads the kernel's GPU time a step
from the profiler; it checks the first step's logits against the default tile's:

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
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from decode import VOCAB, sm1_models, table

from sm1 import step_triton
from sm1.batched_step import BatchedStep

ROWS, CHANNELS, WARPS = (16, 32), (32, 64, 128, 256), (4, 8, 16)
KNOBS = {  # each tile's rows, channels and warps go to these knobs (the conv's width to both of its widths)
    "conv": (("CONV_ROWS",), ("CONV_C", "CONV_C_WIDE"), ("CONV_WARPS",)),
    "mixer": (("MIXER_ROWS",), ("MIXER_C",), ("MIXER_WARPS",)),
}
STEPS = 10


def step_kernels(model: torch.nn.Module, B: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The first step's logits from a seeded state, and each kernel's GPU µs a step over STEPS graph replays."""
    dev = model.embedding.weight.device
    gen = torch.Generator(device=dev).manual_seed(B)
    pool = model.allocate_state(B + 1)
    pool.ssm.normal_(generator=gen)
    pool.conv.normal_(generator=gen)
    start = pool.clone()
    tokens = torch.randint(0, VOCAB, (B,), device=dev, generator=gen)
    slots = torch.randperm(B, device=dev, generator=gen)
    step = BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)
    step(tokens, slots)  # captures the graph; its warm-up steps move the state on
    pool.ssm.copy_(start.ssm)
    pool.conv.copy_(start.conv)
    logits = step(tokens, slots).clone()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            step(tokens, slots)
        torch.cuda.synchronize()
    return logits, {e.key: e.device_time_total / STEPS for e in prof.key_averages() if e.device_time_total > 0}


def tune(model: torch.nn.Module, B: int) -> list[dict]:
    rows = []
    for kernel, knobs in KNOBS.items():
        defaults = {n: getattr(step_triton, n) for names in knobs for n in names}
        want, _ = step_kernels(model, B)
        for setting in itertools.product(ROWS, CHANNELS, WARPS):
            for names, v in zip(knobs, setting, strict=True):
                for n in names:
                    setattr(step_triton, n, v)
            row = {"kernel": kernel, "batch": B, "rows": setting[0], "channels": setting[1], "warps": setting[2]}
            try:
                logits, us = step_kernels(model, B)
                row["max_abs_diff_vs_default"] = (logits - want).abs().max().item()
                row["us_per_step"] = round(us[f"_{kernel}_kernel"], 1)
                row["all_kernels_us"] = round(sum(us.values()), 1)
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
    p.add_argument("--out", default="benchmarks/results/tune-tiles")
    args = p.parse_args()
    device = torch.device("cuda")
    model = next(iter(sm1_models([args.model], device, torch.bfloat16).values()))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": torch.cuda.get_device_name(),
        "torch": torch.__version__, "command": " ".join(sys.argv), "rows": [],
    }  # fmt: skip
    with torch.no_grad():
        for B in (int(b) for b in args.batches.split(",")):
            result["rows"] += tune(model, B)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(result, indent=2) + "\n")
    ranked = sorted((r for r in result["rows"] if "us_per_step" in r),
                    key=lambda r: (r["kernel"], r["batch"], r["us_per_step"]))  # fmt: skip
    print(table(ranked, ["kernel", "batch", "rows", "channels", "warps", "us_per_step", "all_kernels_us",
                         "max_abs_diff_vs_default"]))  # fmt: skip


if __name__ == "__main__":
    main()
