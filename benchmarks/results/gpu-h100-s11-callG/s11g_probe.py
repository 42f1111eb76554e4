"""Probe (session 11, call G: call B's comparison timed rep by rep, alternating): a synchronized fused+graphs step with the staged graph inputs (GraphInputs: one
copy a call in steady state) against the old staging (two fills and two copies), alternating, as decode.py
times it (median of synchronized calls) and as the engine calls it (a new tokens tensor each step)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "benchmarks")]
import decode  # noqa: E402

from sm1 import batched_step  # noqa: E402
from sm1.batched_step import BatchedStep  # noqa: E402

OUT = Path(sys.argv[1])
NEW_STAGE = batched_step.GraphInputs.stage


def old_stage(self, tokens, slots):
    """The staging of 3604725: both buffers filled, then both copied, every call."""
    B = tokens.shape[0]
    self.tokens.fill_(0)
    self.slots.fill_(self.pad_slot)
    self.tokens[:B].copy_(tokens)
    self.slots[:B].copy_(slots)


def sync_ms(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3)
    return round(sorted(ts)[len(ts) // 2], 4)


def main() -> None:
    dev = torch.device("cuda")
    (_, model), = decode.sm1_models(["90m"], dev, torch.bfloat16).items()
    rows = []
    with torch.no_grad():
        for B in (1, 16, 256, 1024):
            pool = model.allocate_state(B + 1)
            step = BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)
            gen = torch.Generator(device=dev).manual_seed(B)
            tokens = torch.randint(0, decode.VOCAB, (B,), device=dev, generator=gen)
            slots = torch.randperm(B, device=dev, generator=gen)
            fresh = [tokens.clone() for _ in range(8)]
            i = [0]

            def engine_like():
                i[0] += 1
                step(fresh[i[0] % 8], slots)

            for stage in (old_stage, NEW_STAGE):  # warm both
                batched_step.GraphInputs.stage = stage
                step(tokens, slots)
            times = {"old": [], "new": []}
            for _ in range(500):
                for name, stage in (("old", old_stage), ("new", NEW_STAGE)):
                    batched_step.GraphInputs.stage = stage
                    step(tokens, slots)  # re-stage fully under this staging, untimed
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    step(tokens, slots)
                    torch.cuda.synchronize()
                    times[name].append((time.perf_counter() - t0) * 1e3)
            for name, ts in times.items():
                ts.sort()
                row = {"batch": B, "staging": name, "median_ms": round(ts[250], 4), "p25_ms": round(ts[125], 4),
                       "p75_ms": round(ts[375], 4)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            batched_step.GraphInputs.stage = NEW_STAGE
    (OUT / "s11g.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
