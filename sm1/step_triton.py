"""The decode step of one residual block in three or five launches, reading and writing the slot pool in place.

The eager step (Block's norm + MambaBlock.step) runs about 25 small kernels a layer, plus a gather and a
scatter of the sessions' state rows; at batch 1 a CUDA-graph step is nothing but those launches. Here:

  in:      u @ W_in, the RMSNorm's weight folded into W_in and its 1/rms applied to the product's rows;
  conv:    the causal conv's window moved on in place in the pool row, the conv output, SiLU;
  x_proj:  it needs every channel of a row: a product of its own, or (up to SMALL_BATCH rows) each channel
           block's share written as a partial sum by the in + conv kernel, which the mixer adds up;
  mixer:   dt = softplus(dt_proj(.)), h = exp(dt A) h + dt x B (in place in the pool row), y = h C + D x,
           gated by SiLU(z);
  out:     u += y @ W_out, in place.

Up to SMALL_BATCH rows, in + conv + x_proj is one Triton GEMV kernel (each program streams its W_in rows once
and loops over the rows; conv and x_proj are its epilogue), the mixer works a row at a time, and out is a
GEMV kernel too: three launches a layer. From there on, in, x_proj and out are cuBLAS products and conv and
the mixer run as (16 rows x channel block) tiles: five launches (x_proj's partial sums in the conv tiles
were slower there: benchmarks/RESULTS.md, 2026-12-04). On Hopper and later each Triton kernel is a
programmatic dependent launch: it starts while the kernel before it finishes, reads its weights, and only then
waits for that kernel's output.

Weights are laid out for these shapes once per version of the weights (`decode_weights`). Every elementwise
product runs in fp32 registers whatever the model's dtype; the state stays fp32. A row whose slot is negative
is padding: it reads a zero state and writes nothing, so padded rows of a CUDA graph never race on a shared
slot. It runs on CUDA; with TRITON_INTERPRET=1 the same kernels run on the CPU, which is how CI checks them
against the eager step.
"""

from __future__ import annotations

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
try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # no Triton, or one before 3.4: no programmatic dependent launch
    gdc_launch_dependents = gdc_wait = None

