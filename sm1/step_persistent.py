"""The decode step of every layer for one row in one launch: a persistent kernel with grid-wide barriers.

At batch 1 a step is latency, not bandwidth: the 90M model's weights take 0.04 ms to read, and a launch of a
small kernel costs 4-5 us however little it does. Per layer three things need every channel of a row and so
cannot live in one channel block: x_proj (of the conv's output), out_proj (of the mixer's) and the next
layer's RMSNorm (of the residual). Each program here owns a block of channels (and of d_model outputs)
and runs the layers' phases, waiting at a barrier for all programs where a phase needs the others' output:

  in:      u @ W_in for its channels (the norm's weight folded into W_in, 1/rms from the whole row), the
           conv (its window moved on in place in the pool row), and its channels' share of x_proj, written
           as one partial sum per program;                                                   -- barrier
  mixer:   x_proj's output as the sum of the partials, dt = softplus(dt_proj(.)), the state update (in
           place in the pool row), y = h C + D x gated by SiLU(z) for its channels;          -- barrier
  out:     u += y @ W_out for its outputs of d_model, in place;                              -- barrier

and after the last layer the head: norm_f and lm_head (norm_f's weight folded in) for its rows of the vocabulary,
the logits in fp32. Folded in, the head saves the small launches that followed the kernel (norm_f, the product,
the cast to fp32): the shipped checkpoint's one-row step went from 0.0892 to 0.0828 ms on an H100; the 90M model's
did not change (benchmarks/RESULTS.md, 2026-12-06).

Each program holds its weights in registers, each row as two power-of-2 tiles (768 columns as 512 + 256, not one
of 1024): 4% faster on an H100 than one padded tile, which made the kernel spill more (benchmarks/RESULTS.md,
2026-12-06).

At a barrier each program raises its flag (a zeroed int32 per program and barrier) and waits for all of them,
so all programs must be resident at once: the launch is cooperative (CUDA refuses it otherwise). Each phase's
weights are loaded before the barrier in front of it, so that their loads overlap the wait.
Without barriers (GRID_SYNC off) the same kernel runs one phase of one layer per launch: that is how the
CPU interpreter checks it in CI (its programs run one after another, a barrier would never open), and the
fallback where a cooperative launch is not possible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sm1.step_triton import _eps, _sm_count, decode_weights, triton

if triton is not None:
    import triton.language as tl

    from sm1.step_triton import _conv, _load_n, _silu, _softplus, _state_update

MAX_ROWS = 1  # up to this many rows a step is this kernel, from there on step_triton's tiles: its row loops make
# each further row cost about half the first (90M model, H200: about 0.4, 0.6 and 0.9 ms a step at 1, 2 and 4
# rows, the tiles about 0.6 at 2 and at 4; benchmarks/RESULTS.md, 2026-12-04)
BLOCK_C = 16  # channels of d_inner per program: E / BLOCK_C programs
NUM_WARPS = 8
GRID_SYNC = True  # one cooperative launch a step on CUDA (else three launches a layer)

log = logging.getLogger(__name__)


@dataclass
class StepWeights:
    """Every layer's decode weights stacked (layer first), as the kernel reads them."""

    w_in: Tensor  # (L, 2E, d_model), the norm's weight folded in
    conv_w: Tensor  # (L, d_conv, E)
    conv_b: Tensor  # (L, E)
    w_x: Tensor  # (L, E, P)
    w_dt: Tensor  # (L, P, E)
    dt_b: Tensor  # (L, E)
    A: Tensor  # (L, E, N) fp32
    D: Tensor  # (L, E)
    w_out: Tensor  # (L, d_model, E)
    w_head: Tensor  # (V, d_model): lm_head's weight with norm_f's weight folded in


