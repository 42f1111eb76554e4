"""The decode step of one residual block in three launches, reading and writing the slot pool in place.

The eager step (Block's norm + MambaBlock.step) runs about 25 small kernels a layer, plus a gather and a
scatter of the sessions' state rows; at batch 1 a CUDA-graph step is nothing but those launches. Here a layer
is three:

  in:     u @ W_in (the RMSNorm's weight folded into W_in; its 1/rms applied to the product's rows), the
          causal conv's window shifted in place in the pool row, the conv output, SiLU;
  mixer:  x_proj, dt = softplus(dt_proj(.)), h = exp(dt A) h + dt x B (in place in the pool row),
          y = h C + D x, gated by SiLU(z);
  out:    u + y @ W_out (one cuBLAS addmm).

Up to SMALL_BATCH rows, `in` is one Triton kernel (the product as 16-row tiles on tensor cores, the conv in
its epilogue) and each channel block of `mixer` is its own program, every one recomputing the small x_proj
(its weights come from L2) so the layer stays three launches wide. From there on, `in` is a cuBLAS GEMM and
`mixer` does the conv itself, one program per 16 rows over all channels: pass one accumulates x_proj over
the channel blocks, pass two recomputes each block's conv (and moves the window on) and updates the state.

Weights are laid out for these shapes once per version of the weights (`decode_weights`). Every elementwise
product runs in fp32 registers whatever the model's dtype; the state stays fp32. A row whose slot is
negative is padding: it reads a zero state and writes nothing, so padded rows of a CUDA graph never race on a
shared slot. It runs on CUDA; with TRITON_INTERPRET=1 the same kernels run on the CPU, which is how CI
checks them against the eager step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton here: the eager step is the only one
    triton = None

SMALL_BATCH = 16  # up to this many rows: the Triton `in` kernel and channel-split mixer programs
BLOCK_ROWS = 16  # rows per program (the smallest tensor-core tile)
BLOCK_IN = 32  # `in` kernel: channels of x (and of z) per program
BLOCK_D = 64  # `in` kernel: d_model per iteration
BLOCK_C = 128  # mixer kernel: channels per iteration
NUM_WARPS = 4


def available(device: torch.device) -> bool:
    """Whether the kernels can run on `device` (CUDA, or the CPU under Triton's interpreter)."""
    return triton is not None and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


@dataclass
class DecodeWeights:
    """One block's weights as the decode kernels read them (P: x_proj's R + 2N outputs padded to a power of 2)."""

    w_in: Tensor  # (d_model, 2E): in_proj.weight.T with the norm's weight folded in
    conv_w: Tensor  # (d_conv, E)
    w_x: Tensor  # (E, P): x_proj.weight.T, zero columns past R + 2N
    w_dt: Tensor  # (P, E): dt_proj.weight.T, zero rows past R (so B and C columns of x_proj drop out)
    A: Tensor  # (E, N) fp32


def decode_weights(block: nn.Module) -> DecodeWeights:
    """The block's DecodeWeights, made once per version of its weights (changed in place, moved or cast:
    made again), so the step derives nothing per token."""
    mixer = block.mixer
    params = (block.norm.weight, mixer.in_proj.weight, mixer.x_proj.weight, mixer.dt_proj.weight)
    version = tuple((p._version, p.data_ptr(), p.dtype) for p in params)
    A, conv_w = mixer.step_constants()  # itself cached per version of A_log and the conv
    cached = getattr(block, "_decode_weights", None)
    if cached is None or cached[0] != version or cached[1].A is not A or cached[1].conv_w is not conv_w:
        cfg = mixer.cfg
        R, P = cfg.dt_rank, max(16, triton.next_power_of_2(cfg.dt_rank + 2 * cfg.d_state))
        with torch.no_grad():
            w_in = (mixer.in_proj.weight * block.norm.weight).T.contiguous()
            w_x = mixer.x_proj.weight.new_zeros(cfg.d_inner, P)
            w_x[:, : R + 2 * cfg.d_state] = mixer.x_proj.weight.T
            w_dt = mixer.dt_proj.weight.new_zeros(P, cfg.d_inner)
            w_dt[:R] = mixer.dt_proj.weight.T
        block._decode_weights = (version, DecodeWeights(w_in, conv_w, w_x, w_dt, A))
    return block._decode_weights[1]


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
    def _dot(a, b, IEEE: tl.constexpr):
        """a @ b accumulated in fp32. IEEE: the operands multiplied in full fp32 (not TF32): for fp32 models,
        and under the interpreter, whose bf16 tl.dot reads garbage (Triton 3.9)."""
        if IEEE:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _rows(slots_ptr, B, BLOCK_B: tl.constexpr):
        """This program's rows, which of them exist, and each one's pool slot (-1: none, or padding)."""
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        rm = rows < B
        slot = tl.load(slots_ptr + rows, mask=rm, other=-1)
        return rows, rm, slot

    @triton.jit
    def _conv(x, conv_ptr, slot, cols, cm, cw_ptr, cb_ptr, E, K: tl.constexpr, STORE: tl.constexpr):
        """SiLU(causal conv) of the new inputs x (rows, cols) in fp32, continuing each row's (K - 1, E) window
        (oldest first) in the pool; STORE: the window moves on by one (x, in the pool's dtype, goes last)."""
        sm = (slot >= 0)[:, None] & cm[None, :]  # padding rows: a zero window, nothing written
        win = conv_ptr + tl.maximum(slot, 0)[:, None] * (K - 1) * E + cols[None, :]
        x = x.to(conv_ptr.dtype.element_ty)
        acc = tl.load(cb_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
        for k in tl.static_range(K - 1):
            v = tl.load(win + k * E, mask=sm, other=0.0)
            acc += v.to(tl.float32) * tl.load(cw_ptr + k * E + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
            if STORE and k > 0:
                tl.store(win + (k - 1) * E, v, mask=sm)
        acc += x.to(tl.float32) * tl.load(cw_ptr + (K - 1) * E + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
        if STORE:
            tl.store(win + (K - 2) * E, x, mask=sm)
        return _silu(acc)

    @triton.jit
    def _in_kernel(u_ptr, w_ptr, conv_ptr, slots_ptr, cw_ptr, cb_ptr, xc_ptr, z_ptr, B, Dm, E, eps,
                   K: tl.constexpr, IEEE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr):  # fmt: skip
        """Rows (BLOCK_B) x channels (BLOCK_N) of x and of z = RMSNorm(u) @ W_in; x goes on through the conv."""
        rows, rm, slot = _rows(slots_ptr, B, BLOCK_B)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        cm = cols < E
        acc_x = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
        acc_z = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
        sumsq = tl.zeros([BLOCK_B], dtype=tl.float32)
        for d0 in range(0, Dm, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            dm = ds < Dm
            u = tl.load(u_ptr + rows[:, None] * Dm + ds[None, :], mask=rm[:, None] & dm[None, :], other=0.0)
            sumsq += tl.sum(u.to(tl.float32) * u.to(tl.float32), axis=1)
            w = w_ptr + ds[:, None] * (2 * E) + cols[None, :]
            wm = dm[:, None] & cm[None, :]
            acc_x += _dot(u, tl.load(w, mask=wm, other=0.0), IEEE)
            acc_z += _dot(u, tl.load(w + E, mask=wm, other=0.0), IEEE)
        scale = (1.0 / tl.sqrt(sumsq / Dm + eps))[:, None]  # RMSNorm's 1/rms, applied after the product
        xc = _conv(acc_x * scale, conv_ptr, slot, cols, cm, cw_ptr, cb_ptr, E, K, True)
        out = rows[:, None] * E + cols[None, :]
        om = rm[:, None] & cm[None, :]
        tl.store(xc_ptr + out, xc, mask=om)
        tl.store(z_ptr + out, acc_z * scale, mask=om)

    @triton.jit
    def _mixer_kernel(u_ptr, x_ptr, x_stride, z_ptr, z_stride, conv_ptr, slots_ptr, cw_ptr, cb_ptr, wx_ptr, wdt_ptr,
                      dtb_ptr, a_ptr, d_ptr, ssm_ptr, y_ptr, B, Dm, E, eps, R: tl.constexpr, N: tl.constexpr,
                      P: tl.constexpr, K: tl.constexpr, HAS_CONV: tl.constexpr, IEEE: tl.constexpr,
                      BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
        """x_proj, dt, the state update and the gated readout of BLOCK_B rows, for the channel blocks
        program_id(1), +num_programs(1), ... HAS_CONV: x is in_proj's raw output (the norm's scale and the
        conv still to apply; then one program owns all of a row's channels); else x is the conv's output."""
        rows, rm, slot = _rows(slots_ptr, B, BLOCK_B)
        lp = wx_ptr.dtype.element_ty
        scale = tl.full([BLOCK_B, 1], 1.0, dtype=tl.float32)
        if HAS_CONV:
            sumsq = tl.zeros([BLOCK_B], dtype=tl.float32)
            for d0 in range(0, Dm, BLOCK_D):
                ds = d0 + tl.arange(0, BLOCK_D)
                u = tl.load(u_ptr + rows[:, None] * Dm + ds[None, :], mask=rm[:, None] & (ds < Dm)[None, :], other=0.0)
                sumsq += tl.sum(u.to(tl.float32) * u.to(tl.float32), axis=1)
            scale = (1.0 / tl.sqrt(sumsq / Dm + eps))[:, None]
        ps = tl.arange(0, P)
        xp = tl.zeros([BLOCK_B, P], dtype=tl.float32)
        for c0 in range(0, E, BLOCK_C):  # pass one: x_proj over every channel
            cols = c0 + tl.arange(0, BLOCK_C)
            cm = cols < E
            x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=rm[:, None] & cm[None, :], other=0.0)
            if HAS_CONV:
                x = _conv(x.to(tl.float32) * scale, conv_ptr, slot, cols, cm, cw_ptr, cb_ptr, E, K, False)
            w = tl.load(wx_ptr + cols[:, None] * P + ps[None, :], mask=cm[:, None], other=0.0)
            xp += _dot(x.to(lp), w, IEEE)
        xp = xp.to(lp)  # x_proj's output in the model's dtype, as the eager step has it
        sm = (slot >= 0)[:, None]
        for c0 in range(tl.program_id(1) * BLOCK_C, E, tl.num_programs(1) * BLOCK_C):  # pass two: this block
            cols = c0 + tl.arange(0, BLOCK_C)
            cm = cols < E
            om = rm[:, None] & cm[None, :]
            x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=om, other=0.0).to(tl.float32)
            if HAS_CONV:
                x = _conv(x * scale, conv_ptr, slot, cols, cm, cw_ptr, cb_ptr, E, K, True)
            dt = _dot(xp, tl.load(wdt_ptr + ps[:, None] * E + cols[None, :], mask=cm[None, :], other=0.0), IEEE)
            dt = _softplus(dt + tl.load(dtb_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :])
            y = tl.load(d_ptr + cols, mask=cm, other=0.0)[None, :] * x
            state = ssm_ptr + tl.maximum(slot, 0)[:, None] * E * N + cols[None, :] * N
            for n in tl.static_range(N):
                B_n = tl.sum(tl.where(ps[None, :] == R + n, xp, 0.0).to(tl.float32), axis=1)[:, None]
                C_n = tl.sum(tl.where(ps[None, :] == R + N + n, xp, 0.0).to(tl.float32), axis=1)[:, None]
                a = tl.load(a_ptr + cols * N + n, mask=cm, other=0.0)[None, :]
                h = tl.exp(dt * a) * tl.load(state + n, mask=sm & cm[None, :], other=0.0) + dt * x * B_n
                tl.store(state + n, h, mask=sm & cm[None, :])
                y += h * C_n
            z = tl.load(z_ptr + rows[:, None] * z_stride + cols[None, :], mask=om, other=0.0).to(tl.float32) * scale
            tl.store(y_ptr + rows[:, None] * E + cols[None, :], y * _silu(z), mask=om)


def block_step(block: nn.Module, u: Tensor, ssm: Tensor, conv: Tensor, slots: Tensor) -> Tensor:
    """u + block's mixer(norm(u)) for rows `slots` of one layer's pool: u (B, d_model) -> (B, d_model).

    ssm (S, E, N) fp32 and conv (S, d_conv - 1, E) are that layer's pool, updated in place."""
    mixer, w = block.mixer, decode_weights(block)
    cfg = mixer.cfg
    B, E = u.shape[0], cfg.d_inner
    u = u.contiguous()
    if B <= SMALL_BATCH:
        x = torch.empty(B, E, device=u.device, dtype=torch.float32)  # the conv's output
        z = torch.empty(B, E, device=u.device, dtype=u.dtype)
        _in_kernel[(triton.cdiv(B, BLOCK_ROWS), triton.cdiv(E, BLOCK_IN))](
            u, w.w_in, conv, slots, w.conv_w, mixer.conv1d.bias, x, z, B, cfg.d_model, E, _eps(block, u),
            K=cfg.d_conv, IEEE=_ieee(u), BLOCK_B=BLOCK_ROWS, BLOCK_N=BLOCK_IN, BLOCK_D=BLOCK_D,
            num_warps=NUM_WARPS,
        )  # fmt: skip
        y = mixer_update(block, u, x, z, ssm, conv, slots, has_conv=False)
    else:
        xz = u @ w.w_in  # (B, 2E), before the norm's 1/rms
        y = mixer_update(block, u, xz[:, :E], xz[:, E:], ssm, conv, slots, has_conv=True)
    return torch.addmm(u, y, mixer.out_proj.weight.t())  # out_proj and the residual add in one product


def mixer_update(block: nn.Module, u: Tensor, x: Tensor, z: Tensor, ssm: Tensor, conv: Tensor, slots: Tensor,
                 has_conv: bool) -> Tensor:  # fmt: skip
    """The mixer kernel: y (B, E) in u's dtype, the state updated in place. has_conv: x and z (rows may be
    strided) are in_proj's raw output, and the conv runs here (one program a row tile); else x is the conv's
    output in fp32 and z is scaled (a program per channel block)."""
    mixer, w = block.mixer, decode_weights(block)
    cfg = mixer.cfg
    B, E = x.shape
    y = torch.empty(B, E, device=u.device, dtype=u.dtype)
    channel_programs = 1 if has_conv else triton.cdiv(E, BLOCK_C)
    _mixer_kernel[(triton.cdiv(B, BLOCK_ROWS), channel_programs)](
        u, x, x.stride(0), z, z.stride(0), conv, slots, w.conv_w, mixer.conv1d.bias, w.w_x, w.w_dt,
        mixer.dt_proj.bias, w.A, mixer.D, ssm, y, B, cfg.d_model, E, _eps(block, u), R=cfg.dt_rank,
        N=cfg.d_state, P=w.w_x.shape[1], K=cfg.d_conv, HAS_CONV=has_conv, IEEE=_ieee(u),
        BLOCK_B=BLOCK_ROWS, BLOCK_C=BLOCK_C, BLOCK_D=BLOCK_D, num_warps=NUM_WARPS,
    )  # fmt: skip
    return y


def _ieee(u: Tensor) -> bool:
    """Full-fp32 products: an fp32 model, or the CPU (Triton's interpreter)."""
    return u.dtype == torch.float32 or u.device.type == "cpu"


def _eps(block: nn.Module, u: Tensor) -> float:
    """The block's RMSNorm epsilon (torch's default for u's dtype when it has none)."""
    return block.norm.eps if block.norm.eps is not None else torch.finfo(u.dtype).eps
