"""Decode: one batched step of every session (the serving hot path), each path side by side in one run, with
the memory floor beside it, and a GPT of the same size with a KV cache.

SM1 paths (the engine's BatchedStep on a slot pool, so what is timed is what the server runs):
  eager          model.step, about 25 kernels a layer plus a gather and a scatter of the state rows
  eager+graphs   the same captured in a CUDA graph per power-of-two batch (CUDA)
  fused          Triton kernels on the pool rows in place: one row, one persistent kernel for every layer and
                 the head (sm1/step_persistent.py); more rows, five launches a layer (sm1/step_triton.py)
  fused+graphs   both (CUDA)
  compiled+graphs  with --compile: torch.compile of the eager step (Inductor), captured like eager+graphs
Each path's logits are compared with the fp32 eager step of the same model (max |diff|; a bf16 model is
compared with its fp32 copy, so the bf16 rounding is in the figure). The floor is one read of the weights
plus one read and one write of each session's state, at the device's measured copy bandwidth.

Beside it, a GPT (sm1/gpt.py, SDPA) of about the same parameter count with a KV cache at 1K, 4K and 16K
tokens of context: ms per token at batch 1, tokens/s at batch 16 and 256 (OOM where the cache does not
fit), and its cache per session. With --mamba-src (an unpacked mamba-ssm source tree), the Triton
`selective_state_update` of mamba-ssm is timed beside our state-update kernel, loaded from its file
without the package's CUDA extension.

    python benchmarks/decode.py --out benchmarks/results/decode-gpu            # a GPU: default + 90M model
    python benchmarks/decode.py --device cpu --models default --batches 1,16,64 --out ...   # this CPU, eager
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import torch
from compare_models import matched_gpt_layers
from scan import copy_bandwidth, time_ms

from sm1 import step_persistent, step_triton
from sm1.batched_step import BatchedStep
from sm1.checkpoint import load
from sm1.gpt import GPT, GPTConfig
from sm1.model import SM1, SM1Config

VOCAB = 443


def sm1_models(names: list[str], device: torch.device, dtype: torch.dtype) -> dict[str, SM1]:
    models: dict[str, SM1] = {}
    for name in names:
        if name == "default":
            models["default (3.4M)"] = load(None, device).model.to(dtype)
        elif name == "90m":
            torch.manual_seed(0)
            models["90M d768x24"] = SM1(SM1Config(vocab_size=VOCAB, d_model=768, n_layer=24)).to(device, dtype).eval()
        else:
            d, n = (int(v) for v in name.split("x"))
            torch.manual_seed(0)
            models[f"d{d}x{n}"] = SM1(SM1Config(vocab_size=VOCAB, d_model=d, n_layer=n)).to(device, dtype).eval()
    return models


FUSED_GRAPHS = {"fused+graphs": (True, True, False)}


def sm1_paths(device: torch.device, compiled: bool = False) -> dict[str, tuple[bool, bool, bool]]:
    """name -> (cuda graphs, fused, torch.compile of the eager step)"""
    paths = {"eager": (False, False, False)}
    cuda = device.type == "cuda"
    if cuda:
        paths["eager+graphs"] = (True, False, False)
        if compiled:
            paths["compiled+graphs"] = (True, False, True)
    if step_triton.available(device):
        paths["fused"] = (False, True, False)
        if cuda:
            paths["fused+graphs"] = (True, True, False)
    return paths


def bench_sm1(name: str, model: SM1, batches: list[int], device: torch.device, bandwidth: float, reps: int,
              paths: dict[str, tuple[bool, bool, bool]] | None = None) -> list[dict]:  # fmt: skip
    reference = SM1(model.config).to(device).eval()
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = []
    for B in batches:
        gen = torch.Generator(device=device).manual_seed(B)
        tokens = torch.randint(0, VOCAB, (B,), device=device, generator=gen)
        slots = torch.arange(B, device=device)
        ref_pool = reference.allocate_state(B + 1)
        ref_pool.ssm.normal_(generator=gen)
        ref_pool.conv.normal_(generator=gen)
        start = ref_pool.clone()
        want = reference.step(tokens, ref_pool, slots=slots)
        state_bytes = ref_pool.select([0]).nbytes()
        floor_ms = (weight_bytes + 2 * B * state_bytes) / bandwidth * 1e3
        for path, (graphs, fused, compiled) in (paths or sm1_paths(device)).items():
            pool = model.allocate_state(B + 1)
            pool.ssm.copy_(start.ssm)
            pool.conv.copy_(start.conv)
            if compiled:  # an instance attribute over the method: BatchedStep captures the compiled step
                model.step = torch.compile(SM1.step.__get__(model), dynamic=False)
            try:
                row = time_path(model, pool, B, graphs, fused, tokens, slots, want, device, reps)
            except Exception as e:  # OOM, or a step torch.compile cannot build here: a row that says so
                row = {"error": repr(e)[:200]}
            finally:
                model.__dict__.pop("step", None)
            if "ms_per_step" in row:
                row |= {"floor_ms": round(floor_ms, 4), "x_floor": round(row["ms_per_step"] / floor_ms, 1)}
            rows.append({"model": name, "batch": B, "path": path} | row)
            print(json.dumps(rows[-1]), flush=True)
    return rows


def time_path(model: SM1, pool, B: int, graphs: bool, fused: bool, tokens, slots, want, device, reps: int) -> dict:
    """One path's ms a step and its logits' distance from the fp32 eager step's (`want`)."""
    step = BatchedStep(model, pool, scratch_slot=B, use_graphs=graphs, fused=fused)
    if fused and not step.fused:
        return {"error": "fused step unavailable (see log)"}
    diff = (step(tokens, slots).float() - want).abs().max().item()
    ms = time_ms(functools.partial(step, tokens, slots), device.type, reps)
    return {"ms_per_step": round(ms, 4), "tokens_per_s": round(B / ms * 1e3), "max_abs_diff_vs_fp32": diff}