def step_weights(model: nn.Module) -> StepWeights:
    """The model's StepWeights, stacked again only when a layer's weights change (each block's decode_weights
    is itself cached per version; the biases, D, out_proj and the head are checked by version here)."""
    per_layer = [decode_weights(block) for block in model.layers]
    loose = [p for b in model.layers for p in (b.mixer.conv1d.bias, b.mixer.dt_proj.bias, b.mixer.D,
                                                b.mixer.out_proj.weight)]  # fmt: skip
    loose += [model.lm_head.weight, model.norm_f.weight]
    key = (tuple(id(w) for w in per_layer), tuple((p._version, p.data_ptr(), p.dtype) for p in loose))
    cached = getattr(model, "_step_weights", None)
    if cached is None or cached[0] != key:
        mixers = [b.mixer for b in model.layers]
        with torch.no_grad():
            stacked = StepWeights(
                w_in=torch.stack([w.w_in for w in per_layer]), conv_w=torch.stack([w.conv_w for w in per_layer]),
                conv_b=torch.stack([m.conv1d.bias for m in mixers]), w_x=torch.stack([w.w_x for w in per_layer]),
                w_dt=torch.stack([w.w_dt for w in per_layer]), dt_b=torch.stack([m.dt_proj.bias for m in mixers]),
                A=torch.stack([w.A for w in per_layer]), D=torch.stack([m.D for m in mixers]),
                w_out=torch.stack([m.out_proj.weight for m in mixers]),
                w_head=(model.lm_head.weight * model.norm_f.weight).contiguous(),
            )  # fmt: skip
        model._step_weights = (key, stacked, per_layer)  # per_layer keeps the ids in the key alive
    return model._step_weights[1]


