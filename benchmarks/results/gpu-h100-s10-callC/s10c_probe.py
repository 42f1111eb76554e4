"""Probe (session 10, call C): the mixer's tiles, the padded LM head and programmatic dependent launch (PDL) of the
conv and mixer kernels, each timed inside the whole CUDA-graph step (L2 cold, as in serving), alternating in rounds,
beside the shipped settings (2c0d041); then decode.py's fused+graphs rows for both and the CUDA test."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "benchmarks"), str(HERE.parent / "scripts")]
import decode  # noqa: E402

from sm1 import step_triton as st  # noqa: E402
from sm1.batched_step import BatchedStep  # noqa: E402

T0 = time.time()
OUT = Path(sys.argv[1])
LIMIT = float(sys.argv[2])
RESULTS: dict[str, list] = {"instep": [], "step": []}
BASE = {"PAD_HEAD": False, "PDL": False, "MIXER_ROWS": 16, "MIXER_C": 64, "MIXER_WARPS": 8}
VARIANTS = {
    "2c0d041": {},
    "head": {"PAD_HEAD": True},
    "head, mixer 32x32 w4": {"PAD_HEAD": True, "MIXER_ROWS": 32, "MIXER_C": 32, "MIXER_WARPS": 4},
    "head, mixer 32x64 w8": {"PAD_HEAD": True, "MIXER_ROWS": 32, "MIXER_C": 64, "MIXER_WARPS": 8},
    "head, mixer 16x64 w4": {"PAD_HEAD": True, "MIXER_ROWS": 16, "MIXER_C": 64, "MIXER_WARPS": 4},
    "head, PDL": {"PAD_HEAD": True, "PDL": True},
    "head, PDL, mixer 32x64 w8": {"PAD_HEAD": True, "PDL": True, "MIXER_ROWS": 32, "MIXER_C": 64, "MIXER_WARPS": 8},
}


def say(*a) -> None:
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save() -> None:
    (OUT / "s10c.json").write_text(json.dumps(RESULTS, indent=1))


def use(knobs: dict) -> None:
    for k, v in (BASE | knobs).items():
        setattr(st, k, v)


def measure(model, B: int, want: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    """us a step (200 graph replays back to back, CUDA events), each kernel's us a step (profiler), and the
    first step's logits against `want` (the same start state)."""
    dev = torch.device("cuda")
    pool = model.allocate_state(B + 1)
    gen = torch.Generator(device=dev).manual_seed(7)
    pool.ssm.normal_(generator=gen)
    pool.conv.normal_(generator=gen)
    tokens = torch.randint(0, decode.VOCAB, (B,), device=dev, generator=gen)
    slots = torch.randperm(B, device=dev, generator=gen)
    start = pool.clone()
    step = BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)
    if not step.fused:
        return {"error": "fused step refused"}, None
    step(tokens, slots)  # captures the graph (its warm-up runs move the state on)
    pool.ssm.copy_(start.ssm)
    pool.conv.copy_(start.conv)
    logits = step(tokens, slots).clone()
    row = {"max_abs_diff_vs_base": (logits - want).abs().max().item() if want is not None else 0.0}
    for _ in range(10):
        step(tokens, slots)
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    for _ in range(200):
        step(tokens, slots)
    t1.record()
    torch.cuda.synchronize()
    row["us_per_step"] = round(t0.elapsed_time(t1) * 1e3 / 200, 1)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step(tokens, slots)
        torch.cuda.synchronize()
    ks = sorted((e for e in prof.key_averages() if e.device_time_total > 0), key=lambda e: -e.device_time_total)
    row["kernels_us"] = {e.key[:40]: round(e.device_time_total / 10, 1) for e in ks[:6]}
    row["all_kernels_us"] = round(sum(e.device_time_total for e in ks) / 10, 1)
    return row, logits


def main() -> None:
    device = torch.device("cuda")
    bw = decode.copy_bandwidth("cuda")
    say(f"copy bandwidth {bw / 1e9:.0f} GB/s", torch.cuda.get_device_name())
    (name, model), = decode.sm1_models(["90m"], device, torch.bfloat16).items()
    with torch.no_grad():
        for rnd in range(3):
            for B in (1024, 256, 16):
                use({})
                _, want = measure(model, B, None)
                for label, knobs in VARIANTS.items():
                    if time.time() - T0 > LIMIT * 0.6:
                        break
                    use(knobs)
                    try:
                        row, _ = measure(model, B, want)
                    except Exception as e:
                        row = {"error": repr(e)[:200]}
                    RESULTS["instep"].append({"round": rnd, "batch": B, "variant": label, "knobs": knobs, **row})
                    say("INSTEP", rnd, B, label, row.get("us_per_step"), row.get("all_kernels_us"),
                        row.get("max_abs_diff_vs_base"), row.get("error", ""), json.dumps(row.get("kernels_us", {}))[:150])
                save()
        rows = [r for r in RESULTS["instep"] if r["batch"] == 1024 and "us_per_step" in r]
        med = {v: sorted(r["us_per_step"] for r in rows if r["variant"] == v) for v in VARIANTS}
        best = min((v for v in med if med[v]), key=lambda v: med[v][len(med[v]) // 2])
        say("MEDIANS 1024", json.dumps(med), "best", best)
        (OUT / "new.json").write_text(json.dumps(VARIANTS[best]))
        for rep in range(2):
            for label in ("2c0d041", best):
                if time.time() - T0 > LIMIT * 0.92:
                    break
                use(VARIANTS[label])
                for x in decode.bench_sm1(name, model, [1, 16, 256, 1024], device, bw, 100, decode.FUSED_GRAPHS):
                    x |= {"variant": label, "rep": rep}
                    RESULTS["step"].append(x)
                    say("ROW", label, x["batch"], x.get("ms_per_step"), x.get("tokens_per_s"),
                        x.get("max_abs_diff_vs_fp32"), x.get("error", ""))
                save()
    save()
    say("done")


if __name__ == "__main__":
    main()
