"""Layer and training benchmark: the whole Mamba layer (MambaBlock, bf16 autocast) forward+backward through the
fused selective scan (sm1/selective_scan_triton.py) and through the current path (sm1.scan's Triton scan with
PyTorch around it), at d_state 1 and 16 through the same code; then training tokens/s of the 90M model.

Layer rows: median ms of forward+backward, peak memory beyond the inputs, and the error of y and of every
gradient (u's and the parameters', max over them) against the current path in fp32 without autocast. The
goal of issue 8: d_state=1 fused at least 1.5x faster than d_state=16 fused.

With --mamba-src DIR (a mamba-ssm source tree with its CUDA extension selective_scan_cuda built in place,
e.g. `pip install -e . --no-build-isolation` or `python setup.py build_ext --inplace` in DIR), mamba-ssm's
`selective_scan_fn` is timed beside ours: the scan alone (its (B, E, T) layout), our layer with it in place
of the fused scan (the transposes to its layout included), and training with it. Otherwise: "not available".

    python benchmarks/layer.py --out benchmarks/results/layer                          # a GPU: the issue's shapes
    python benchmarks/layer.py --out benchmarks/results/layer --mamba-src ~/mamba      # + mamba-ssm beside
    python benchmarks/layer.py --quick --out /tmp/layer                                 # CPU smoke test

--sweep also times the fused kernels' launch sizes (their defaults are first guesses).

On the CPU only the current path runs (and the fused one under TRITON_INTERPRET=1, slowly).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from decode import load_mamba_module
from scan import peak_extra_mb, print_table, rel_err, sync, time_ms

import sm1.model as sm1_model
from sm1 import selective_scan_triton
from sm1.model import SM1, MambaBlock, SM1Config

VOCAB = 443
GOAL = 1.5  # d_state=16 fused ms / d_state=1 fused ms


def load_mamba_scan(src: Path | None):
    """mamba-ssm's selective_scan_fn, or the reason it is not available."""
    if src is None:
        return None, "not available (no --mamba-src)"
    try:
        sys.path.insert(0, str(src))  # where selective_scan_cuda*.so is built in place
        import selective_scan_cuda  # noqa: F401

        return load_mamba_module(src, "ops.selective_scan_interface").selective_scan_fn, "available"
    except Exception as e:  # not built, or its imports do not fit here: report it, never crash
        return None, f"not available: {e!r}"


def mamba_in_our_layer(selective_scan_fn):
    """selective_scan_triton's signature on mamba-ssm's kernel. Its scan has no initial state: the states
    of this benchmark are zeros."""

    def scan(x, dt_raw, A, Bm, Cm, D, z, h0=None, chunk=None):
        bt = [t.transpose(1, 2) for t in (x, dt_raw, Bm, Cm, z)]  # (B, E or N, T); it makes them contiguous
        u, delta, Bt, Ct, zt = bt
        y, last = selective_scan_fn(u, delta, A.float(), Bt, Ct, D.float(), zt, delta_softplus=True,
                                    return_last_state=True)  # fmt: skip
        return y.transpose(1, 2), last

    return scan


@contextlib.contextmanager
def layer_path(name: str, mamba_fn=None):
    """MambaBlock.forward through one path: "fused", "current", or "mamba-ssm" (its kernel in the fused slot)."""
    saved = (sm1_model.FUSED_LAYER, selective_scan_triton.selective_scan_triton)
    sm1_model.FUSED_LAYER = name != "current"
    if name == "mamba-ssm":
        selective_scan_triton.selective_scan_triton = mamba_in_our_layer(mamba_fn)
    try:
        yield
    finally:
        sm1_model.FUSED_LAYER, selective_scan_triton.selective_scan_triton = saved


def autocast(device: torch.device, enabled: bool = True):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def layer_fwd_bwd(block: MambaBlock, u: torch.Tensor, gy: torch.Tensor, device, bf16: bool = True):
    ssm = torch.zeros(u.shape[0], block.cfg.d_inner, block.cfg.d_state, device=device)
    conv = torch.zeros(u.shape[0], block.cfg.d_conv - 1, block.cfg.d_inner, device=device)
    with autocast(device, bf16):
        y, _, _ = block(u, ssm, conv)
    y.backward(gy.to(y.dtype))
    return y


