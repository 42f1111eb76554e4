"""Probe (session 10, call B): in_proj and the conv in one Triton GEMM (INCONV), the mixer's tiles timed inside the
whole step (L2 cold, as in serving), and the padded LM head, beside the shipped step (2c0d041's settings), in one call."""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "benchmarks"), str(HERE.parent / "scripts")]
import decode  # noqa: E402
from scan import time_ms  # noqa: E402

from sm1 import step_triton as st  # noqa: E402
from sm1.batched_step import BatchedStep  # noqa: E402

T0 = time.time()
OUT = Path(sys.argv[1])
LIMIT = float(sys.argv[2])
RESULTS: dict[str, list] = {"sweep": [], "step": []}
BASE = {"PAD_HEAD": False, "INCONV": False, "MIXER_ROWS": 16, "MIXER_C": 64, "MIXER_WARPS": 8}
INC = ("INCONV_M", "INCONV_N", "INCONV_K", "INCONV_WARPS", "INCONV_STAGES")


def say(*a) -> None:
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save() -> None:
    (OUT / "s10b.json").write_text(json.dumps(RESULTS, indent=1))


def use(knobs: dict) -> None:
    for k, v in (BASE | knobs).items():
        setattr(st, k, v)


def measure(model, B: int, want: torch.Tensor | None) -> dict:
    """ms a step (CUDA graph), each kernel's us a step (profiler), and the logits against `want`."""
    dev = torch.device("cuda")
    pool = model.allocate_state(B + 1)
    gen = torch.Generator(device=dev).manual_seed(7)
    pool.ssm.normal_(generator=gen)
    pool.conv.normal_(generator=gen)
    tokens = torch.randint(0, decode.VOCAB, (B,), device=dev, generator=gen)
    slots = torch.randperm(B, device=dev, generator=gen)
    step = BatchedStep(model, pool, scratch_slot=B, use_graphs=True, fused=True)
    if not step.fused:
        return {"error": "fused step refused"}, None
    logits = step(tokens, slots).float()
    row = {"max_abs_diff_vs_base": (logits - want).abs().max().item() if want is not None else 0.0}
    row["ms"] = round(time_ms(lambda: step(tokens, slots), "cuda", 50), 4)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step(tokens, slots)
        torch.cuda.synchronize()
    ks = sorted((e for e in prof.key_averages() if e.device_time_total > 0), key=lambda e: -e.device_time_total)
    row["kernels_us"] = {e.key[:40]: round(e.device_time_total / 10, 1) for e in ks[:7]}
    row["all_kernels_us"] = round(sum(e.device_time_total for e in ks) / 10, 1)
    return row, logits


def sweep(model, B: int, variants: list[dict]) -> list[dict]:
    use({})
    base, want = measure(model, B, None)
    RESULTS["sweep"].append({"batch": B, "knobs": {}, **base})
    say("SWEEP base", json.dumps(base))
    for knobs in variants:
        if time.time() - T0 > LIMIT * 0.55:
            say("sweep cut short (time)")
            break
        use(knobs)
        try:
            row, _ = measure(model, B, want)
        except Exception as e:
            row = {"error": repr(e)[:200]}
        RESULTS["sweep"].append({"batch": B, "knobs": knobs, **row})
        say("SWEEP", json.dumps(knobs), json.dumps(row))
        save()
    use({})
    return [r for r in RESULTS["sweep"] if r["batch"] == B and "ms" in r]


def main() -> None:
    device = torch.device("cuda")
    bw = decode.copy_bandwidth("cuda")
    say(f"copy bandwidth {bw / 1e9:.0f} GB/s", torch.cuda.get_device_name())
    (name, model), = decode.sm1_models(["90m"], device, torch.bfloat16).items()
    with torch.no_grad():
        inconv = [{"INCONV": True, **dict(zip(INC, c, strict=True))}
                  for c in itertools.product((64, 128), (64, 128), (64, 128), (4, 8), (3,))]
        mixer = [{"MIXER_ROWS": r, "MIXER_C": c, "MIXER_WARPS": w}
                 for r, c, w in itertools.product((16, 32), (32, 64, 128), (4, 8)) if (r, c, w) != (16, 64, 8)]
        rows = sweep(model, 1024, [{"PAD_HEAD": True}, *inconv, *mixer])
        best_inc = min((r for r in rows if r["knobs"].get("INCONV")), key=lambda r: r["ms"], default=None)
        best_mix = min((r for r in rows if "MIXER_C" in r["knobs"]), key=lambda r: r["ms"], default=None)
        base_ms = min(r["ms"] for r in rows if not r["knobs"])
        new = {"PAD_HEAD": True}
        for best in (best_inc, best_mix):
            if best is not None and best["ms"] < base_ms:
                new |= best["knobs"]
        say("NEW", json.dumps(new))
        (OUT / "new.json").write_text(json.dumps(new))
        for rep in range(2):
            for label, knobs in (("2c0d041", {}), ("new", new)):
                if time.time() - T0 > LIMIT * 0.9:
                    break
                use(knobs)
                for x in decode.bench_sm1(name, model, [1, 16, 256, 1024], device, bw, 100, decode.FUSED_GRAPHS):
                    x |= {"variant": label, "knobs": knobs, "rep": rep}
                    RESULTS["step"].append(x)
                    say("ROW", label, x["batch"], x.get("ms_per_step"), x.get("tokens_per_s"),
                        x.get("max_abs_diff_vs_fp32"), x.get("error", ""))
                save()
    save()
    say("done")


if __name__ == "__main__":
    main()