# launch sizes, chosen with `benchmarks/decode.py --sweep` on an H200 (benchmarks/RESULTS.md, 2026-12-04)
SMALL_BATCH = 4  # up to this many rows: the GEMV kernels for in + conv and for out
BLOCK_N = 8  # GEMV in + conv: channels of x (and of z) per program
BLOCK_O = 4  # GEMV out: d_model outputs per program
BLOCK_ROWS = 16  # conv and mixer tiles: rows (the smallest tensor-core tile)
BLOCK_C = 64  # mixer tiles: channels
BLOCK_CONV = 128  # conv tiles: channels
NUM_WARPS = 8  # GEMV kernels
TILE_WARPS = 8  # conv and mixer tiles
PDL = True  # programmatic dependent launch where the GPU has it (Hopper on)


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
    # Loads of what another kernel wrote go through L2 only: under programmatic dependent launch a kernel starts
    # on SMs where the one before it still runs, and an L1 line that kernel's blocks bring in can go stale.
    L2 = tl.constexpr(".cg")

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
    def _rscale(u_ptr, rows, rm, Dm, eps, BLOCK_D: tl.constexpr):
        """RMSNorm's 1/rms of rows `rows` (masked by rm) of u (B, Dm), in fp32."""
        ds = tl.arange(0, BLOCK_D)
        u = tl.load(u_ptr + rows[:, None] * Dm + ds[None, :], mask=rm[:, None] & (ds < Dm)[None, :], other=0.0,
                    cache_modifier=L2)  # fmt: skip
        u = u.to(tl.float32)
        return 1.0 / tl.sqrt(tl.sum(u * u, axis=1) / Dm + eps)

    @triton.jit
    def _conv(x, win, sm, cols, cm, cw_ptr, cb_ptr, E, K: tl.constexpr):
        """SiLU(causal conv) in fp32 of the new inputs x (fp32), continuing each one's window: `win` points at
        the oldest of its K - 1 inputs in the pool (rows E apart); the window moves on by one, x (in the pool's
        dtype) going last. sm: which windows exist (padding rows have none: zeros, nothing written)."""
        x = x.to(win.dtype.element_ty)
        acc = tl.load(cb_ptr + cols, mask=cm, other=0.0).to(tl.float32)
        for k in tl.static_range(K - 1):
            v = tl.load(win + k * E, mask=sm, other=0.0, cache_modifier=L2)
            acc += v.to(tl.float32) * tl.load(cw_ptr + k * E + cols, mask=cm, other=0.0).to(tl.float32)
            if k > 0:
                tl.store(win + (k - 1) * E, v, mask=sm)
        acc += x.to(tl.float32) * tl.load(cw_ptr + (K - 1) * E + cols, mask=cm, other=0.0).to(tl.float32)
        tl.store(win + (K - 2) * E, x, mask=sm)
        return _silu(acc)

    @triton.jit
    def _after_previous(PDL: tl.constexpr):
        """Under programmatic dependent launch: wait until the kernel before has finished (its writes seen),
        then let the next one launch, so that it reads its weights while this one works."""
        if PDL:
            gdc_wait()
            gdc_launch_dependents()

    @triton.jit
    def _in_gemv_kernel(u_ptr, w_ptr, wx_ptr, conv_ptr, slots_ptr, cw_ptr, cb_ptr, xc_ptr, z_ptr, rs_ptr, xp_ptr,
                        B, Dm, E, eps, K: tl.constexpr, P: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr, PDL: tl.constexpr):  # fmt: skip
        """in + conv + x_proj for few rows: channels [BLOCK_N * pid, +BLOCK_N) of x and z for every row, this
        program's W_in rows read once; per row the conv, x and the raw z stored, and these channels' share of
        x_proj stored as partial sum `pid` of xp (programs, B, P)."""
        pid = tl.program_id(0)
        cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        cm = cols < E
        ds = tl.arange(0, BLOCK_D)
        ps = tl.arange(0, P)
        wm = cm[:, None] & (ds < Dm)[None, :]
        w_x = tl.load(w_ptr + cols[:, None] * Dm + ds[None, :], mask=wm, other=0.0).to(tl.float32)
        w_z = tl.load(w_ptr + (E + cols)[:, None] * Dm + ds[None, :], mask=wm, other=0.0).to(tl.float32)
        w_p = tl.load(wx_ptr + cols[:, None] * P + ps[None, :], mask=cm[:, None], other=0.0).to(tl.float32)
        _after_previous(PDL)
        for b in range(B):
            u = tl.load(u_ptr + b * Dm + ds, mask=ds < Dm, other=0.0, cache_modifier=L2).to(tl.float32)
            scale = 1.0 / tl.sqrt(tl.sum(u * u, axis=0) / Dm + eps)
            slot = tl.load(slots_ptr + b)
            win = conv_ptr + tl.maximum(slot, 0) * (K - 1) * E + cols
            sm = cm & (cols * 0 + slot >= 0)  # (the scalar broadcast first: a padding row has no window)
            x = _conv(tl.sum(w_x * u[None, :], axis=1) * scale, win, sm, cols, cm, cw_ptr, cb_ptr, E, K)
            x = x.to(xc_ptr.dtype.element_ty)  # x_proj multiplies x as stored
            tl.store(xc_ptr + b * E + cols, x, mask=cm)
            tl.store(xp_ptr + (pid * B + b) * P + ps, tl.sum(x.to(tl.float32)[:, None] * w_p, axis=0))
            tl.store(z_ptr + b * E + cols, tl.sum(w_z * u[None, :], axis=1), mask=cm)
            if pid == 0:
                tl.store(rs_ptr + b, scale)

    @triton.jit
    def _conv_kernel(u_ptr, xz_ptr, xz_stride, conv_ptr, slots_ptr, cw_ptr, cb_ptr, xc_ptr, rs_ptr, B, Dm, E, eps,
                     K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                     PDL: tl.constexpr):  # fmt: skip
        """conv for a (BLOCK_B rows, BLOCK_C channels) tile of in_proj's raw output xz: the norm's scale and
        the conv; x stored."""
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        rm = rows < B
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = cols < E
        _after_previous(PDL)
        slot = tl.load(slots_ptr + rows, mask=rm, other=-1)
        scale = _rscale(u_ptr, rows, rm, Dm, eps, BLOCK_D)
        om = rm[:, None] & cm[None, :]
        x = tl.load(xz_ptr + rows[:, None] * xz_stride + cols[None, :], mask=om, other=0.0, cache_modifier=L2)
        win = conv_ptr + tl.maximum(slot, 0)[:, None] * (K - 1) * E + cols[None, :]
        sm = (slot >= 0)[:, None] & cm[None, :]
        x = _conv(x.to(tl.float32) * scale[:, None], win, sm, cols[None, :], cm[None, :], cw_ptr, cb_ptr, E, K)
        tl.store(xc_ptr + rows[:, None] * E + cols[None, :], x, mask=om)
        if tl.program_id(1) == 0:
            tl.store(rs_ptr + rows, scale, mask=rm)

    @triton.jit
    def _mixer_kernel(xc_ptr, z_ptr, z_stride, rs_ptr, xp_ptr, wdt_ptr, dtb_ptr, a_ptr, d_ptr, ssm_ptr, slots_ptr,
                      y_ptr, B, E, R: tl.constexpr, N: tl.constexpr, P: tl.constexpr, PARTS: tl.constexpr,
                      BLOCK_PARTS: tl.constexpr, IEEE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
                      PDL: tl.constexpr):  # fmt: skip
        """dt, the state update and the gated readout of a (BLOCK_B rows, BLOCK_C channels) tile, from x_proj's
        output as PARTS partial sums xp (PARTS, B, P): dt_raw, B, C, zero padding. dt_proj is a tensor-core
        product for tiles of 16 rows or more, a broadcast sum below."""
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = cols < E
        ps = tl.arange(0, P)
        w_dt = tl.load(wdt_ptr + ps[:, None] * E + cols[None, :], mask=cm[None, :], other=0.0)
        dt_bias = tl.load(dtb_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
        D = tl.load(d_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
        _after_previous(PDL)
        rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
        rm = rows < B
        slot = tl.load(slots_ptr + rows, mask=rm, other=-1)
        parts = tl.arange(0, BLOCK_PARTS)
        xp = tl.load(xp_ptr + (parts[None, :, None] * B + rows[:, None, None]) * P + ps[None, None, :],
                     mask=(parts < PARTS)[None, :, None] & rm[:, None, None], other=0.0, cache_modifier=L2)  # fmt: skip
        xp = tl.sum(xp.to(tl.float32), axis=1).to(w_dt.dtype)  # x_proj's output in the model's dtype
        om = rm[:, None] & cm[None, :]
        sm = (slot >= 0)[:, None] & cm[None, :]
        x = tl.load(xc_ptr + rows[:, None] * E + cols[None, :], mask=om, other=0.0, cache_modifier=L2).to(tl.float32)
        if BLOCK_B >= 16:
            dt = _dot(xp, w_dt, IEEE)
        else:
            dt = tl.sum(xp.to(tl.float32)[:, :, None] * w_dt.to(tl.float32)[None, :, :], axis=1)
        dt = _softplus(dt + dt_bias)
        y = D * x
        state = ssm_ptr + tl.maximum(slot, 0)[:, None] * E * N + cols[None, :] * N
        for n in tl.static_range(N):
            B_n = tl.sum(tl.where(ps[None, :] == R + n, xp.to(tl.float32), 0.0), axis=1)[:, None]
            C_n = tl.sum(tl.where(ps[None, :] == R + N + n, xp.to(tl.float32), 0.0), axis=1)[:, None]
            a = tl.load(a_ptr + cols * N + n, mask=cm, other=0.0)[None, :]
            h = tl.exp(dt * a) * tl.load(state + n, mask=sm, other=0.0, cache_modifier=L2) + dt * x * B_n
            tl.store(state + n, h, mask=sm)
            y += h * C_n
        z = tl.load(z_ptr + rows[:, None] * z_stride + cols[None, :], mask=om, other=0.0, cache_modifier=L2)
        z = z.to(tl.float32) * tl.load(rs_ptr + rows, mask=rm, other=0.0, cache_modifier=L2)[:, None]
        tl.store(y_ptr + rows[:, None] * E + cols[None, :], y * _silu(z), mask=om)

    @triton.jit
    def _out_gemv_kernel(y_ptr, w_ptr, u_ptr, B, Dm, E, BLOCK_O: tl.constexpr, BLOCK_E: tl.constexpr,
                         PDL: tl.constexpr):  # fmt: skip
        """out for few rows: outputs [BLOCK_O * pid, +BLOCK_O) of u += y @ W_out.T for every row, this program's
        W_out rows read once (each program reads and writes only its own outputs of u: in place is safe)."""
        outs = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
        om = outs < Dm
        es = tl.arange(0, BLOCK_E)
        w = tl.load(w_ptr + outs[:, None] * E + es[None, :], mask=om[:, None] & (es < E)[None, :], other=0.0)
        w = w.to(tl.float32)
        _after_previous(PDL)
        for b in range(B):
            y = tl.load(y_ptr + b * E + es, mask=es < E, other=0.0, cache_modifier=L2).to(tl.float32)
            u = tl.load(u_ptr + b * Dm + outs, mask=om, other=0.0, cache_modifier=L2).to(tl.float32)
            acc = tl.sum(w * y[None, :], axis=1) + u
            tl.store(u_ptr + b * Dm + outs, acc, mask=om)


def block_step(block: nn.Module, u: Tensor, ssm: Tensor, conv: Tensor, slots: Tensor) -> Tensor:
    """u + block's mixer(norm(u)) for rows `slots` of one layer's pool: u (B, d_model), contiguous, is updated
    in place (the residual stream) and returned. ssm (S, E, N) fp32 and conv (S, d_conv - 1, E) are that
    layer's pool, updated in place."""
    mixer, w = block.mixer, decode_weights(block)
    cfg = mixer.cfg
    (B, Dm), E, K, P = u.shape, cfg.d_inner, cfg.d_conv, w.w_x.shape[1]
    eps, pdl = _eps(block, u), _pdl(u.device)
    xc = torch.empty(B, E, device=u.device, dtype=u.dtype)  # the conv's output
    rs = torch.empty(B, device=u.device, dtype=torch.float32)  # RMSNorm's 1/rms of each row
    small = B <= SMALL_BATCH
    if small:
        z = torch.empty(B, E, device=u.device, dtype=u.dtype)
        programs = triton.cdiv(E, BLOCK_N)
        xp = torch.empty(programs, B, P, device=u.device, dtype=torch.float32)  # x_proj's partial sums
        _in_gemv_kernel[(programs,)](
            u, w.w_in, w.w_x, conv, slots, w.conv_w, mixer.conv1d.bias, xc, z, rs, xp, B, Dm, E, eps, K=K, P=P,
            BLOCK_N=BLOCK_N, BLOCK_D=triton.next_power_of_2(Dm), PDL=pdl, **_launch(NUM_WARPS, pdl),
        )  # fmt: skip
    else:
        xz = F.linear(u, w.w_in)  # (B, 2E), before the norm's 1/rms
        z = xz[:, E:]
        xp = None  # x_proj: one product, in mixer_update
        _conv_kernel[(triton.cdiv(B, BLOCK_ROWS), triton.cdiv(E, BLOCK_CONV))](
            u, xz, xz.stride(0), conv, slots, w.conv_w, mixer.conv1d.bias, xc, rs, B, Dm, E, eps, K=K,
            BLOCK_B=BLOCK_ROWS, BLOCK_C=BLOCK_CONV, BLOCK_D=triton.next_power_of_2(Dm), PDL=pdl,
            **_launch(TILE_WARPS, pdl),
        )  # fmt: skip
    y = mixer_update(block, w, xc, z, rs, ssm, slots, xp)
    if not small:
        return u.addmm_(y, mixer.out_proj.weight.t())  # out_proj and the residual add in one product
    _out_gemv_kernel[(triton.cdiv(Dm, BLOCK_O),)](
        y, mixer.out_proj.weight, u, B, Dm, E, BLOCK_O=BLOCK_O, BLOCK_E=triton.next_power_of_2(E), PDL=pdl,
        **_launch(NUM_WARPS, pdl),
    )  # fmt: skip
    return u


def mixer_update(block: nn.Module, w: DecodeWeights, xc: Tensor, z: Tensor, rs: Tensor, ssm: Tensor, slots: Tensor,
                 xp: Tensor | None = None) -> Tensor:  # fmt: skip
    """The mixer kernel: y (B, E) in xc's dtype, the state updated in place. w: the block's decode_weights;
    xc (B, E) the conv's output, z (B, E) in_proj's raw z (rows may be strided), rs (B,) the norm's 1/rms;
    xp (parts, B, P) x_proj's output as partial sums, or None: x_proj as one product here."""
    mixer = block.mixer
    cfg = mixer.cfg
    B, E = xc.shape
    if xp is None:
        xp = (xc @ w.w_x).unsqueeze(0)  # (1, B, P): dt_raw, B, C, zeros
    block_b, pdl = 1 if B <= SMALL_BATCH else BLOCK_ROWS, _pdl(xc.device)
    y = torch.empty_like(xc)
    _mixer_kernel[(triton.cdiv(B, block_b), triton.cdiv(E, BLOCK_C))](
        xc, z, z.stride(0), rs, xp, w.w_dt, mixer.dt_proj.bias, w.A, mixer.D, ssm, slots, y, B, E, R=cfg.dt_rank,
        N=cfg.d_state, P=xp.shape[2], PARTS=xp.shape[0], BLOCK_PARTS=triton.next_power_of_2(xp.shape[0]),
        IEEE=_ieee(xc), BLOCK_B=block_b, BLOCK_C=BLOCK_C, PDL=pdl, **_launch(TILE_WARPS, pdl),
    )  # fmt: skip
    return y


def _pdl(device: torch.device) -> bool:
    """Programmatic dependent launch: asked for (PDL), and a Hopper or later GPU with a Triton that has it."""
    return PDL and device.type == "cuda" and gdc_wait is not None and torch.cuda.get_device_capability(device)[0] >= 9


def _launch(num_warps: int, pdl: bool) -> dict:
    """A kernel's launch options (launch_pdl only where it is on: the interpreter knows no such option)."""
    return {"num_warps": num_warps, "launch_pdl": True} if pdl else {"num_warps": num_warps}


def _ieee(u: Tensor) -> bool:
    """Full-fp32 products: an fp32 model, or the CPU (Triton's interpreter)."""
    return u.dtype == torch.float32 or u.device.type == "cpu"


def _eps(block: nn.Module, u: Tensor) -> float:
    """The block's RMSNorm epsilon (torch's default for u's dtype when it has none)."""
    return block.norm.eps if block.norm.eps is not None else torch.finfo(u.dtype).eps
