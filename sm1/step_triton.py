"""The decode step of one Mamba block in two Triton kernels, reading and writing the slot pool in place.

The eager step (MambaBlock.step) runs about 25 small kernels a layer, plus a gather and a scatter of the
sessions' state rows. Here each layer is the three matmuls (in_proj, x_proj, out_proj) and two kernels:

  conv:  the causal conv's window shifted in place in the pool row, the conv output, SiLU;
  ssm:   dt = softplus(dt_proj(dt_raw)), h = exp(dt A) h + dt x B (in place in the pool row),
         y = h C + D x, gated by SiLU(z).

x_proj sits between them because it needs the whole conv output of a row, and dt_proj is a matmul of its own
before the ssm kernel (done inside each program it re-read the (E, R) weight block per row, which made the
step slower than the eager one from a few hundred rows on). Every elementwise product runs in fp32 registers
whatever the model's dtype; the state stays fp32. A row whose slot is negative is padding: it reads a zero
state and writes nothing, so padded rows of a CUDA graph never race on a shared slot. It runs on CUDA; with
TRITON_INTERPRET=1 the same kernels run on the CPU, which is how CI checks them against the eager step.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton here: the eager step is the only one
    triton = None

BLOCK_E = 256  # channels per program


def available(device: torch.device) -> bool:
    """Whether the kernels can run on `device` (CUDA, or the CPU under Triton's interpreter)."""
    return triton is not None and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _silu(x):
        return x / (1.0 + tl.exp(-x))

    @triton.jit
    def _softplus(x):
        """log(1 + e^x) as torch computes it (x itself above 20), with log1p's accuracy for small e^x."""
        u = tl.exp(tl.minimum(x, 20.0))
        w = 1.0 + u
        log1p = tl.where(w == 1.0, u, tl.log(w) * (u / (w - 1.0)))  # exact log1p from a rounded 1 + u
        return tl.where(x > 20.0, x, log1p)

    @triton.jit
    def _conv_kernel(x_ptr, x_stride, conv_ptr, slots_ptr, w_ptr, bias_ptr, out_ptr, out_lp_ptr, E,
                     K: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        b, pe = tl.program_id(0), tl.program_id(1)
        offs = pe * BLOCK + tl.arange(0, BLOCK)
        m = offs < E
        slot = tl.load(slots_ptr + b)
        ms = m & (offs * 0 + slot >= 0)  # padding rows: a zero window, nothing written (scalar broadcast first)
        row = conv_ptr + tl.maximum(slot, 0) * (K - 1) * E  # (K - 1, E) window, oldest first
        x = tl.load(x_ptr + b * x_stride + offs, mask=m, other=0.0).to(tl.float32)
        acc = tl.load(bias_ptr + offs, mask=m, other=0.0).to(tl.float32)
        for k in tl.static_range(K - 1):
            v = tl.load(row + k * E + offs, mask=ms, other=0.0)
            acc += v.to(tl.float32) * tl.load(w_ptr + k * E + offs, mask=m, other=0.0).to(tl.float32)
            if k > 0:
                tl.store(row + (k - 1) * E + offs, v, mask=ms)  # the window moves on by one
        acc += x * tl.load(w_ptr + (K - 1) * E + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(row + (K - 2) * E + offs, x, mask=ms)
        x = _silu(acc)
        tl.store(out_ptr + b * E + offs, x, mask=m)
        tl.store(out_lp_ptr + b * E + offs, x, mask=m)  # the same, in the model's dtype (for x_proj)

    @triton.jit
    def _ssm_kernel(x_ptr, z_ptr, z_stride, xp_ptr, xp_stride, dt_ptr, dtb_ptr, a_ptr, d_ptr, ssm_ptr, slots_ptr,
                    y_ptr, E, R, N: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        b, pe = tl.program_id(0), tl.program_id(1)
        offs = pe * BLOCK + tl.arange(0, BLOCK)
        m = offs < E
        slot = tl.load(slots_ptr + b)
        ms = m & (offs * 0 + slot >= 0)  # padding rows: a zero state, nothing written
        x = tl.load(x_ptr + b * E + offs, mask=m, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + b * E + offs, mask=m, other=0.0).to(tl.float32)
        dt = _softplus(dt + tl.load(dtb_ptr + offs, mask=m, other=0.0).to(tl.float32))
        state = ssm_ptr + tl.maximum(slot, 0) * E * N
        y = tl.load(d_ptr + offs, mask=m, other=0.0) * x
        for n in tl.static_range(N):
            B_n = tl.load(xp_ptr + b * xp_stride + R + n).to(tl.float32)
            C_n = tl.load(xp_ptr + b * xp_stride + R + N + n).to(tl.float32)
            a = tl.load(a_ptr + offs * N + n, mask=m, other=0.0)
            h = tl.exp(dt * a) * tl.load(state + offs * N + n, mask=ms, other=0.0) + dt * x * B_n
            tl.store(state + offs * N + n, h, mask=ms)
            y += h * C_n
        z = tl.load(z_ptr + b * z_stride + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + b * E + offs, y * _silu(z), mask=m)


def mixer_step(mixer: torch.nn.Module, u: Tensor, ssm: Tensor, conv: Tensor, slots: Tensor, residual: Tensor) -> Tensor:
    """residual + MambaBlock.step for rows `slots` of one layer's pool: u (B, d_model) -> (B, d_model).

    ssm (S, E, N) fp32 and conv (S, d_conv - 1, E) are that layer's pool, updated in place. Seven kernels a
    layer, each launch counted: at batch 1 a step is nothing but launches."""
    E = mixer.cfg.d_inner
    xz = mixer.in_proj(u)  # (B, 2E): x, then z
    x, x_lp = conv_update(mixer, xz[:, :E], conv, slots)
    xp = mixer.x_proj(x_lp)  # (B, R + 2N): dt_raw, B, C
    y = ssm_update(mixer, x, xz[:, E:], xp, ssm, slots)  # in u's dtype
    return torch.addmm(residual, y, mixer.out_proj.weight.t())  # out_proj and the residual add in one product


def conv_update(mixer: torch.nn.Module, x: Tensor, conv: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
    """The causal conv's next output, SiLU'd, for x (B, E) (rows may be strided): (B, E) in fp32 (for the
    state update) and in x's dtype (for x_proj); each session's window in `conv` moves on by one, in place."""
    B, (K, E) = x.shape[0], (mixer.cfg.d_conv, mixer.cfg.d_inner)
    out = torch.empty(B, E, device=x.device, dtype=torch.float32)
    out_lp = out if x.dtype == torch.float32 else torch.empty(B, E, device=x.device, dtype=x.dtype)
    _, w = mixer.step_constants()
    grid = (B, triton.cdiv(E, BLOCK_E))
    _conv_kernel[grid](x, x.stride(0), conv, slots, w, mixer.conv1d.bias, out, out_lp, E, K=K, BLOCK=BLOCK_E)
    return out, out_lp


def ssm_update(mixer: torch.nn.Module, x: Tensor, z: Tensor, xp: Tensor, ssm: Tensor, slots: Tensor) -> Tensor:
    """dt from x_proj's output `xp` (B, R + 2N) through dt_proj, the state update (in place in `ssm`), the
    readout and the gate: (B, E) in z's dtype. x (B, E) fp32 contiguous; z (B, E), rows may be strided."""
    cfg = mixer.cfg
    E, N, R = cfg.d_inner, cfg.d_state, cfg.dt_rank
    B = x.shape[0]
    xp = xp.contiguous()
    dt = torch.nn.functional.linear(xp[:, :R], mixer.dt_proj.weight)  # (B, E); bias and softplus in the kernel
    y = torch.empty(B, E, device=x.device, dtype=z.dtype)
    A, _ = mixer.step_constants()
    _ssm_kernel[(B, triton.cdiv(E, BLOCK_E))](
        x, z, z.stride(0), xp, xp.stride(0), dt, mixer.dt_proj.bias, A, mixer.D, ssm, slots, y, E, R, N=N,
        BLOCK=BLOCK_E,
    )  # fmt: skip
    return y