def layer_outputs(block: MambaBlock, u, gy, device, bf16: bool) -> list[torch.Tensor]:
    """y, then the gradients of u and of every parameter, from one forward+backward."""
    block.zero_grad(set_to_none=True)
    u = u.detach().requires_grad_()
    y = layer_fwd_bwd(block, u, gy, device, bf16)
    return [y.detach(), u.grad] + [p.grad for p in block.parameters()]


def bench_layer(d_model: int, bsz: int, length: int, device, reps: int, paths: list[str], mamba_fn) -> list[dict]:
    rows = []
    for d_state in (1, 16):
        torch.manual_seed(0)
        block = MambaBlock(SM1Config(vocab_size=VOCAB, d_model=d_model, d_state=d_state)).to(device)
        with torch.no_grad():  # trained-looking parameters, not the init's zeros and ones
            for p in block.parameters():
                p.add_(0.02 * torch.randn_like(p))
        u = torch.randn(bsz, length, d_model, device=device)
        gy = torch.randn(bsz, length, d_model, device=device)
        with layer_path("current"):
            ref = [t.double() for t in layer_outputs(block, u, gy, device, bf16=False)]
        for name in paths:
            row = {"layer": f"d_state={d_state} {name}", "d_state": d_state, "path": name}
            with layer_path(name, mamba_fn):
                got = layer_outputs(block, u, gy, device, bf16=True)
                row["y rel_err"] = rel_err(got[0], ref[0])
                row["grads max rel_err"] = max(rel_err(g, r) for g, r in zip(got[1:], ref[1:], strict=True))
                if name == "fused":  # the kernel alone: fp32 in, against the fp32 current path
                    got = layer_outputs(block, u, gy, device, bf16=False)
                    row["max rel_err fp32"] = max(rel_err(g, r) for g, r in zip(got, ref, strict=True))
                fn = functools.partial(layer_fwd_bwd, block, u.detach().requires_grad_(), gy, device)
                row["fwd_bwd_ms"] = time_ms(fn, device.type, reps)
                row["peak_extra_mb"] = peak_extra_mb(fn, device.type)
            rows.append(row)
            print(json.dumps(row), flush=True)
        del ref
    return rows


def _ours(x, dt_raw, A, Bm, Cm, D, z, gy) -> None:
    selective_scan_triton.selective_scan_triton(x, dt_raw, A, Bm, Cm, D, z)[0].backward(gy)


def _theirs(selective_scan_fn, x, dt_raw, A, Bm, Cm, D, z, gy) -> None:
    selective_scan_fn(x, dt_raw, A, Bm, Cm, D, z, delta_softplus=True).backward(gy)


