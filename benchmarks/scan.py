"""Scan benchmark: the published SM1 form vs our exact scan (each path) vs the sequential loop, side by
side in one run, with the memory-bandwidth floor, relative error against float64, and the whole Mamba
layer with d_state=1 vs d_state=16.

    python benchmarks/scan.py --out results/scan           # GPU: B=8, T=2048, D=1536 plus the CPU case
    python benchmarks/scan.py --cpu-only --out results/scan

Prints a table; writes scan.json to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from sm1 import scan_triton
from sm1.model import MambaBlock, SM1Config
from sm1.scan import _ScanChunked, _ScanTriton, scan_chunked, scan_reference

ScanFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def published_form(log_a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The closed form published with SM1: L = cumprod(a); h = L * cumsum(b / L.clamp(min=1e-6))."""
    cum = torch.cumprod(log_a.exp(), dim=1)
    return cum * torch.cumsum(b / cum.clamp(min=1e-6), dim=1)


def inputs(shape: tuple[int, int, int], dt_lo: float, dt_hi: float, device: str, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    dt = torch.exp(torch.empty(shape, device=device).uniform_(math.log(dt_lo), math.log(dt_hi), generator=g))
    return -dt, torch.randn(shape, device=device, generator=g)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, reps: int) -> float:
    """Median wall time of `reps` runs after warm-up, synchronized around each."""
    for _ in range(2):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def peak_extra_mb(fn: Callable[[], object], device: str) -> float | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth(device: str) -> float:
    """Measured device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    x = torch.empty(256 * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), device, reps=20)
    return 2 * x.nbytes / (ms / 1e3)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x.double() - ref).norm() / ref.norm()).item()


class _ScanCompiled(_ScanChunked):
    """The pure path through torch.compile (a candidate fast path, measured here)."""

    kernel = staticmethod(torch.compile(scan_chunked, dynamic=False))


def scan_paths(device: str) -> dict[str, type[torch.autograd.Function] | ScanFn]:
    paths: dict[str, type[torch.autograd.Function] | ScanFn] = {"published cumprod": published_form}
    paths["sm1 chunked (pure)"] = _ScanChunked
    if device == "cuda":
        paths["sm1 chunked (torch.compile)"] = _ScanCompiled
        if scan_triton.available():
            paths["sm1 triton"] = _ScanTriton
    paths["sequential loop"] = scan_reference
    return paths


def call(path, log_a, b):
    return path.apply(log_a, b, None) if isinstance(path, type) else path(log_a, b)


def bench_scan(shape, device: str, bandwidth: float, reps: int) -> list[dict]:
    bsz, length, dim = shape
    elem = bsz * length * dim
    floor_fwd = 3 * 4 * elem / bandwidth * 1e3  # read log_a, b; write h (fp32)
    floor_fb = floor_fwd + 5 * 4 * elem / bandwidth * 1e3  # + read log_a, h, grad_h; write grad_log_a, grad_b
    refs = {}
    for label, (lo, hi) in {"dt 1e-3..0.1": (1e-3, 0.1), "dt 1e-4..10": (1e-4, 10.0)}.items():
        la, bb = inputs(shape, lo, hi, device, seed=1)
        refs[label] = (la, bb, scan_reference(la.double(), bb.double()))
    # gradients against autograd through the float64 loop, dt anywhere in [1e-4, 10]
    g_la, g_b = inputs(shape, 1e-4, 10.0, device, seed=2)
    g_out = torch.randn_like(g_b)
    ref_in = [g_la.double().requires_grad_(), g_b.double().requires_grad_()]
    ref_grads = torch.autograd.grad(scan_reference(*ref_in), ref_in, g_out.double())
    log_a, b = inputs(shape, 1e-3, 0.1, device)
    grad = torch.randn_like(b)
    rows = []
    for name, path in scan_paths(device).items():
        slow = name == "sequential loop"
        n = 1 if slow else reps

        def fwd(path=path):
            with torch.no_grad():
                return call(path, log_a, b)

        def fwd_bwd(path=path):
            la, bb = log_a.detach().requires_grad_(), b.detach().requires_grad_()
            out = call(path, la, bb)
            return torch.autograd.grad(out, (la, bb), grad)

        row = {"path": name, "fwd_ms": time_ms(fwd, device, n), "fwd_bwd_ms": time_ms(fwd_bwd, device, n)}
        row["peak_extra_mb"] = peak_extra_mb(fwd_bwd, device)
        for label, (la, bb, ref) in refs.items():
            with torch.no_grad():
                row[f"rel_err {label}"] = rel_err(call(path, la, bb), ref)
        grad_in = [g_la.clone().requires_grad_(), g_b.clone().requires_grad_()]
        grads = torch.autograd.grad(call(path, *grad_in), grad_in, g_out)
        row["grad rel_err dt 1e-4..10"] = max(rel_err(g, r) for g, r in zip(grads, ref_grads, strict=True))
        row["fwd_x_floor"] = row["fwd_ms"] / floor_fwd
        row["fwd_bwd_x_floor"] = row["fwd_bwd_ms"] / floor_fb
        rows.append(row)
    rows.append({"path": "memory floor", "fwd_ms": floor_fwd, "fwd_bwd_ms": floor_fb})
    return rows


def bench_layer(d_model: int, bsz: int, length: int, device: str, reps: int) -> list[dict]:
    """The whole Mamba layer forward+backward, d_state=1 vs 16, through the same code."""
    rows = []
    for d_state in (1, 16):
        torch.manual_seed(0)
        block = MambaBlock(SM1Config(vocab_size=443, d_model=d_model, d_state=d_state)).to(device)
        u = torch.randn(bsz, length, d_model, device=device, requires_grad=True)
        ssm = torch.zeros(bsz, block.cfg.d_inner, d_state, device=device)
        conv = torch.zeros(bsz, block.cfg.d_conv - 1, block.cfg.d_inner, device=device)

        def fwd_bwd(block=block, u=u, ssm=ssm, conv=conv):
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
                y, _, _ = block(u, ssm, conv)
            y.float().square().mean().backward()

        rows.append(
            {
                "layer": f"Mamba layer d_state={d_state}",
                "fwd_bwd_ms": time_ms(fwd_bwd, device, reps),
                "peak_extra_mb": peak_extra_mb(fwd_bwd, device),
            }
        )
    return rows


def sweep_triton(shape, device: str, reps: int) -> list[dict]:
    """Forward+backward time of the Triton path over its launch parameters (to choose the defaults)."""
    log_a, b = inputs(shape, 1e-3, 0.1, device)
    grad = torch.randn_like(b)
    defaults = (scan_triton.BLOCK_D, scan_triton.NUM_WARPS, scan_triton.TARGET_CHUNKS)
    rows = []
    for block, warps, chunks in [(32, 1, 16), (32, 1, 32), (64, 2, 16), (64, 2, 32), (64, 2, 64), (128, 4, 32),
                                 (64, 1, 32), (128, 2, 32), (32, 1, 64), (64, 2, 128)]:  # fmt: skip
        scan_triton.BLOCK_D, scan_triton.NUM_WARPS, scan_triton.TARGET_CHUNKS = block, warps, chunks

        def fwd_bwd():
            la, bb = log_a.detach().requires_grad_(), b.detach().requires_grad_()
            return torch.autograd.grad(_ScanTriton.apply(la, bb, None), (la, bb), grad)

        def fwd():
            return scan_triton.scan_triton(log_a, b)

        rows.append({"BLOCK_D": block, "num_warps": warps, "chunks": chunks,
                     "fwd_ms": time_ms(fwd, device, reps), "fwd_bwd_ms": time_ms(fwd_bwd, device, reps)})  # fmt: skip
    scan_triton.BLOCK_D, scan_triton.NUM_WARPS, scan_triton.TARGET_CHUNKS = defaults
    return rows


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} / torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    return f"{cpu} x{torch.get_num_threads()} threads / torch {torch.__version__}"


def print_table(title: str, rows: list[dict]) -> None:
    """A markdown table, so RESULTS.md takes the printed output as it is."""
    print(f"\n{title}\n")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results/scan"))
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sweep", action="store_true", help="also time the Triton path's launch parameters")
    args = ap.parse_args()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(), "cases": []}
    cases = [("cpu", (2, 1024, 256), 5, (128, 2, 512))]
    if torch.cuda.is_available() and not args.cpu_only:
        cases.insert(0, ("cuda", (8, 2048, 1536), args.reps, (768, 8, 2048)))
        cases.insert(1, ("cuda", (8, 2048, 1536 * 16), 5, None))  # the scan of a d_state=16 layer
    for device, shape, reps, layer in cases:
        bandwidth = copy_bandwidth(device)
        case = {"device": device, "shape_BTD": shape, "copy_bandwidth_GBps": bandwidth / 1e9}
        case["scan"] = bench_scan(shape, device, bandwidth, reps)
        print_table(f"scan {device} B,T,D={shape} (copy bandwidth {bandwidth / 1e9:.0f} GB/s)", case["scan"])
        if layer is not None:
            case["layer"] = bench_layer(*layer, device=device, reps=reps)
            print_table(f"layer {device} d_model,B,T={layer}", case["layer"])
        result["cases"].append(case)
    if args.sweep and torch.cuda.is_available() and scan_triton.available():
        result["triton_sweep"] = sweep_triton((8, 2048, 1536), "cuda", args.reps)
        print_table("Triton launch parameters, B,T,D=(8, 2048, 1536)", result["triton_sweep"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scan.json").write_text(json.dumps(result, indent=2))
    print(f"\n{result['machine']}, {result['date']}; wrote {args.out / 'scan.json'}")


if __name__ == "__main__":
    main()
