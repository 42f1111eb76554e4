"""Session 14 probe kernels: the mixer tile with the next tile's loads in flight, and a copy-pattern floor.

_mixer_persist: the shipped mixer's arithmetic, but a program owns one channel block (its dt_proj columns, dt bias,
D and A loaded once) and walks row blocks rb, rb + G, rb + 2G, ... loading the next row block's x, z, 1/rms, x_proj
output and state before it computes the current one. So each program has a tile's worth of loads in flight while it
computes, instead of waiting on memory two or three times a tile.

_mixer_copy: the same tile's memory traffic (x, z, state read; state, y written) with trivial arithmetic: what this
access pattern can move, whatever the arithmetic.
"""

import triton
import triton.language as tl

from sm1.step_triton import _dot, _load_n, _silu, _softplus, _state_update


@triton.jit
def _tile_loads(rb, cols, cm, xc_ptr, z_ptr, z_stride, rs_ptr, xp_ptr, ssm_ptr, slots_ptr, B, E,
                N: tl.constexpr, P: tl.constexpr, BLOCK_B: tl.constexpr):  # fmt: skip
    rows = rb * BLOCK_B + tl.arange(0, BLOCK_B)
    rm = rows < B
    slot = tl.load(slots_ptr + rows, mask=rm, other=-1)
    om = rm[:, None] & cm[None, :]
    sm = (slot >= 0)[:, None] & cm[None, :]
    ps = tl.arange(0, P)
    xp = tl.load(xp_ptr + rows[:, None] * P + ps[None, :], mask=rm[:, None], other=0.0)
    x = tl.load(xc_ptr + rows[:, None] * E + cols[None, :], mask=om, other=0.0)
    z = tl.load(z_ptr + rows[:, None] * z_stride + cols[None, :], mask=om, other=0.0)
    rs = tl.load(rs_ptr + rows, mask=rm, other=0.0)
    h = _load_n(ssm_ptr + tl.maximum(slot, 0)[:, None] * E * N + cols[None, :] * N, 1, sm, N)
    return slot, xp, x, z, rs, h


@triton.jit
def _mixer_persist(xc_ptr, z_ptr, z_stride, rs_ptr, xp_ptr, wdt_ptr, dtb_ptr, a_ptr, d_ptr, ssm_ptr, slots_ptr,
                   y_ptr, B, E, R: tl.constexpr, N: tl.constexpr, P: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, GROUPS):  # fmt: skip
    """grid: (channel blocks x GROUPS,); program p: channel block p % blocks, row blocks p // blocks + k GROUPS."""
    blocks = tl.cdiv(E, BLOCK_C)
    cb = tl.program_id(0) % blocks
    rb = tl.program_id(0) // blocks
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cols < E
    ps = tl.arange(0, P)
    w_dt = tl.load(wdt_ptr + ps[:, None] * E + cols[None, :], mask=cm[None, :], other=0.0)
    dt_b = tl.load(dtb_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    D = tl.load(d_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    A = _load_n(a_ptr + cols[None, :] * N, 1, cm[None, :], N)
    slot, xp, x, z, rs, h = _tile_loads(rb, cols, cm, xc_ptr, z_ptr, z_stride, rs_ptr, xp_ptr, ssm_ptr, slots_ptr,
                                        B, E, N, P, BLOCK_B)  # fmt: skip
    row_blocks = tl.cdiv(B, BLOCK_B)
    while rb < row_blocks:
        nxt = rb + GROUPS
        n_slot, n_xp, n_x, n_z, n_rs, n_h = _tile_loads(nxt, cols, cm, xc_ptr, z_ptr, z_stride, rs_ptr, xp_ptr,
                                                        ssm_ptr, slots_ptr, B, E, N, P, BLOCK_B)  # fmt: skip
        rows = rb * BLOCK_B + tl.arange(0, BLOCK_B)
        rm = rows < B
        om = rm[:, None] & cm[None, :]
        sm = (slot >= 0)[:, None] & cm[None, :]
        xf = x.to(tl.float32)
        dt = _softplus(_dot(xp, w_dt, IEEE) + dt_b)
        state = ssm_ptr + tl.maximum(slot, 0)[:, None] * E * N + cols[None, :] * N
        y = _state_update(D * xf, dt, xf, xp.to(tl.float32), ps[None, :], a_ptr, cols[None, :], cm[None, :], state,
                          sm, A, h, R, N, 1)  # fmt: skip
        zf = z.to(tl.float32) * rs[:, None]
        tl.store(y_ptr + rows[:, None] * E + cols[None, :], y * _silu(zf), mask=om)
        slot, xp, x, z, rs, h = n_slot, n_xp, n_x, n_z, n_rs, n_h
        rb = nxt


@triton.jit
def _mixer_copy(xc_ptr, z_ptr, z_stride, rs_ptr, xp_ptr, wdt_ptr, dtb_ptr, a_ptr, d_ptr, ssm_ptr, slots_ptr,
                y_ptr, B, E, R: tl.constexpr, N: tl.constexpr, P: tl.constexpr, IEEE: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """The shipped tile's reads and writes of x, z, the state and y, with trivial arithmetic."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rm = rows < B
    slot = tl.load(slots_ptr + rows, mask=rm, other=-1)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cols < E
    om = rm[:, None] & cm[None, :]
    sm = (slot >= 0)[:, None] & cm[None, :]
    x = tl.load(xc_ptr + rows[:, None] * E + cols[None, :], mask=om, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + rows[:, None] * z_stride + cols[None, :], mask=om, other=0.0).to(tl.float32)
    state = ssm_ptr + tl.maximum(slot, 0)[:, None] * E * N + cols[None, :] * N
    h = tl.load(state, mask=sm, other=0.0)
    tl.store(state, h * 0.5 + x, mask=sm)
    tl.store(y_ptr + rows[:, None] * E + cols[None, :], x * z + h, mask=om)