def bench_scan_alone(bsz: int, length: int, d_inner: int, device, reps: int, mamba_fn) -> list[dict]:
    """Our fused scan and mamba-ssm's selective_scan_fn, each in its own layout, bf16 inputs, forward+backward."""
    rows = []
    for d_state in (1, 16):
        g = torch.Generator(device=device).manual_seed(0)
        x, dt_raw, z, gy = (torch.randn(bsz, length, d_inner, device=device, generator=g) for _ in range(4))
        Bm, Cm = (torch.randn(bsz, length, d_state, device=device, generator=g) for _ in range(2))
        A = (-torch.arange(1, d_state + 1, device=device).float().repeat(d_inner, 1)).requires_grad_()
        D = torch.ones(d_inner, device=device, requires_grad=True)
        acts = [t.bfloat16() for t in (x, 0.5 * dt_raw, Bm, Cm, z, gy)]  # (B, T, E or N)
        ours = [t.requires_grad_() for t in acts[:5]] + [acts[5]]
        theirs = [t.transpose(1, 2).contiguous().requires_grad_() for t in acts[:5]]  # (B, E or N, T)
        theirs.append(acts[5].transpose(1, 2).contiguous())
        for name, fn in (
            ("sm1 fused (B, T, E)", functools.partial(_ours, *ours[:2], A, *ours[2:4], D, *ours[4:])),
            ("mamba-ssm selective_scan_fn (B, E, T)",
             functools.partial(_theirs, mamba_fn, *theirs[:2], A, *theirs[2:4], D, *theirs[4:])),
        ):  # fmt: skip
            row = {"scan": name, "d_state": d_state, "fwd_bwd_ms": time_ms(fn, device.type, reps)}
            row["peak_extra_mb"] = peak_extra_mb(fn, device.type)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def bench_training(cfg: SM1Config, bsz: int, length: int, steps: int, device, paths: list[str], mamba_fn
                   ) -> list[dict]:  # fmt: skip
    """Tokens/s of whole training steps (AdamW, bf16 autocast, grad clip, as sm1.train), from the same
    initial weights and batches on every path, so the losses after the last step can be compared too."""
    rows = []
    g = torch.Generator(device=device).manual_seed(1)
    batches = [torch.randint(0, VOCAB, (bsz, length + 1), device=device, generator=g) for _ in range(2)]
    for name in paths:
        torch.manual_seed(0)
        model = SM1(cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
        losses = []

        def step(i: int, model=model, opt=opt, losses=losses) -> None:
            tokens = batches[i % len(batches)]
            with autocast(device):
                logits, _ = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.view(-1, VOCAB), tokens[:, 1:].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())

        row = {"path": name, "params_M": round(model.num_params() / 1e6, 1), "batch": bsz, "seq_len": length}
        try:
            with layer_path(name, mamba_fn):
                for i in range(2):  # warm-up: compiles, allocator, the optimizer's state
                    step(i)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                sync(device.type)
                t0 = time.perf_counter()
                for i in range(steps):
                    step(i)
                sync(device.type)
                elapsed = time.perf_counter() - t0
            row["ms_per_step"] = elapsed / steps * 1e3
            row["tokens_per_s"] = round(steps * bsz * length / elapsed)
            row["loss_after"] = losses[-1].item()
            if device.type == "cuda":
                row["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        except torch.OutOfMemoryError:
            row["error"] = "OOM"
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


SWEEP = [  # BLOCK_E, NUM_WARPS, BLOCK_E_TILE, NUM_WARPS_TILE, MAX_CHUNK of sm1/selective_scan_triton.py
    (64, 2, 32, 8, 64), (128, 2, 32, 8, 64), (32, 1, 32, 8, 64), (64, 4, 32, 8, 64), (64, 2, 16, 4, 64),
    (64, 2, 16, 8, 64), (64, 2, 32, 4, 64), (64, 2, 64, 8, 64), (64, 2, 32, 8, 32), (64, 2, 16, 4, 32),
]  # fmt: skip
KNOBS = ("BLOCK_E", "NUM_WARPS", "BLOCK_E_TILE", "NUM_WARPS_TILE", "MAX_CHUNK")


def sweep_fused(d_model: int, bsz: int, length: int, device, reps: int) -> list[dict]:
    """The fused layer's forward+backward over the kernels' launch sizes (to choose the defaults), each setting
    also checked in fp32 against the current path (a launch size must never change the result)."""
    defaults = [getattr(selective_scan_triton, k) for k in KNOBS]
    rows = []
    for d_state in (1, 16):
        torch.manual_seed(0)
        block = MambaBlock(SM1Config(vocab_size=VOCAB, d_model=d_model, d_state=d_state)).to(device)
        u = torch.randn(bsz, length, d_model, device=device, requires_grad=True)
        gy = torch.randn(bsz, length, d_model, device=device)
        with layer_path("current"):
            ref = [t.double() for t in layer_outputs(block, u, gy, device, bf16=False)]
        for setting in SWEEP:
            for k, v in zip(KNOBS, setting, strict=True):
                setattr(selective_scan_triton, k, v)
            with layer_path("fused"):
                got = layer_outputs(block, u, gy, device, bf16=False)
                err = max(rel_err(g, r) for g, r in zip(got, ref, strict=True))
                ms = time_ms(functools.partial(layer_fwd_bwd, block, u, gy, device), device.type, reps)
            row = {"d_state": d_state, **dict(zip(KNOBS, setting, strict=True)), "fwd_bwd_ms": ms}
            rows.append(row | {"max rel_err fp32": err})
            print(json.dumps(rows[-1]), flush=True)
        del ref
    for k, v in zip(KNOBS, defaults, strict=True):
        setattr(selective_scan_triton, k, v)
    return rows


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="small shapes, a few reps: a smoke test for the CPU")
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--train-layers", type=int, default=24)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-seq-len", type=int, default=2048)
    p.add_argument("--train-steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    p.add_argument("--sweep", action="store_true", help="also time the fused kernels' launch sizes")
    p.add_argument("--sweep-only", action="store_true", help="only the launch-size sweep (a short GPU call)")
    p.add_argument("--mamba-src", type=Path, help="a mamba-ssm source tree with selective_scan_cuda built in place")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/layer"))
    if p.parse_known_args()[0].quick:  # the small shapes become the defaults: the size flags still apply
        p.set_defaults(d_model=64, batch=2, seq_len=256, reps=3, train_layers=2, train_batch=2, train_seq_len=256,
                       train_steps=2)  # fmt: skip
    args = p.parse_args()
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    mamba_fn, mamba_status = load_mamba_scan(args.mamba_src) if device.type == "cuda" else (None, "not available (CPU)")
    paths = ["current"]
    if selective_scan_triton.available(device):
        paths.insert(0, "fused")
    if mamba_fn is not None:
        paths.append("mamba-ssm")
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(device),
        "torch": torch.__version__, "command": " ".join(sys.argv), "paths": paths, "mamba_ssm": mamba_status,
        "layer_shape": {"d_model": args.d_model, "batch": args.batch, "seq_len": args.seq_len},
    }  # fmt: skip
    print(f"{result['machine']}, torch {torch.__version__}, {result['date']}; paths {paths}; mamba-ssm {mamba_status}")

    if args.sweep_only:
        result["sweep"] = sweep_fused(args.d_model, args.batch, args.seq_len, device, args.reps)
        print_table("Fused layer fwd+bwd over launch sizes", result["sweep"])
        return write(result, args.out)
    result["layer"] = bench_layer(args.d_model, args.batch, args.seq_len, device, args.reps, paths, mamba_fn)
    print_table(f"Mamba layer fwd+bwd, d_model,B,T={args.d_model},{args.batch},{args.seq_len}, bf16 autocast (CUDA "
                "only); rel_err against the current path in fp32", result["layer"])  # fmt: skip
    ms = {(r["path"], r["d_state"]): r["fwd_bwd_ms"] for r in result["layer"]}
    result["ratio_16_over_1"] = {path: ms[path, 16] / ms[path, 1] for path in paths}
    for path, ratio in result["ratio_16_over_1"].items():
        goal = f"{'meets' if ratio >= GOAL else 'misses'} the goal of {GOAL}x" if path == "fused" else "for comparison"
        print(f"{path}: d_state=16 ms / d_state=1 ms = {ratio:.2f}x ({goal})")
    if "fused" in paths:
        print(f"d_state=1: current ms / fused ms = {ms['current', 1] / ms['fused', 1]:.2f}x")

    if mamba_fn is not None:
        d_inner = 2 * args.d_model
        result["scan_alone"] = bench_scan_alone(args.batch, args.seq_len, d_inner, device, args.reps, mamba_fn)
        print_table("The scan alone, fwd+bwd, bf16 inputs", result["scan_alone"])

    if args.sweep and "fused" in paths:
        result["sweep"] = sweep_fused(args.d_model, args.batch, args.seq_len, device, args.reps)
        print_table("Fused layer fwd+bwd over launch sizes", result["sweep"])

    cfg = SM1Config(vocab_size=VOCAB, d_model=args.d_model, n_layer=args.train_layers, d_state=1)
    result["training"] = bench_training(cfg, args.train_batch, args.train_seq_len, args.train_steps, device, paths,
                                        mamba_fn)  # fmt: skip
    print_table(f"Training d_model={args.d_model} x {args.train_layers} layers, d_state=1, AdamW, bf16 autocast, "
                f"{args.train_steps} timed steps", result["training"])  # fmt: skip

    write(result, args.out)


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "layer.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['machine']}, torch {torch.__version__}, {result['date']}: {result['command']}")
    print(f"wrote {out / 'layer.json'}")


if __name__ == "__main__":
    main()
