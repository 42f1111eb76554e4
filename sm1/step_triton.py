"""The decode step of one residual block in five launches, reading and writing the slot pool in place.

The eager step (Block's norm + MambaBlock.step) runs about 25 small kernels a layer, plus a gather and a
scatter of the sessions' state rows; at batch 1 a CUDA-graph step is nothing but those launches. Here:

  in:      u @ W_in, the RMSNorm's weight folded into W_in and its 1/rms applied to the product's rows;
  conv:    the causal conv's window moved on in place in the pool row, the conv output, SiLU;
  x_proj:  one product (it needs every channel of a row, so it cannot live in a channel-block kernel);
  mixer:   dt = softplus(dt_proj(.)), h = exp(dt A) h + dt x B (in place in the pool row), y = h C + D x,
           gated by SiLU(z);
  out:     u += y @ W_out, in place.

in, x_proj and out are cuBLAS products (split over the channels in Triton, to run on every multiprocessor,
x_proj and out were slower at every batch: benchmarks/RESULTS.md, 2026-12-06); conv and mixer run as (16 rows
x channel block) Triton tiles. This is the step from 2 rows on; a single row runs every layer and the head in
one persistent kernel (sm1/step_persistent.py).

Weights are laid out for these shapes once per version of the weights (`decode_weights`). Every elementwise
product runs in fp32 registers whatever the model's dtype; the state stays fp32. A row whose slot is negative
is padding: it reads a zero state and writes nothing, so padded rows of a CUDA graph never race on a shared
slot. It runs on CUDA; with TRITON_INTERPRET=1 the same kernels run on the CPU, which is how CI checks them
against the eager step.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton here: the eager step is the only one
    triton = None

# launch sizes, chosen with `scripts/tune_decode_tiles.py` on an H200 (benchmarks/RESULTS.md, 2026-12-04)
CONV_ROWS, CONV_C, CONV_WARPS = 16, 128, 8  # conv tiles: rows x channels, and warps
CONV_C_WIDE = 256  # conv tiles this wide where there are still 2 of them per SM (90M model, 1024 rows: 7.7 us
# against 9.0; the default model's 512 channels make too few of them: 0.262 ms a step against 0.242-0.246)
MIXER_ROWS, MIXER_C, MIXER_WARPS = 16, 64, 8  # mixer tiles (16 rows: the smallest tensor-core tile)
MIXER_ROWS_TALL = 32  # mixer tiles this tall where there are still 4 of them per SM, timed inside the step (90M
# model, H100, 1024 rows: 269-272 us a step against 284-286; 256 rows, 192 such tiles: 123 against 105)
PAD_HEAD = True  # the LM head through its weight padded to a multiple of 64 rows (see `logits`)


def available(device: torch.device) -> bool:
    """Whether the kernels can run on `device` (CUDA, or the CPU under Triton's interpreter)."""
    return triton is not None and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


@dataclass
class DecodeWeights:
    """One block's weights as the decode kernels read them (P: x_proj's R + 2N outputs padded to a power of 2)."""

    w_in: Tensor  # (2E, d_model): in_proj.weight with the norm's weight folded in (rows x, then z)
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
            w_in = (mixer.in_proj.weight * block.norm.weight).contiguous()
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
    def _inv_rms(u, Dm, eps, AXIS: tl.constexpr):
        """RMSNorm's 1/rms along AXIS of u (fp32, zero past Dm)."""
        return 1.0 / tl.sqrt(tl.sum(u * u, axis=AXIS) / Dm + eps)

    @triton.jit
    def _rscale(u_ptr, rows, rm, Dm, eps, BLOCK_D: tl.constexpr):
        """RMSNorm's 1/rms of rows `rows` (masked by rm) of u (B, Dm), in fp32."""
        ds = tl.arange(0, BLOCK_D)
        u = tl.load(u_ptr + rows[:, None] * Dm + ds[None, :], mask=rm[:, None] & (ds < Dm)[None, :], other=0.0)
        return _inv_rms(u.to(tl.float32), Dm, eps, 1)

    @triton.jit
    def _load_n(ptr, stride, mask, N: tl.constexpr):
        """The N loads ptr + n * stride (n < N) as a tuple, issued together. The one-row kernel issues the
        loads of what it updates in place (conv window, state) ahead of the reductions before them, which it
        waits on: 9% faster on an H100. The tiles do not: there it measured slower, for a reason not found
        (their registers allow as many programs per SM either way; benchmarks/RESULTS.md, 2026-12-05)."""
        out = ()
        for n in tl.static_range(N):
            out = out + (tl.load(ptr + n * stride, mask=mask, other=0.0),)  # noqa: RUF005 (no unpacking in Triton)
        return out

    @triton.jit
    def _conv(x, window, win, sm, cols, cm, cw_ptr, cb_ptr, E, K: tl.constexpr):
        """SiLU(causal conv) in fp32 of the new inputs x (fp32), continuing each one's window: `win` points at
        the oldest of its K - 1 inputs in the pool (rows E apart); the window moves on by one, x (in the pool's
        dtype) going last. sm: which windows exist (padding rows have none: zeros, nothing written). window:
        the K - 1 inputs as loaded by _load_n, or None to load them here, one at a time.
        Where a program's threads hold copies of one channel (a block narrower than the program), each copy
        loads the window and one copy stores it: every load of a window slot comes before the barrier that
        the store into it waits behind, so no copy reads a slot already moved on."""
        x = x.to(win.dtype.element_ty)
        acc = tl.load(cb_ptr + cols, mask=cm, other=0.0).to(tl.float32)
        for k in tl.static_range(K - 1):
            v = tl.load(win + k * E, mask=sm, other=0.0) if window is None else window[k]
            acc += v.to(tl.float32) * tl.load(cw_ptr + k * E + cols, mask=cm, other=0.0).to(tl.float32)
            if window is None:
                tl.debug_barrier()
                if k > 0:
                    tl.store(win + (k - 1) * E, v, mask=sm)
        acc += x.to(tl.float32) * tl.load(cw_ptr + (K - 1) * E + cols, mask=cm, other=0.0).to(tl.float32)
        if window is not None:
            tl.debug_barrier()
            for k in tl.static_range(1, K - 1):
                tl.store(win + (k - 1) * E, window[k], mask=sm)
        tl.store(win + (K - 2) * E, x, mask=sm)
        return _silu(acc)

    @triton.jit
    def _state_update(y, dt, x, xp, ps, a_ptr, cols, cm, state, sm, A, h, R: tl.constexpr, N: tl.constexpr,
                      AXIS: tl.constexpr):  # fmt: skip
        """h = exp(dt A) h + dt x B for each of the N states (in place at `state`, masked by sm), returning
        y + sum_n h C. xp (fp32): x_proj's output along AXIS (dt_raw, B, C at positions ps); cols, cm: the
        channels of dt and x, which index A (E, N) at a_ptr. A and h: the N columns of A and of the state
        for these channels as loaded by _load_n, or None to load them here, one at a time. Each state is
        loaded by every thread holding a copy of its channel before the barrier that its store waits behind
        (as in _conv)."""
        if h is not None:
            tl.debug_barrier()
        for n in tl.static_range(N):
            B_n = tl.sum(tl.where(ps == R + n, xp, 0.0), axis=AXIS, keep_dims=True)
            C_n = tl.sum(tl.where(ps == R + N + n, xp, 0.0), axis=AXIS, keep_dims=True)
            if h is None:
                a = tl.load(a_ptr + cols * N + n, mask=cm, other=0.0)
                h_n = tl.exp(dt * a) * tl.load(state + n, mask=sm, other=0.0) + dt * x * B_n
                tl.debug_barrier()
            else:
                h_n = tl.exp(dt * A[n]) * h[n] + dt * x * B_n
            tl.store(state + n, h_n, mask=sm)
            y += h_n * C_n
        return y

    @triton.jit
    def _conv_kernel(u_ptr, xz_ptr, xz_stride, conv_ptr, slots_ptr, cw_ptr, cb_ptr, xc_ptr, rs_ptr, B, Dm, E, eps,
                     K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
        """conv for a (BLOCK_B rows, BLOCK_C channels) tile of in_proj's raw output xz: the norm's scale and
        the conv; x stored."""
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        rm = rows < B
        slot = tl.load(slots_ptr + rows, mask=rm, other=-1)
        scale = _rscale(u_ptr, rows, rm, Dm, eps, BLOCK_D)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = cols < E
        om = rm[:, None] & cm[None, :]
        x = tl.load(xz_ptr + rows[:, None] * xz_stride + cols[None, :], mask=om, other=0.0).to(tl.float32)
        win = conv_ptr + tl.maximum(slot, 0)[:, None] * (K - 1) * E + cols[None, :]
        sm = (slot >= 0)[:, None] & cm[None, :]
        x = _conv(x * scale[:, None], None, win, sm, cols[None, :], cm[None, :], cw_ptr, cb_ptr, E, K)
        tl.store(xc_ptr + rows[:, None] * E + cols[None, :], x, mask=om)
        if tl.program_id(1) == 0:
            tl.store(rs_ptr + rows, scale, mask=rm)

    @triton.jit
    def _mixer_kernel(xc_ptr, z_ptr, z_stride, rs_ptr, xp_ptr, wdt_ptr, dtb_ptr, a_ptr, d_ptr, ssm_ptr, slots_ptr,
                      y_ptr, B, E, R: tl.constexpr, N: tl.constexpr, P: tl.constexpr, IEEE: tl.constexpr,
                      BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
        """dt, the state update and the gated readout of a (BLOCK_B rows, BLOCK_C channels) tile, from x_proj's
        output xp (B, P): dt_raw, B, C, zero padding."""
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        rm = rows < B
        slot = tl.load(slots_ptr + rows, mask=rm, other=-1)
        ps = tl.arange(0, P)
        xp = tl.load(xp_ptr + rows[:, None] * P + ps[None, :], mask=rm[:, None], other=0.0)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = cols < E
        om = rm[:, None] & cm[None, :]
        sm = (slot >= 0)[:, None] & cm[None, :]
        x = tl.load(xc_ptr + rows[:, None] * E + cols[None, :], mask=om, other=0.0).to(tl.float32)
        dt = _dot(xp, tl.load(wdt_ptr + ps[:, None] * E + cols[None, :], mask=cm[None, :], other=0.0), IEEE)
        dt = _softplus(dt + tl.load(dtb_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :])
        y = tl.load(d_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :] * x
        state = ssm_ptr + tl.maximum(slot, 0)[:, None] * E * N + cols[None, :] * N
        y = _state_update(y, dt, x, xp.to(tl.float32), ps[None, :], a_ptr, cols[None, :], cm[None, :], state, sm,
                          None, None, R, N, 1)  # fmt: skip
        z = tl.load(z_ptr + rows[:, None] * z_stride + cols[None, :], mask=om, other=0.0).to(tl.float32)
        z = z * tl.load(rs_ptr + rows, mask=rm, other=0.0)[:, None]
        tl.store(y_ptr + rows[:, None] * E + cols[None, :], y * _silu(z), mask=om)


def block_step(block: nn.Module, u: Tensor, ssm: Tensor, conv: Tensor, slots: Tensor) -> Tensor:
    """u + block's mixer(norm(u)) for rows `slots` of one layer's pool: u (B, d_model), contiguous, is updated
    in place (the residual stream) and returned. ssm (S, E, N) fp32 and conv (S, d_conv - 1, E) are that
    layer's pool, updated in place."""
    w = decode_weights(block)
    xz = F.linear(u, w.w_in)  # (B, 2E), before the norm's 1/rms
    xc, rs = conv_update(block, w, u, xz, conv, slots)
    y = mixer_update(block, w, xc, xz[:, block.mixer.cfg.d_inner :], rs, ssm, slots)
    return u.addmm_(y, block.mixer.out_proj.weight.t())  # out_proj and the residual add in one product


def conv_update(block: nn.Module, w: DecodeWeights, u: Tensor, xz: Tensor, conv: Tensor, slots: Tensor
                ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The conv kernel: xc (B, E), the conv's output, and rs (B,) fp32, RMSNorm's 1/rms of each row of u;
    the windows moved on in place. xz (B, 2E): u @ w.w_in, before the norm's 1/rms."""
    (B, Dm), E = u.shape, block.mixer.cfg.d_inner
    xc = torch.empty(B, E, device=u.device, dtype=u.dtype)
    rs = torch.empty(B, device=u.device, dtype=torch.float32)
    wide = triton.cdiv(B, CONV_ROWS) * triton.cdiv(E, CONV_C_WIDE) >= 2 * _sm_count(u.device)
    channels = CONV_C_WIDE if wide else CONV_C
    _conv_kernel[(triton.cdiv(B, CONV_ROWS), triton.cdiv(E, channels))](
        u, xz, xz.stride(0), conv, slots, w.conv_w, block.mixer.conv1d.bias, xc, rs, B, Dm, E, _eps(block.norm, u),
        K=block.mixer.cfg.d_conv, BLOCK_B=CONV_ROWS, BLOCK_C=channels, BLOCK_D=triton.next_power_of_2(Dm),
        num_warps=CONV_WARPS,
    )  # fmt: skip
    return xc, rs


def mixer_update(block: nn.Module, w: DecodeWeights, xc: Tensor, z: Tensor, rs: Tensor, ssm: Tensor, slots: Tensor
                 ) -> Tensor:  # fmt: skip
    """x_proj and the mixer kernel: y (B, E) in xc's dtype, the state updated in place. w: the block's
    decode_weights; xc (B, E) the conv's output, z (B, E) in_proj's raw z (rows may be strided), rs (B,) the
    norm's 1/rms."""
    mixer = block.mixer
    cfg = mixer.cfg
    B, E = xc.shape
    xp = xc @ w.w_x  # (B, P): dt_raw, B, C, zeros
    y = torch.empty_like(xc)
    tall = triton.cdiv(B, MIXER_ROWS_TALL) * triton.cdiv(E, MIXER_C) >= 4 * _sm_count(xc.device)
    rows = MIXER_ROWS_TALL if tall else MIXER_ROWS
    _mixer_kernel[(triton.cdiv(B, rows), triton.cdiv(E, MIXER_C))](
        xc, z, z.stride(0), rs, xp, w.w_dt, mixer.dt_proj.bias, w.A, mixer.D, ssm, slots, y, B, E, R=cfg.dt_rank,
        N=cfg.d_state, P=xp.shape[1], IEEE=_ieee(xc), BLOCK_B=rows, BLOCK_C=MIXER_C, num_warps=MIXER_WARPS,
    )  # fmt: skip
    return y


def logits(model: nn.Module, x: Tensor) -> Tensor:
    """model.lm_head(x) in float32, through its weight padded with zero rows to a multiple of 64: cuBLAS's
    kernels for SM1's 443 rows take 25 us at 1024 rows on an H100, 8.4 us padded (benchmarks/RESULTS.md)."""
    weight = model.lm_head.weight
    if not PAD_HEAD:
        return F.linear(x, weight).float()
    version = (weight._version, weight.data_ptr(), weight.dtype)
    cached = getattr(model, "_padded_head", None)
    if cached is None or cached[0] != version:
        with torch.no_grad():
            padded = weight.new_zeros(-(-weight.shape[0] // 64) * 64, weight.shape[1])
            padded[: weight.shape[0]] = weight
        model._padded_head = cached = (version, padded)
    return F.linear(x, cached[1])[:, : weight.shape[0]].float()


@functools.cache
def _sm_count(device: torch.device) -> int:
    """The GPU's multiprocessors (1 under the interpreter, which runs one program at a time: so its tests
    take the same tiles on every machine)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _ieee(u: Tensor) -> bool:
    """Full-fp32 products: an fp32 model, or the CPU (Triton's interpreter)."""
    return u.dtype == torch.float32 or u.device.type == "cpu"


def _eps(norm: nn.Module, u: Tensor) -> float:
    """An RMSNorm's epsilon (torch's default for u's dtype when it has none)."""
    return norm.eps if norm.eps is not None else torch.finfo(u.dtype).eps