# launch settings of the fused step for --sweep, each a change of these knobs from the defaults (the first: none)
KNOBS = {"MAX_ROWS": (step_persistent, "MAX_ROWS"), "GRID_SYNC": (step_persistent, "GRID_SYNC"),
         "persistent BLOCK_C": (step_persistent, "BLOCK_C"), "persistent NUM_WARPS": (step_persistent, "NUM_WARPS"),
         **{k: (step_triton, k) for k in ("CONV_ROWS", "CONV_C", "CONV_WARPS", "MIXER_ROWS", "MIXER_C", "MIXER_WARPS",
                                          "MIXER_ROWS_TALL", "PAD_HEAD")}}
SWEEP: list[dict] = [
    {}, {"GRID_SYNC": False}, {"MAX_ROWS": 0}, {"MAX_ROWS": 4}, {"CONV_C": 256}, {"MIXER_WARPS": 4},
    {"MIXER_ROWS_TALL": 16}, {"PAD_HEAD": False},
]  # fmt: skip


def sweep_step(name: str, model: SM1, batches: list[int], device: torch.device, bandwidth: float, reps: int
               ) -> list[dict]:  # fmt: skip
    """The fused+graphs step over the kernels' launch settings (to choose the defaults), each setting checked
    against the fp32 eager step like every path."""
    defaults = {k: getattr(module, attr) for k, (module, attr) in KNOBS.items()}
    rows = []
    for change in SWEEP:
        knobs = defaults | change
        for k, v in knobs.items():
            setattr(*KNOBS[k], v)
        rows += [knobs | r for r in bench_sm1(name, model, batches, device, bandwidth, reps, FUSED_GRAPHS)]
    for k, v in defaults.items():
        setattr(*KNOBS[k], v)
    return rows


def matched_gpt(model: SM1, n_head: int = 4) -> GPT:
    """A GPT at the SM1's width with the depth whose parameter count is closest (as compare_models picks it)."""
    target = sum(p.numel() for p in model.parameters())
    n = matched_gpt_layers(target, VOCAB, model.config.d_model, n_head)
    return GPT(GPTConfig(vocab_size=VOCAB, d_model=model.config.d_model, n_layer=n, n_head=n_head))


def gpt_step_at(gpt: GPT, tokens: torch.Tensor, cache, context: int) -> torch.Tensor:
    """One step after exactly `context` cached tokens (the cache is rewound each time)."""
    cache.length = context
    return gpt.step(tokens, cache)


def bench_gpt(name: str, sm1: SM1, contexts: list[int], batches: list[int], device, dtype, reps: int) -> list[dict]:
    torch.manual_seed(0)
    gpt = matched_gpt(sm1).to(device, dtype).eval()
    label = f"GPT {gpt.config.n_layer}L beside {name}"
    rows = []
    for context in contexts:
        for B in batches:
            row = {"model": label, "context": context, "batch": B}
            try:
                cache = gpt.allocate_state(B, max_len=context + 1)
                cache.length = context  # a full cache of this length: the step attends over all of it
                tokens = torch.randint(0, VOCAB, (B,), device=device)
                ms = time_ms(functools.partial(gpt_step_at, gpt, tokens, cache, context), device.type, reps)
                row |= {"ms_per_token": round(ms, 4), "tokens_per_s": round(B / ms * 1e3),
                        "cache_mb_per_session": round(cache.nbytes() / B / 2**20, 2)}  # fmt: skip
                del cache
            except torch.OutOfMemoryError:
                row["error"] = "OOM"
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def load_mamba_module(src: Path, name: str) -> types.ModuleType:
    """Import mamba_ssm.<name> (e.g. "ops.triton.selective_state_update") from its file: the package's own
    __init__ imports every CUDA extension, built or not, so the parent packages are registered empty (with
    their folders, for the module's own imports of its siblings)."""
    parts = f"mamba_ssm.{name}".split(".")
    folder = src
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        folder = folder / parts[i - 1]
        sys.modules.setdefault(parent, types.ModuleType(parent)).__path__ = [str(folder)]
    return importlib.import_module(f"mamba_ssm.{name}")


