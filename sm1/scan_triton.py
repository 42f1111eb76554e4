"""The scan in Triton: exact, and parallel over T as well as over channels.

Each step is the reference loop's arithmetic in fp32 registers, with one change: a plain fp32 loop
h = exp(log_a) h + b is NOT exact, because exp(-1e-4) rounded to fp32 misses its distance to 1 by 6e-4
and thousands of steps repeat that bias (3e-5 relative error at T=4096). So each step adds a correction,
h += expm1(log_a) h + b, with expm1 accurate near 0: the bias is gone, only independent rounding is left.

A single sequential pass over T has too little parallelism at training shapes (B * D / 64 programs), so
T is cut into chunks, in three launches:
  1. summary: each (batch, chunk, channel block) runs its chunk from h = 0 -> chunk end state, sum log_a;
  2. carry:   each (batch, channel block) runs the recurrence over the chunk summaries -> chunk start states;
  3. apply:   each chunk runs again from its start state and writes h.
The backward is the same three launches run in reverse (delta_t = g_t + a_{t+1} delta_{t+1}), with the
gradients to log_a and b written by the last launch (no flips, no shifted copies, no extra passes).
It runs on CUDA; with TRITON_INTERPRET=1 the same kernels run on the CPU, which is how CI tests them.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton on this platform (CPU wheels, Windows): sm1.scan uses the pure path
    triton = None

BLOCK_D = 128  # channels per program (contiguous in memory: coalesced, 8-byte loads per lane)
NUM_WARPS = 2  # measured best with BLOCK_D=128 (benchmarks/scan.py --sweep)
TARGET_CHUNKS = 32  # chunks per sequence: enough programs to fill an H100 at training shapes


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _expm1(x):
        """exp(x) - 1 to full fp32 precision: a Taylor polynomial near 0, exp(x) - 1 elsewhere."""
        poly = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0 + x / 720.0)))))
        return tl.where(tl.abs(x) < 0.1, poly, tl.exp(x) - 1.0)

    @triton.jit
    def _multiplier(la_ptr, row, t, T, D, offs, mask, REVERSE: tl.constexpr):
        """log of the multiplier applied at step t: log_a[t] forward, log_a[t + 1] (0 past the end) reverse."""
        if REVERSE:
            nxt = mask & (offs * 0 + t + 1 < T)
            return tl.load(la_ptr + row + (t + 1) * D + offs, mask=nxt, other=0.0).to(tl.float32)
        return tl.load(la_ptr + row + t * D + offs, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _advance(la_ptr, x_ptr, h, row, t, T, D, offs, mask, REVERSE: tl.constexpr):
        """One step of the recurrence at step t: returns (h, the log multiplier used, the step's mask)."""
        m = mask & (offs * 0 + t < T)  # scalar conditions broadcast first: the interpreter needs it
        la = tl.where(m, _multiplier(la_ptr, row, t, T, D, offs, m, REVERSE), 0.0)
        x = tl.load(x_ptr + row + t * D + offs, mask=m, other=0.0).to(tl.float32)
        return h + _expm1(la) * h + x, la, m

    @triton.jit
    def _summary_kernel(la_ptr, x_ptr, hsum_ptr, lsum_ptr, T, D, CT, NC, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
        pid_b, pid_c = tl.program_id(0), tl.program_id(1)
        offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < D
        row = pid_b.to(tl.int64) * T * D
        h = tl.zeros([BLOCK], dtype=tl.float32)
        s = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(CT):
            t = pid_c * CT + (CT - 1 - i if REVERSE else i)
            h, la, _ = _advance(la_ptr, x_ptr, h, row, t, T, D, offs, mask, REVERSE)
            s += la
        out = (pid_b * NC + pid_c) * D + offs
        tl.store(hsum_ptr + out, h, mask=mask)
        tl.store(lsum_ptr + out, s, mask=mask)

    @triton.jit
    def _carry_kernel(
        hsum_ptr, lsum_ptr, h0_ptr, D, NC, HAS_H0: tl.constexpr, REVERSE: tl.constexpr, BLOCK: tl.constexpr
    ):
        """Chunk start states, written over hsum (each chunk's summary is read before it is overwritten)."""
        pid_b = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < D
        h = tl.zeros([BLOCK], dtype=tl.float32)
        if HAS_H0:
            h = tl.load(h0_ptr + pid_b * D + offs, mask=mask, other=0.0).to(tl.float32)
        for i in range(NC):
            c = NC - 1 - i if REVERSE else i
            ptr = (pid_b * NC + c) * D + offs
            chunk_h = tl.load(hsum_ptr + ptr, mask=mask, other=0.0)
            chunk_s = tl.load(lsum_ptr + ptr, mask=mask, other=0.0)
            tl.store(hsum_ptr + ptr, h, mask=mask)
            h += _expm1(chunk_s) * h + chunk_h

    @triton.jit
    def _apply_kernel(
        la_ptr, x_ptr, hin_ptr, out_ptr, hfwd_ptr, h0_ptr, gla_ptr, T, D, CT, NC,
        HAS_H0: tl.constexpr, REVERSE: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Forward: writes h. Reverse: h is delta; writes grad_b = delta and grad_log_a = delta h_{t-1} a_t."""
        pid_b, pid_c = tl.program_id(0), tl.program_id(1)
        offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < D
        row = pid_b.to(tl.int64) * T * D
        h = tl.load(hin_ptr + (pid_b * NC + pid_c) * D + offs, mask=mask, other=0.0)
        for i in range(CT):
            t = pid_c * CT + (CT - 1 - i if REVERSE else i)
            h, _, m = _advance(la_ptr, x_ptr, h, row, t, T, D, offs, mask, REVERSE)
            tl.store(out_ptr + row + t * D + offs, h, mask=m)
            if REVERSE:
                la_t = tl.load(la_ptr + row + t * D + offs, mask=m, other=0.0).to(tl.float32)
                h_prev = tl.load(hfwd_ptr + row + (t - 1) * D + offs, mask=m & (offs * 0 + t > 0), other=0.0)
                if HAS_H0:
                    h0 = tl.load(h0_ptr + pid_b * D + offs, mask=m & (offs * 0 + t == 0), other=0.0)
                    h_prev = tl.where(t == 0, h0, h_prev)
                tl.store(gla_ptr + row + t * D + offs, h * h_prev * tl.exp(la_t), mask=m)


def _launch(log_a: Tensor, x: Tensor, h0: Tensor | None, reverse: bool, chunk: int | None, h_fwd=None, grad_la=None):
    bsz, length, dim = x.shape
    ct = chunk or max(16, triton.next_power_of_2(triton.cdiv(length, TARGET_CHUNKS)))
    nc = triton.cdiv(length, ct)
    nd = triton.cdiv(dim, BLOCK_D)
    kw = {"BLOCK": BLOCK_D, "num_warps": NUM_WARPS}
    hsum = torch.empty(bsz, nc, dim, device=x.device, dtype=torch.float32)
    lsum = torch.empty_like(hsum)
    out = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    h0_arg = x if h0 is None else h0.contiguous()  # any pointer: unused when HAS_H0 is False
    _summary_kernel[(bsz, nc, nd)](log_a, x, hsum, lsum, length, dim, ct, nc, REVERSE=reverse, **kw)
    _carry_kernel[(bsz, nd)](hsum, lsum, h0_arg, dim, nc, HAS_H0=h0 is not None and not reverse, REVERSE=reverse, **kw)
    _apply_kernel[(bsz, nc, nd)](
        log_a, x, hsum, out, x if h_fwd is None else h_fwd, h0_arg, out if grad_la is None else grad_la,
        length, dim, ct, nc, HAS_H0=h0 is not None, REVERSE=reverse, **kw,
    )  # fmt: skip
    return out


def _require_triton() -> None:
    if triton is None:
        raise RuntimeError("Triton is not installed: use sm1.scan.scan, which falls back to pure PyTorch")


def scan_triton(log_a: Tensor, b: Tensor, h0: Tensor | None = None, chunk: int | None = None) -> Tensor:
    """Forward scan. log_a, b: (B, T, D) contiguous; h0: (B, D) or None. Returns h (B, T, D) fp32."""
    _require_triton()
    return _launch(log_a, b, h0, reverse=False, chunk=chunk)


def scan_triton_backward(
    log_a: Tensor, h: Tensor, h0: Tensor | None, grad_h: Tensor, chunk: int | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients (log_a, b, h0) of the scan from its saved inputs and output, in three launches."""
    _require_triton()
    grad_la = torch.empty_like(h)
    grad_b = _launch(log_a, grad_h.contiguous(), h0, reverse=True, chunk=chunk, h_fwd=h, grad_la=grad_la)
    grad_h0 = None if h0 is None else grad_b[:, 0] * log_a[:, 0].exp()
    return grad_la, grad_b, grad_h0
