"""Profile SM1's fused decode step on a GPU, kernel by kernel: where a CUDA-graph step of the 90M model goes.

Replays the engine's BatchedStep (fused kernels, CUDA graphs) under torch.profiler and prints each kernel's
GPU time per step and launches per step, at each batch size, for `benchmarks/decode.py`'s models:

    python scripts/profile_decode_step.py --models 90m --batches 1,1024
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from decode import VOCAB, sm1_models

from sm1.batched_step import BatchedStep

STEPS = 20


def profile_step(model: torch.nn.Module, batch: int, device: torch.device) -> None:
    pool = model.allocate_state(batch + 1)
    step = BatchedStep(model, pool, scratch_slot=batch, use_graphs=True, fused=True)
    tokens = torch.randint(0, VOCAB, (batch,), device=device)
    slots = torch.arange(batch, device=device)
    for _ in range(3):
        step(tokens, slots)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(STEPS):
            step(tokens, slots)
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
    kernels.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in kernels) / STEPS
    print(f"batch {batch}: {total:.1f} us of kernels a step, {sum(e.count for e in kernels) / STEPS:.0f} launches")
    print(f"{'us/step':>9} {'launches':>8}  kernel")
    for e in kernels[:14]:
        print(f"{e.device_time_total / STEPS:9.1f} {e.count / STEPS:8.0f}  {e.key[:90]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="90m")
    p.add_argument("--batches", default="1,1024")
    args = p.parse_args()
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(device), torch.__version__)
    with torch.no_grad():
        for name, model in sm1_models(args.models.split(","), device, torch.bfloat16).items():
            print(f"== {name}")
            for batch in (int(b) for b in args.batches.split(",")):
                profile_step(model, batch, device)


if __name__ == "__main__":
    main()