def bench_mamba_peer(src: Path, model: SM1, batches: list[int], device, reps: int) -> list[dict]:
    """mamba-ssm's Triton selective_state_update (dt already projected) beside our mixer kernel, which does
    more: x_proj and dt_proj as well as the update, the readout and the gate."""
    path = src / "mamba_ssm" / "ops" / "triton" / "selective_state_update.py"
    try:
        module = load_mamba_module(src, "ops.triton.selective_state_update")
    except Exception as e:  # its imports or its Triton version do not fit here
        return [{"path": "mamba-ssm selective_state_update", "error": f"cannot load {path}: {e!r}"}]
    cfg = model.config
    E, N = cfg.d_inner, cfg.d_state
    block = model.layers[0]
    mixer = block.mixer
    rows = []
    for B in batches:
        gen = torch.Generator(device=device).manual_seed(0)
        state = torch.randn(B, E, N, device=device, generator=gen)
        x, z, dt = (torch.randn(B, E, device=device, generator=gen) for _ in range(3))
        Bm, Cm = torch.randn(B, N, device=device, generator=gen), torch.randn(B, N, device=device, generator=gen)
        A = -torch.exp(mixer.A_log.float())
        theirs = functools.partial(module.selective_state_update, state, x, dt, A, Bm, Cm, mixer.D.float(), z=z,
                                   dt_bias=mixer.dt_proj.bias.float(), dt_softplus=True)  # fmt: skip
        lp, rs, slots = mixer.D.dtype, torch.ones(B, device=device), torch.arange(B, device=device)
        w = step_triton.decode_weights(block)
        ours = functools.partial(step_triton.mixer_update, block, w, x.to(lp), z.to(lp), rs, state, slots)
        for path, fn in (("mamba-ssm selective_state_update", theirs), ("sm1 x_proj + mixer kernel", ours)):
            ms = time_ms(fn, device.type, reps)
            rows.append({"path": path, "d_inner": E, "batch": B, "ms_per_layer": round(ms, 4)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--models", default="default,90m", help="default, 90m, or DxN (d_model x n_layer), comma-separated")
    p.add_argument("--dtype", default="auto", help="auto: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--batches", default="1,16,256,1024")
    p.add_argument("--contexts", default="1024,4096,16384", help="GPT KV-cache contexts ('' to skip the GPT)")
    p.add_argument("--gpt-batches", default="1,16,256")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--mamba-src", type=Path, help="an unpacked mamba-ssm source tree, for its Triton state update")
    p.add_argument("--sweep", action="store_true", help="also time the fused step over its kernels' launch sizes")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the eager step (CUDA graphs)")
    p.add_argument("--out", default="benchmarks/results/decode")
    args = p.parse_args()
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bf16": torch.bfloat16,
             "fp32": torch.float32}[args.dtype]  # fmt: skip
    batches = [int(b) for b in args.batches.split(",")]
    bandwidth = copy_bandwidth(device.type)
    cpu = f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus"
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"{machine}, torch {torch.__version__}, {dtype}, copy bandwidth {bandwidth / 1e9:.0f} GB/s", flush=True)
    models = sm1_models(args.models.split(","), device, dtype)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
        "torch": torch.__version__, "dtype": str(dtype), "command": " ".join(sys.argv),
        "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1), "sm1": [], "gpt": [], "mamba_peer": [], "sweep": [],
    }  # fmt: skip
    with torch.no_grad():
        for name, model in models.items():
            if args.sweep:
                result["sweep"] += sweep_step(name, model, batches, device, bandwidth, args.reps)
            paths = sm1_paths(device, compiled=args.compile)
            result["sm1"] += bench_sm1(name, model, batches, device, bandwidth, args.reps, paths)
            if args.contexts:
                contexts = [int(c) for c in args.contexts.split(",")]
                gpt_batches = [int(b) for b in args.gpt_batches.split(",")]
                result["gpt"] += bench_gpt(name, model, contexts, gpt_batches, device, dtype, args.reps)
            if args.mamba_src:
                result["mamba_peer"] += bench_mamba_peer(args.mamba_src, model, batches, device, args.reps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result["sm1"], ["model", "batch", "path", "ms_per_step", "tokens_per_s", "floor_ms", "x_floor",
                                "max_abs_diff_vs_fp32", "error"]))  # fmt: skip
    if result["sweep"]:
        print(table(result["sweep"], ["model", "batch", *KNOBS, "ms_per_step", "tokens_per_s", "max_abs_diff_vs_fp32",
                                      "error"]))  # fmt: skip
    if result["gpt"]:
        print(table(result["gpt"], ["model", "context", "batch", "ms_per_token", "tokens_per_s",
                                    "cache_mb_per_session", "error"]))  # fmt: skip


if __name__ == "__main__":
    main()
