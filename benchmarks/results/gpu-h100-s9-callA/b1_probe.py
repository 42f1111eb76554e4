"""Probe (session 9): the one-row persistent kernel's grid barrier, polled with acquire loads instead of atomic
adds of 0 (96 programs x 96 flags of read-modify-writes at L2 per poll), and its warps. One process per variant:
    python .scratch/b1_probe.py {atomic|acquire} WARPS OUT_JSON"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sm1 import step_persistent as sp  # noqa: E402


@triton.jit
def _grid_sync_acquire(flags_ptr, p, programs, BLOCK_PARTS: tl.constexpr):
    tl.debug_barrier()
    tl.atomic_xchg(flags_ptr + p, 1, sem="release", scope="gpu")
    ps = tl.arange(0, BLOCK_PARTS)
    pm = ps < programs
    arrived = 0
    while arrived < programs:
        flags = tl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [flags_ptr + ps],
                                          dtype=tl.int32, is_pure=False, pack=1)
        arrived = tl.sum(tl.where(pm, flags, 0), axis=0)
    tl.debug_barrier()


def main() -> None:
    kind, warps, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    if kind == "acquire":
        sp._grid_sync = _grid_sync_acquire
    sp.NUM_WARPS = warps
    import decode

    device = torch.device("cuda")
    bw = decode.copy_bandwidth("cuda")
    (name, model), = decode.sm1_models(["90m"], device, torch.bfloat16).items()
    rows = []
    with torch.no_grad():
        for _ in range(2):
            rows += decode.bench_sm1(name, model, [1], device, bw, 300, decode.FUSED_GRAPHS)
    for r in rows:
        r |= {"barrier": kind, "warps": warps}
    with out.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
