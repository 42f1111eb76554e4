"""The whole selective scan of a Mamba1 layer in Triton, forward and backward, for any d_state N:

    dt = softplus(dt_raw);  h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t;  y_t = (h_t C_t + D x_t) silu(z_t)

The pure path (MambaBlock in sm1/model.py) writes log_a = dt A, b = dt x B and h, each (B, T, E, N) fp32,
and runs a dozen elementwise kernels around sm1.scan. Here x, dt_raw, B, C, z are read in their own dtype
(bf16 under autocast), everything is computed in fp32 registers, and only y (the input dtype), the last
state and the chunk start states (B, T/CT, E, N) are written: h is recomputed in the backward.

The scan is sm1/scan_triton.py's: each step h += expm1(log_a) h + b (exact, where exp(log_a) h is biased),
parallel over T by chunks of CT steps in three launches (summary, carry, apply). A chunk multiplies the state
by exp(A sum(dt)), so the chunk summary is its end state from h = 0 and its sum of dt.

The backward (delta_t = dL/dh_t = dL/dy_t C_t + a_{t+1} delta_{t+1}) carries q = a_t delta_t, the gradient
to the state entering step t, in the same three launches run in reverse. The last launch holds a whole chunk
as (CT, channels) tiles and rebuilds both a_t h_{t-1} (forward) and delta_t (reverse) by associative scans
over (log a, value) pairs, so every gradient is an elementwise product of tiles: no h stored, no division
by a_t. Products of a_t in those scans are exp of sums of log a_t, as in sm1.scan. Reductions (dB, dC over
channels; dA, dD over batch and time) are per-program partial sums added by torch afterwards: deterministic,
no atomics. It runs on CUDA; with TRITON_INTERPRET=1 on the CPU (CI).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton here: MambaBlock keeps its pure path
    triton = None

# Launch sizes: the fastest of `benchmarks/layer.py --sweep-only` on an H100 (2026-11-23, B=8, T=2048,
# d_model 768): 4.74 ms fwd+bwd at d_state=1 and 15.4 at 16, against 5.43 and 22.9 for the first guesses
# (64, 2, 32, 8, 64); every setting within 8.3e-7 of the pure path in fp32
BLOCK_E = 64  # channels per program of the sequential launches (summary, carry, forward apply)
NUM_WARPS = 2
BLOCK_E_TILE = 16  # channels per program of the backward's (CT, channels) tiles: about 10 of them live
NUM_WARPS_TILE = 4
TARGET_CHUNKS = 32  # chunks per sequence, as sm1/scan_triton.py
MAX_CHUNK = 32  # the backward holds a chunk in registers: longer sequences get more chunks, not longer ones


def available(device: torch.device) -> bool:
    """Whether the kernels can run on `device` (CUDA, or the CPU under Triton's interpreter)."""
    return triton is not None and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:
    from sm1.scan_triton import _expm1
    from sm1.step_triton import _silu, _softplus

    @triton.jit
    def _combine(la1, v1, la2, v2):
        """(la1, v1) then (la2, v2): the pair scan of sm1.scan, products of a carried as sums of log a."""
        return la1 + la2, tl.exp(la2) * v1 + v2

    @triton.jit
    def _step_inputs(x_ptr, dt_ptr, bm_ptr, row, t, T, E, N, offs, em, ns, nm):
        """x_t, dt_t (0 past T or E: the state stands still) and B_t for one step of the sequential launches."""
        m = em & (offs * 0 + t < T)  # scalar conditions broadcast first: the interpreter needs it
        x = tl.load(x_ptr + (row + t) * E + offs, mask=m, other=0.0).to(tl.float32)
        dt = tl.where(m, _softplus(tl.load(dt_ptr + (row + t) * E + offs, mask=m, other=0.0).to(tl.float32)), 0.0)
        Bt = tl.load(bm_ptr + (row + t) * N + ns, mask=nm & (ns * 0 + t < T), other=0.0).to(tl.float32)
        return x, dt, Bt, m

    @triton.jit
    def _summary_kernel(x_ptr, dt_ptr, bm_ptr, a_ptr, hsum_ptr, dtsum_ptr, T, E, CT, NC,
                        N: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        """Each chunk from h = 0: its end state (E, N) and its sum of dt (E)."""
        pid_b, pid_c = tl.program_id(0), tl.program_id(1)
        offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
        ns = tl.arange(0, NP)
        em, nm = offs < E, ns < N
        A = tl.load(a_ptr + offs[:, None] * N + ns[None, :], mask=em[:, None] & nm[None, :], other=0.0)
        row = pid_b.to(tl.int64) * T
        h = tl.zeros([BLOCK, NP], dtype=tl.float32)
        s = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(CT):
            x, dt, Bt, _ = _step_inputs(x_ptr, dt_ptr, bm_ptr, row, pid_c * CT + i, T, E, N, offs, em, ns, nm)
            h += _expm1(dt[:, None] * A) * h + (dt * x)[:, None] * Bt[None, :]
            s += dt
        out = (pid_b * NC + pid_c) * E + offs
        tl.store(hsum_ptr + out[:, None] * N + ns[None, :], h, mask=em[:, None] & nm[None, :])
        tl.store(dtsum_ptr + out, s, mask=em)

    @triton.jit
    def _carry_kernel(hsum_ptr, dtsum_ptr, a_ptr, h0_ptr, last_ptr, E, NC, N: tl.constexpr, NP: tl.constexpr,
                      HAS_H0: tl.constexpr, REVERSE: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        """The recurrence over chunk summaries: each chunk's entering state, written over its summary; forward,
        the state after the last chunk (h_T) to last_ptr."""
        pid_b = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ns = tl.arange(0, NP)
        m2 = (offs < E)[:, None] & (ns < N)[None, :]
        en = offs[:, None] * N + ns[None, :]
        A = tl.load(a_ptr + en, mask=m2, other=0.0)
        h = tl.zeros([BLOCK, NP], dtype=tl.float32)
        if HAS_H0:
            h = tl.load(h0_ptr + pid_b * E * N + en, mask=m2, other=0.0).to(tl.float32)
        for i in range(NC):
            c = NC - 1 - i if REVERSE else i
            ptr = hsum_ptr + (pid_b * NC + c) * E * N + en
            chunk_h = tl.load(ptr, mask=m2, other=0.0)
            chunk_dt = tl.load(dtsum_ptr + (pid_b * NC + c) * E + offs, mask=offs < E, other=0.0)
            tl.store(ptr, h, mask=m2)
            h += _expm1(chunk_dt[:, None] * A) * h + chunk_h
        if not REVERSE:
            tl.store(last_ptr + pid_b * E * N + en, h, mask=m2)

    @triton.jit
    def _forward_kernel(x_ptr, dt_ptr, bm_ptr, cm_ptr, a_ptr, d_ptr, z_ptr, hin_ptr, y_ptr, T, E, CT, NC,
                        N: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        """Each chunk again from its entering state, writing y_t = (h_t C_t + D x_t) silu(z_t)."""
        pid_b, pid_c = tl.program_id(0), tl.program_id(1)
        offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
        ns = tl.arange(0, NP)
        em, nm = offs < E, ns < N
        m2 = em[:, None] & nm[None, :]
        A = tl.load(a_ptr + offs[:, None] * N + ns[None, :], mask=m2, other=0.0)
        D = tl.load(d_ptr + offs, mask=em, other=0.0).to(tl.float32)
        h = tl.load(hin_ptr + ((pid_b * NC + pid_c) * E + offs)[:, None] * N + ns[None, :], mask=m2, other=0.0)
        row = pid_b.to(tl.int64) * T
        for i in range(CT):
            t = pid_c * CT + i
            x, dt, Bt, m = _step_inputs(x_ptr, dt_ptr, bm_ptr, row, t, T, E, N, offs, em, ns, nm)
            Ct = tl.load(cm_ptr + (row + t) * N + ns, mask=nm & (ns * 0 + t < T), other=0.0).to(tl.float32)
            z = tl.load(z_ptr + (row + t) * E + offs, mask=m, other=0.0).to(tl.float32)
            h += _expm1(dt[:, None] * A) * h + (dt * x)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1) + D * x
            tl.store(y_ptr + (row + t) * E + offs, y * _silu(z), mask=m)

    @triton.jit
    def _reverse_summary_kernel(dt_ptr, cm_ptr, z_ptr, gy_ptr, a_ptr, qsum_ptr, T, E, CT, NC,
                                N: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        """Each chunk backwards from q = 0: q_t = a_t (dL/dy_t silu(z_t) C_t + q_{t+1}), ending at its first step."""
        pid_b, pid_c = tl.program_id(0), tl.program_id(1)
        offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
        ns = tl.arange(0, NP)
        em, nm = offs < E, ns < N
        A = tl.load(a_ptr + offs[:, None] * N + ns[None, :], mask=em[:, None] & nm[None, :], other=0.0)
        row = pid_b.to(tl.int64) * T
        q = tl.zeros([BLOCK, NP], dtype=tl.float32)
        for i in range(CT):
            t = pid_c * CT + CT - 1 - i
            m = em & (offs * 0 + t < T)
            dt = tl.where(m, _softplus(tl.load(dt_ptr + (row + t) * E + offs, mask=m, other=0.0).to(tl.float32)), 0.0)
            z = tl.load(z_ptr + (row + t) * E + offs, mask=m, other=0.0).to(tl.float32)
            gy = tl.load(gy_ptr + (row + t) * E + offs, mask=m, other=0.0).to(tl.float32)
            Ct = tl.load(cm_ptr + (row + t) * N + ns, mask=nm & (ns * 0 + t < T), other=0.0).to(tl.float32)
            q += (gy * _silu(z))[:, None] * Ct[None, :]
            q += _expm1(dt[:, None] * A) * q
        out = ((pid_b * NC + pid_c) * E + offs)[:, None] * N + ns[None, :]
        tl.store(qsum_ptr + out, q, mask=em[:, None] & nm[None, :])

    @triton.jit
    def _backward_kernel(
        x_ptr, dt_ptr, bm_ptr, cm_ptr, a_ptr, d_ptr, z_ptr, gy_ptr, hin_ptr, qin_ptr,
        dx_ptr, ddt_ptr, dz_ptr, db_ptr, dc_ptr, da_ptr, dd_ptr, dh0_ptr, T, E, NC,
        N: tl.constexpr, CT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """One chunk of (CT, BLOCK) tiles: every gradient, from the chunk's entering state h and the gradient
        q leaving it to the right (both from the carries). db, dc: (B, T, channel blocks, N) partial sums;
        da: (B, NC, E, N); dd: (B, NC, E); dh0 (B, E, N) = a_0 delta_0 from the first chunk (the carry's
        h + expm1(log a) h would lose its digits where a_0 is tiny and nothing is added after)."""
        pid_b, pid_c, pid_e = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        t0 = pid_c * CT
        ts = t0 + tl.arange(0, CT)  # (CT,)
        ts_rev = t0 + CT - 1 - tl.arange(0, CT)  # the chunk backwards: delta's scan runs forward on these rows
        es = pid_e * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
        tm, em = ts < T, es < E
        m2 = tm[:, None] & em[None, :]
        rows, rows_rev = pid_b.to(tl.int64) * T + ts, pid_b.to(tl.int64) * T + ts_rev  # (CT,)
        idx, idx_rev = rows[:, None] * E + es[None, :], rows_rev[:, None] * E + es[None, :]  # (CT, BLOCK)
        m2_rev = (ts_rev < T)[:, None] & em[None, :]
        first, last_rev = (ts == t0)[:, None], (ts_rev == t0 + CT - 1)[:, None]
        prev_m = m2 & (ts > t0)[:, None]  # step t - 1 inside this chunk
        next_m = em[None, :] & ((ts_rev + 1 < T) & (ts_rev + 1 < t0 + CT))[:, None]  # step t + 1, backwards

        x = tl.load(x_ptr + idx, mask=m2, other=0.0).to(tl.float32)
        dt = tl.where(m2, _softplus(tl.load(dt_ptr + idx, mask=m2, other=0.0).to(tl.float32)), 0.0)
        dt_prev = tl.where(prev_m, _softplus(tl.load(dt_ptr + idx - E, mask=prev_m, other=0.0).to(tl.float32)), 0.0)
        u_prev = dt_prev * tl.load(x_ptr + idx - E, mask=prev_m, other=0.0).to(tl.float32)  # dt_{t-1} x_{t-1}
        dt_next = tl.where(next_m, _softplus(tl.load(dt_ptr + idx_rev + E, mask=next_m, other=0.0).to(tl.float32)), 0.0)
        D = tl.load(d_ptr + es, mask=em, other=0.0).to(tl.float32)[None, :]
        z = tl.load(z_ptr + idx, mask=m2, other=0.0).to(tl.float32)
        gy = tl.load(gy_ptr + idx, mask=m2, other=0.0).to(tl.float32)
        sig_z = tl.sigmoid(z)
        dy = gy * z * sig_z  # dL/d(h C + D x), through the gate silu(z) = z sigmoid(z)
        dgate = gy * sig_z * (1.0 + z * (1.0 - sig_z))  # dL/dz = dgate (h C + D x)
        z_rev = tl.load(z_ptr + idx_rev, mask=m2_rev, other=0.0).to(tl.float32)
        dy_rev = tl.load(gy_ptr + idx_rev, mask=m2_rev, other=0.0).to(tl.float32) * _silu(z_rev)
        tl.store(dd_ptr + (pid_b * NC + pid_c) * E + es, tl.sum(dy * x, axis=0), mask=em)

        y = D * x  # h C + D x, summed over n below
        g_b = tl.zeros([CT, BLOCK], dtype=tl.float32)  # sum_n delta_n B_n = dL/d(dt x)
        g_la = tl.zeros([CT, BLOCK], dtype=tl.float32)  # sum_n dL/dlog_a_n A_n
        for n in range(N):
            A_n = tl.load(a_ptr + es * N + n, mask=em, other=0.0)[None, :]
            B_n = tl.load(bm_ptr + rows * N + n, mask=tm, other=0.0).to(tl.float32)[:, None]
            B_prev = tl.load(bm_ptr + rows * N + n - N, mask=tm & (ts > t0), other=0.0).to(tl.float32)[:, None]
            C_n = tl.load(cm_ptr + rows * N + n, mask=tm, other=0.0).to(tl.float32)[:, None]
            C_rev = tl.load(cm_ptr + rows_rev * N + n, mask=ts_rev < T, other=0.0).to(tl.float32)[:, None]
            chunk_en = ((pid_b * NC + pid_c) * E + es) * N + n
            h_in = tl.load(hin_ptr + chunk_en, mask=em, other=0.0)[None, :]
            q_in = tl.load(qin_ptr + chunk_en, mask=em, other=0.0)[None, :]
            la = dt * A_n
            # p_t = a_t h_{t-1} = a_t (p_{t-1} + b_{t-1}), the chunk's entering state in its first step
            b_prev = tl.where(first, h_in, u_prev * B_prev)
            _, p = tl.associative_scan((la, tl.exp(la) * b_prev), 0, _combine)
            h = p + dt * x * B_n
            y += h * C_n
            # delta_t = dy_t C_t + a_{t+1} delta_{t+1}, the gradient leaving the chunk in its last step; scanned
            # forward on the rows backwards and flipped back (associative_scan's reverse=True has had bugs)
            g = dy_rev * C_rev + tl.where(last_rev, q_in, 0.0)
            _, delta = tl.associative_scan((dt_next * A_n, g), 0, _combine)
            delta = tl.flip(delta, 0)
            dla = delta * p  # dL/dlog_a_t = delta_t a_t h_{t-1}
            g_b += delta * B_n
            g_la += dla * A_n
            tl.store(db_ptr + (rows * tl.num_programs(2) + pid_e) * N + n, tl.sum(delta * dt * x, axis=1), mask=tm)
            tl.store(dc_ptr + (rows * tl.num_programs(2) + pid_e) * N + n, tl.sum(dy * h, axis=1), mask=tm)
            tl.store(da_ptr + chunk_en, tl.sum(dla * dt, axis=0), mask=em)
            dh0 = tl.sum(tl.where(first, tl.exp(la) * delta, 0.0), axis=0)
            tl.store(dh0_ptr + (pid_b * E + es) * N + n, dh0, mask=em & (es * 0 + pid_c == 0))
        tl.store(dz_ptr + idx, dgate * y, mask=m2)
        tl.store(dx_ptr + idx, g_b * dt + dy * D, mask=m2)
        # softplus'(dt_raw) = sigmoid(dt_raw) = 1 - exp(-dt)
        tl.store(ddt_ptr + idx, (g_b * x + g_la) * -_expm1(-dt), mask=m2)


def _chunk(length: int, chunk: int | None) -> int:
    return chunk or min(MAX_CHUNK, max(16, triton.next_power_of_2(triton.cdiv(length, TARGET_CHUNKS))))


class SelectiveScan(torch.autograd.Function):
    """y, h_T = the selective scan and gate; gradients to every input but h_T (the prompt's last state)."""

    @staticmethod
    def forward(ctx, x, dt_raw, A, Bm, Cm, D, z, h0, chunk):  # type: ignore[override]
        bsz, length, E = x.shape
        N = A.shape[1]
        ct = _chunk(length, chunk)
        nc = triton.cdiv(length, ct)
        ne = triton.cdiv(E, BLOCK_E)
        kw = {"N": N, "NP": triton.next_power_of_2(N), "BLOCK": BLOCK_E, "num_warps": NUM_WARPS}
        h_in = torch.empty(bsz, nc, E, N, device=x.device, dtype=torch.float32)  # chunk summaries, then starts
        dt_sum = torch.empty(bsz, nc, E, device=x.device, dtype=torch.float32)
        h_last = torch.empty(bsz, E, N, device=x.device, dtype=torch.float32)
        y = torch.empty_like(x)
        _summary_kernel[(bsz, nc, ne)](x, dt_raw, Bm, A, h_in, dt_sum, length, E, ct, nc, **kw)
        _carry_kernel[(bsz, ne)](h_in, dt_sum, A, h_in if h0 is None else h0, h_last, E, nc,
                                 HAS_H0=h0 is not None, REVERSE=False, **kw)  # fmt: skip
        _forward_kernel[(bsz, nc, ne)](x, dt_raw, Bm, Cm, A, D, z, h_in, y, length, E, ct, nc, **kw)
        ctx.save_for_backward(x, dt_raw, A, Bm, Cm, D, z, h_in, dt_sum)
        ctx.chunk, ctx.has_h0 = ct, h0 is not None
        ctx.mark_non_differentiable(h_last)
        return y, h_last

    @staticmethod
    def backward(ctx, gy, _):  # type: ignore[override]
        x, dt_raw, A, Bm, Cm, D, z, h_in, dt_sum = ctx.saved_tensors
        bsz, length, E = x.shape
        N, ct, nc = A.shape[1], ctx.chunk, h_in.shape[1]
        gy = gy.contiguous()
        kw = {"N": N, "NP": triton.next_power_of_2(N), "BLOCK": BLOCK_E, "num_warps": NUM_WARPS}
        q_in = torch.empty_like(h_in)
        dh0 = torch.empty(bsz, E, N, device=x.device, dtype=torch.float32)
        ne = triton.cdiv(E, BLOCK_E)
        _reverse_summary_kernel[(bsz, nc, ne)](dt_raw, Cm, z, gy, A, q_in, length, E, ct, nc, **kw)
        _carry_kernel[(bsz, ne)](q_in, dt_sum, A, q_in, q_in, E, nc, HAS_H0=False, REVERSE=True, **kw)
        ne_tile = triton.cdiv(E, BLOCK_E_TILE)
        dx, ddt, dz = torch.empty_like(x), torch.empty_like(dt_raw), torch.empty_like(z)
        db = torch.empty(bsz, length, ne_tile, N, device=x.device, dtype=torch.float32)
        dc = torch.empty_like(db)
        da = torch.empty_like(h_in)
        dd = torch.empty_like(dt_sum)
        _backward_kernel[(bsz, nc, ne_tile)](
            x, dt_raw, Bm, Cm, A, D, z, gy, h_in, q_in, dx, ddt, dz, db, dc, da, dd, dh0, length, E, nc,
            N=N, CT=ct, BLOCK=BLOCK_E_TILE, num_warps=NUM_WARPS_TILE,
        )  # fmt: skip
        return (dx, ddt, da.sum((0, 1)), db.sum(2).to(Bm.dtype), dc.sum(2).to(Cm.dtype), dd.sum((0, 1)).to(D.dtype),
                dz, dh0 if ctx.has_h0 else None, None)  # fmt: skip


def selective_scan_triton(x: Tensor, dt_raw: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, D: Tensor, z: Tensor,
                          h0: Tensor | None = None, chunk: int | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """x, dt_raw (before softplus), z: (B, T, E); A (E, N) < 0; Bm, Cm: (B, T, N); D (E,); h0 (B, E, N) or None.

    Returns y (B, T, E) in x's dtype and h_T (B, E, N) fp32 (no gradient through h_T).
    `chunk` (a power of two, at most MAX_CHUNK) overrides the chunk length: the tests use short ones."""
    if triton is None:
        raise RuntimeError("Triton is not installed: MambaBlock falls back to its pure path")
    args = (x, dt_raw, A.float(), Bm, Cm, D, z, None if h0 is None else h0.float())
    return SelectiveScan.apply(*(None if a is None else a.contiguous() for a in args), chunk)