if triton is not None:
    L2 = tl.constexpr(".cg")  # what other programs wrote is read from L2: this SM's L1 may hold it stale

    @triton.jit
    def _grid_sync(flags_ptr, p, programs, BLOCK_PARTS: tl.constexpr):
        """Wait until every program has raised its flag in flags_ptr (this barrier's own, zeroed). A flag per
        program rather than one counter: Triton may run a "scalar" atomic on more than one thread (two of
        them at 16 warps, Triton 3.6), which would count a program twice; a raised flag stays raised."""
        tl.debug_barrier()  # this program's threads have all written
        tl.atomic_xchg(flags_ptr + p, 1, sem="release", scope="gpu")
        ps = tl.arange(0, BLOCK_PARTS)
        pm = ps < programs
        arrived = 0
        while arrived < programs:
            flags = tl.atomic_add(flags_ptr + ps, 0, mask=pm, sem="acquire", scope="gpu")
            arrived = tl.sum(tl.where(pm, flags, 0), axis=0)
        tl.debug_barrier()

    @triton.jit
    def _rows2(ptr, rows, rm, n, BLOCK_1: tl.constexpr, BLOCK_2: tl.constexpr):
        """Rows `rows` (masked by rm) of a row-major (., n) matrix at ptr, as two tiles: columns [0, BLOCK_1)
        and [BLOCK_1, BLOCK_1 + BLOCK_2), zero past n. Two power-of-2 tiles pad 768 or 1536 columns to
        768 or 1536 (512 + 256, 1024 + 512), where one would pad them to 1024 or 2048."""
        c1 = tl.arange(0, BLOCK_1)
        c2 = BLOCK_1 + tl.arange(0, BLOCK_2)
        t1 = tl.load(ptr + rows[:, None] * n + c1[None, :], mask=rm[:, None] & (c1 < n)[None, :], other=0.0)
        t2 = tl.load(ptr + rows[:, None] * n + c2[None, :], mask=rm[:, None] & (c2 < n)[None, :], other=0.0)
        return t1, t2

    @triton.jit
    def _vec2(ptr, n, BLOCK_1: tl.constexpr, BLOCK_2: tl.constexpr):
        """A length-n vector at ptr in fp32, as _rows2's two tiles of one row (read from L2)."""
        c1 = tl.arange(0, BLOCK_1)
        c2 = BLOCK_1 + tl.arange(0, BLOCK_2)
        v1 = tl.load(ptr + c1, mask=c1 < n, other=0.0, cache_modifier=L2).to(tl.float32)
        v2 = tl.load(ptr + c2, mask=c2 < n, other=0.0, cache_modifier=L2).to(tl.float32)
        return v1, v2

    @triton.jit
    def _gemv2(w, v):
        """w @ v in fp32 for _rows2's tiles w and _vec2's v."""
        return tl.sum(w[0].to(tl.float32) * v[0][None, :], axis=1) + tl.sum(w[1].to(tl.float32) * v[1][None, :], axis=1)

    @triton.jit
    def _inv_rms2(u, n, eps):
        """RMSNorm's 1/rms of _vec2's u (n long)."""
        return 1.0 / tl.sqrt((tl.sum(u[0] * u[0], axis=0) + tl.sum(u[1] * u[1], axis=0)) / n + eps)

    @triton.jit
    def _in_weights(layer, p, w_in_ptr, w_x_ptr, Dm, E, P: tl.constexpr, BLOCK_C: tl.constexpr,
                    BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr):  # fmt: skip
        """Program p's rows of W_in (x, then z; as _rows2's tiles) and of x_proj's weight, for `layer`."""
        cols = p * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = cols < E
        w_in = w_in_ptr + layer * 2 * E * Dm
        w_x = _rows2(w_in, cols, cm, Dm, BLOCK_D1, BLOCK_D2)
        w_z = _rows2(w_in, E + cols, cm, Dm, BLOCK_D1, BLOCK_D2)
        w_p = tl.load(w_x_ptr + layer * E * P + cols[:, None] * P + tl.arange(0, P)[None, :], mask=cm[:, None],
                      other=0.0)  # fmt: skip
        return w_x, w_z, w_p

    @triton.jit
    def _phase_in(layer, p, w_x, w_z, w_p, u_ptr, conv_w_ptr, conv_b_ptr, conv_ptr, conv_l, conv_s, slots_ptr,
                  xc_ptr, z_ptr, rs_ptr, part_ptr, B, Dm, E, eps, K: tl.constexpr, P: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_D1: tl.constexpr, BLOCK_D2: tl.constexpr):  # fmt: skip
        cols = p * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = cols < E
        ps = tl.arange(0, P)
        for b in range(B):
            slot = tl.load(slots_ptr + b)
            win = conv_ptr + layer * conv_l + tl.maximum(slot, 0) * conv_s + cols
            sm = cm & (cols * 0 + slot >= 0)  # (the scalar broadcast first: a padding row has no window)
            window = _load_n(win, E, sm, K - 1)
            u = _vec2(u_ptr + b * Dm, Dm, BLOCK_D1, BLOCK_D2)
            scale = _inv_rms2(u, Dm, eps)
            x = _gemv2(w_x, u) * scale
            x = _conv(x, window, win, sm, cols, cm, conv_w_ptr + layer * K * E, conv_b_ptr + layer * E, E, K)
            x = x.to(xc_ptr.dtype.element_ty)
            tl.store(xc_ptr + b * E + cols, x, mask=cm)
            tl.store(z_ptr + b * E + cols, _gemv2(w_z, u), mask=cm)
            tl.store(part_ptr + (p * B + b) * P + ps, tl.sum(x.to(tl.float32)[:, None] * w_p.to(tl.float32), axis=0))
            if p == 0:
                tl.store(rs_ptr + b, scale)

    @triton.jit
    def _mixer_weights(layer, p, w_dt_ptr, dt_b_ptr, d_ptr, E, P: tl.constexpr, BLOCK_C: tl.constexpr):
        """Program p's columns of dt_proj's weight, its dt bias and D, for `layer`."""
        cols = p * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = cols < E
        ps = tl.arange(0, P)
        w_dt = tl.load(w_dt_ptr + layer * P * E + ps[:, None] * E + cols[None, :], mask=cm[None, :], other=0.0)
        dt_b = tl.load(dt_b_ptr + layer * E + cols, mask=cm, other=0.0)
        D = tl.load(d_ptr + layer * E + cols, mask=cm, other=0.0)
        return w_dt, dt_b, D

    @triton.jit
    def _phase_mixer(layer, p, programs, w_dt, dt_b, D, xc_ptr, z_ptr, rs_ptr, part_ptr, a_ptr, ssm_ptr, ssm_l,
                     ssm_s, slots_ptr, y_ptr, B, E, R: tl.constexpr, N: tl.constexpr, P: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_PARTS: tl.constexpr):  # fmt: skip
        cols = p * BLOCK_C + tl.arange(0, BLOCK_C)
        cm = cols < E
        ps = tl.arange(0, P)
        parts = tl.arange(0, BLOCK_PARTS)
        for b in range(B):
            slot = tl.load(slots_ptr + b)
            sm = cm & (cols * 0 + slot >= 0)
            state = ssm_ptr + layer * ssm_l + tl.maximum(slot, 0) * ssm_s + cols * N
            h = _load_n(state, 1, sm, N)
            a_l = a_ptr + layer * E * N  # this layer's A
            A = _load_n(a_l + cols * N, 1, cm, N)
            x = tl.load(xc_ptr + b * E + cols, mask=cm, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + b * E + cols, mask=cm, other=0.0).to(tl.float32) * tl.load(rs_ptr + b)
            xp = tl.load(part_ptr + (parts[:, None] * B + b) * P + ps[None, :], mask=(parts < programs)[:, None],
                         other=0.0, cache_modifier=L2)  # fmt: skip
            xp = tl.sum(xp, axis=0).to(w_dt.dtype).to(tl.float32)  # x_proj's output in the model's dtype
            dt = _softplus(tl.sum(xp[:, None] * w_dt.to(tl.float32), axis=0) + dt_b.to(tl.float32))
            y = _state_update(D.to(tl.float32) * x, dt, x, xp, ps, a_l, cols, cm, state, sm, A, h, R, N, 0)
            tl.store(y_ptr + b * E + cols, y * _silu(z), mask=cm)

    @triton.jit
    def _out_weights(layer, p, w_out_ptr, Dm, E, BLOCK_O: tl.constexpr, BLOCK_E1: tl.constexpr,
                     BLOCK_E2: tl.constexpr):  # fmt: skip
        """Program p's rows of W_out (as _rows2's tiles), for `layer`."""
        outs = p * BLOCK_O + tl.arange(0, BLOCK_O)
        return _rows2(w_out_ptr + layer * Dm * E, outs, outs < Dm, E, BLOCK_E1, BLOCK_E2)

    @triton.jit
    def _phase_out(p, w_out, y_ptr, u_ptr, B, Dm, E, BLOCK_O: tl.constexpr, BLOCK_E1: tl.constexpr,
                   BLOCK_E2: tl.constexpr):  # fmt: skip
        outs = p * BLOCK_O + tl.arange(0, BLOCK_O)
        om = outs < Dm
        for b in range(B):
            y = _vec2(y_ptr + b * E, E, BLOCK_E1, BLOCK_E2)
            u = tl.load(u_ptr + b * Dm + outs, mask=om, other=0.0, cache_modifier=L2).to(tl.float32)
            tl.store(u_ptr + b * Dm + outs, _gemv2(w_out, y) + u, mask=om)

    @triton.jit
    def _phase_head(p, w_head_ptr, u_ptr, logits_ptr, B, Dm, V, eps, BLOCK_V: tl.constexpr, BLOCK_D1: tl.constexpr,
                    BLOCK_D2: tl.constexpr):  # fmt: skip
        """The logits (fp32) of program p's BLOCK_V rows of the vocabulary: norm_f, then lm_head."""
        vs = p * BLOCK_V + tl.arange(0, BLOCK_V)
        vm = vs < V
        w = _rows2(w_head_ptr, vs, vm, Dm, BLOCK_D1, BLOCK_D2)
        for b in range(B):
            u = _vec2(u_ptr + b * Dm, Dm, BLOCK_D1, BLOCK_D2)
            tl.store(logits_ptr + b * V + vs, _gemv2(w, u) * _inv_rms2(u, Dm, eps), mask=vm)

    @triton.jit
    def _layers_kernel(u_ptr, w_in_ptr, conv_w_ptr, conv_b_ptr, w_x_ptr, w_dt_ptr, dt_b_ptr, a_ptr, d_ptr,
                       w_out_ptr, w_head_ptr, ssm_ptr, ssm_l, ssm_s, conv_ptr, conv_l, conv_s, slots_ptr, xc_ptr,
                       z_ptr, rs_ptr, part_ptr, y_ptr, logits_ptr, flags_ptr, first, last, B, Dm, E, V, eps, eps_f,
                       R: tl.constexpr, N: tl.constexpr,
                       P: tl.constexpr, K: tl.constexpr, PHASES: tl.constexpr, GRID_SYNC: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_D1: tl.constexpr,
                       BLOCK_D2: tl.constexpr, BLOCK_E1: tl.constexpr, BLOCK_E2: tl.constexpr,
                       BLOCK_PARTS: tl.constexpr, BLOCK_V: tl.constexpr):  # fmt: skip
        """Layers [first, last) of the step for B rows, in place on u (B, Dm) and the pool, then the logits (B, V);
        PHASES: which of in (1), mixer (2), out (4) and the head (8) to run, with GRID_SYNC's barriers between
        them. Each phase's weights are read before the barrier in front of it, so that their loads overlap the
        wait."""
        p = tl.program_id(0)
        programs = tl.num_programs(0)
        if PHASES & 1:
            w_x, w_z, w_p = _in_weights(first, p, w_in_ptr, w_x_ptr, Dm, E, P, BLOCK_C, BLOCK_D1, BLOCK_D2)
        for layer in range(first, last):
            if PHASES & 1:
                _phase_in(layer, p, w_x, w_z, w_p, u_ptr, conv_w_ptr, conv_b_ptr, conv_ptr, conv_l, conv_s,
                          slots_ptr, xc_ptr, z_ptr, rs_ptr, part_ptr, B, Dm, E, eps, K, P, BLOCK_C, BLOCK_D1, BLOCK_D2)
            if PHASES & 2:
                w_dt, dt_b, D = _mixer_weights(layer, p, w_dt_ptr, dt_b_ptr, d_ptr, E, P, BLOCK_C)
            if GRID_SYNC:
                _grid_sync(flags_ptr + 3 * layer * BLOCK_PARTS, p, programs, BLOCK_PARTS)
            if PHASES & 2:
                _phase_mixer(layer, p, programs, w_dt, dt_b, D, xc_ptr, z_ptr, rs_ptr, part_ptr, a_ptr, ssm_ptr,
                             ssm_l, ssm_s, slots_ptr, y_ptr, B, E, R, N, P, BLOCK_C, BLOCK_PARTS)
            if PHASES & 4:
                w_out = _out_weights(layer, p, w_out_ptr, Dm, E, BLOCK_O, BLOCK_E1, BLOCK_E2)
            if GRID_SYNC:
                _grid_sync(flags_ptr + (3 * layer + 1) * BLOCK_PARTS, p, programs, BLOCK_PARTS)
            if PHASES & 4:
                _phase_out(p, w_out, y_ptr, u_ptr, B, Dm, E, BLOCK_O, BLOCK_E1, BLOCK_E2)
            if PHASES & 1:  # the next layer's (the last layer's again at the end: never used)
                w_x, w_z, w_p = _in_weights(tl.minimum(layer + 1, last - 1), p, w_in_ptr, w_x_ptr, Dm, E, P,
                                            BLOCK_C, BLOCK_D1, BLOCK_D2)  # fmt: skip
            if GRID_SYNC:
                _grid_sync(flags_ptr + (3 * layer + 2) * BLOCK_PARTS, p, programs, BLOCK_PARTS)
        if PHASES & 8:
            _phase_head(p, w_head_ptr, u_ptr, logits_ptr, B, Dm, V, eps_f, BLOCK_V, BLOCK_D1, BLOCK_D2)


def step_logits(model: nn.Module, u: Tensor, ssm: Tensor, conv: Tensor, slots: Tensor) -> Tensor:
    """Every block of `model` on u (B, d_model) for rows `slots` of the pool (ssm (L, S, E, N) fp32, conv
    (L, S, d_conv - 1, E), each slot's rows contiguous), in place, then norm_f and lm_head: the logits (B, V)
    in fp32 are returned. One launch on CUDA; three a layer and one for the head under the interpreter, with
    GRID_SYNC off, or where the GPU cannot hold every program at once (more programs than SMs, or a refused
    cooperative launch)."""
    cfg = model.config
    w = step_weights(model)
    (B, Dm), E, L = u.shape, cfg.d_inner, cfg.n_layer
    P = w.w_x.shape[2]
    programs = triton.cdiv(E, BLOCK_C)
    dev, dtype = u.device, u.dtype
    xc, z, y = (torch.empty(B, E, device=dev, dtype=dtype) for _ in range(3))
    rs = torch.empty(B, device=dev, dtype=torch.float32)
    V = w.w_head.shape[0]
    logits = torch.empty(B, V, device=dev, dtype=torch.float32)
    part = torch.empty(programs, B, P, device=dev, dtype=torch.float32)  # x_proj's partial sums
    eps, eps_f = _eps(model.layers[0].norm, u), _eps(model.norm_f, u)
    (d1, d2), (e1, e2) = _split(Dm), _split(E)
    grid_sync = GRID_SYNC and dev.type == "cuda" and dev not in _NO_COOPERATIVE and programs <= _sm_count(dev)
    flags = torch.zeros(3 * L if grid_sync else 1, triton.next_power_of_2(programs), device=dev, dtype=torch.int32)

    def launch(first: int, last: int, phases: int, grid_sync: bool) -> None:
        _layers_kernel[(programs,)](
            u, w.w_in, w.conv_w, w.conv_b, w.w_x, w.w_dt, w.dt_b, w.A, w.D, w.w_out, w.w_head, ssm, ssm.stride(0),
            ssm.stride(1), conv, conv.stride(0), conv.stride(1), slots, xc, z, rs, part, y, logits, flags, first, last,
            B, Dm, E, V, eps, eps_f, R=cfg.dt_rank, N=cfg.d_state, P=P, K=cfg.d_conv, PHASES=phases,
            GRID_SYNC=grid_sync, BLOCK_C=BLOCK_C, BLOCK_O=triton.next_power_of_2(triton.cdiv(Dm, programs)),
            BLOCK_D1=d1, BLOCK_D2=d2, BLOCK_E1=e1, BLOCK_E2=e2,
            BLOCK_PARTS=triton.next_power_of_2(programs), BLOCK_V=triton.next_power_of_2(triton.cdiv(V, programs)),
            num_warps=NUM_WARPS,
            **({"launch_cooperative_grid": True} if grid_sync else {}),
        )  # fmt: skip

    if grid_sync:
        try:
            launch(0, L, 15, True)
            return logits
        except RuntimeError as e:  # the GPU cannot hold every program at once (shared under MPS, say)
            log.warning("cooperative launch refused on %s (%s): the one-row step runs phase by phase", dev, e)
            _NO_COOPERATIVE.add(dev)
    for layer in range(L):
        for phase in (1, 2, 4):
            launch(layer, layer + 1, phase, False)
    launch(L, L, 8, False)
    return logits


def _split(n: int) -> tuple[int, int]:
    """Two powers of 2 that cover n: the largest not above it, then what is left rounded up (at least 1)."""
    first = 1 << (n.bit_length() - 1)
    return first, triton.next_power_of_2(max(1, n - first))


_NO_COOPERATIVE: set[torch.device] = set()  # devices that refused the cooperative launch
