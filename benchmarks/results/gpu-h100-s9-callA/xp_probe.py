"""Probe (session 9): x_proj folded into the conv kernel as one fp32 partial sum per channel block, summed by the
mixer (no cuBLAS x_proj launch); the mixer's dt by tl.dot or by R FMA outer products; B and C loaded directly.
Times the 90M model's fused+graphs step at each setting beside the current step, checked against fp32."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_triton_c19 as c19  # noqa: E402  the step as it landed (c19ddb9): the baseline
from sm1 import step_triton as st  # noqa: E402
from sm1.step_triton import _conv, _dot, _eps, _ieee, _rscale, _silu, _softplus, decode_weights  # noqa: E402

KN = {"CONV_C": 256, "CONV_WARPS": 8, "MIXER_C": 128, "MIXER_WARPS": 8, "FMA": False}


@triton.jit
def _conv_xp_kernel(u_ptr, xz_ptr, xz_stride, conv_ptr, slots_ptr, cw_ptr, cb_ptr, wx_ptr, xc_ptr, part_ptr, rs_ptr,
                    B, Dm, E, eps, K: tl.constexpr, P: tl.constexpr, IEEE: tl.constexpr, BLOCK_B: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
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
    x = _conv(x * scale[:, None], win, sm, cols[None, :], cm[None, :], cw_ptr, cb_ptr, E, K)
    x = tl.where(om, x, 0.0).to(xc_ptr.dtype.element_ty)
    tl.store(xc_ptr + rows[:, None] * E + cols[None, :], x, mask=om)
    ps = tl.arange(0, P)
    wx = tl.load(wx_ptr + cols[:, None] * P + ps[None, :], mask=cm[:, None], other=0.0)
    part = _dot(x, wx, IEEE)
    S = tl.num_programs(1)
    tl.store(part_ptr + (rows[:, None] * S + tl.program_id(1)) * P + ps[None, :], part, mask=rm[:, None])
    if tl.program_id(1) == 0:
        tl.store(rs_ptr + rows, scale, mask=rm)


@triton.jit
def _xp_col(part_ptr, rows, rm, p, S: tl.constexpr, P: tl.constexpr, dtype: tl.constexpr):
    acc = tl.load(part_ptr + rows * S * P + p, mask=rm, other=0.0)
    for s in tl.static_range(1, S):
        acc += tl.load(part_ptr + (rows * S + s) * P + p, mask=rm, other=0.0)
    return acc.to(dtype).to(tl.float32)


@triton.jit
def _mixer_xp_kernel(xc_ptr, z_ptr, z_stride, rs_ptr, part_ptr, wdt_ptr, dtb_ptr, a_ptr, d_ptr, ssm_ptr, slots_ptr,
                     y_ptr, B, E, R: tl.constexpr, N: tl.constexpr, P: tl.constexpr, S: tl.constexpr,
                     IEEE: tl.constexpr, FMA: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rm = rows < B
    slot = tl.load(slots_ptr + rows, mask=rm, other=-1)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cols < E
    om = rm[:, None] & cm[None, :]
    sm = (slot >= 0)[:, None] & cm[None, :]
    lp: tl.constexpr = wdt_ptr.dtype.element_ty
    x = tl.load(xc_ptr + rows[:, None] * E + cols[None, :], mask=om, other=0.0).to(tl.float32)
    if FMA:
        dt = tl.zeros((BLOCK_B, BLOCK_C), tl.float32)
        for r in tl.static_range(R):
            w_r = tl.load(wdt_ptr + r * E + cols, mask=cm, other=0.0).to(tl.float32)
            dt += _xp_col(part_ptr, rows, rm, r, S, P, lp)[:, None] * w_r[None, :]
    else:
        ps = tl.arange(0, P)
        xp = tl.load(part_ptr + rows[:, None] * S * P + ps[None, :], mask=rm[:, None], other=0.0)
        for s in tl.static_range(1, S):
            xp += tl.load(part_ptr + (rows[:, None] * S + s) * P + ps[None, :], mask=rm[:, None], other=0.0)
        wdt = tl.load(wdt_ptr + ps[:, None] * E + cols[None, :], mask=cm[None, :], other=0.0)
        dt = _dot(xp.to(lp), wdt, IEEE)
    dt = _softplus(dt + tl.load(dtb_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :])
    y = tl.load(d_ptr + cols, mask=cm, other=0.0).to(tl.float32)[None, :] * x
    state = ssm_ptr + tl.maximum(slot, 0)[:, None] * E * N + cols[None, :] * N
    for n in tl.static_range(N):
        B_n = _xp_col(part_ptr, rows, rm, R + n, S, P, lp)[:, None]
        C_n = _xp_col(part_ptr, rows, rm, R + N + n, S, P, lp)[:, None]
        a = tl.load(a_ptr + cols * N + n, mask=cm, other=0.0)[None, :]
        h = tl.exp(dt * a) * tl.load(state + n, mask=sm, other=0.0) + dt * x * B_n
        tl.debug_barrier()
        tl.store(state + n, h, mask=sm)
        y += h * C_n
    z = tl.load(z_ptr + rows[:, None] * z_stride + cols[None, :], mask=om, other=0.0).to(tl.float32)
    z = z * tl.load(rs_ptr + rows, mask=rm, other=0.0)[:, None]
    tl.store(y_ptr + rows[:, None] * E + cols[None, :], y * _silu(z), mask=om)


def block_step_xp(block, u, ssm, conv, slots):
    w = decode_weights(block)
    mixer, cfg = block.mixer, block.mixer.cfg
    (B, Dm), E, P = u.shape, cfg.d_inner, w.w_x.shape[1]
    xz = F.linear(u, w.w_in)
    S = triton.cdiv(E, KN["CONV_C"])
    xc = torch.empty(B, E, device=u.device, dtype=u.dtype)
    rs = torch.empty(B, device=u.device, dtype=torch.float32)
    part = torch.empty(B, S, P, device=u.device, dtype=torch.float32)
    _conv_xp_kernel[(triton.cdiv(B, 16), S)](
        u, xz, xz.stride(0), conv, slots, w.conv_w, mixer.conv1d.bias, w.w_x, xc, part, rs, B, Dm, E, _eps(block, u),
        K=cfg.d_conv, P=P, IEEE=_ieee(u), BLOCK_B=16, BLOCK_C=KN["CONV_C"], BLOCK_D=triton.next_power_of_2(Dm),
        num_warps=KN["CONV_WARPS"])
    y = torch.empty_like(xc)
    z = xz[:, E:]
    _mixer_xp_kernel[(triton.cdiv(B, 16), triton.cdiv(E, KN["MIXER_C"]))](
        xc, z, z.stride(0), rs, part, w.w_dt, mixer.dt_proj.bias, w.A, mixer.D, ssm, slots, y, B, E, R=cfg.dt_rank,
        N=cfg.d_state, P=P, S=S, IEEE=_ieee(u), FMA=KN["FMA"], BLOCK_B=16, BLOCK_C=KN["MIXER_C"],
        num_warps=KN["MIXER_WARPS"])
    return u.addmm_(y, mixer.out_proj.weight.t())


ORIGINAL = c19.block_step
PORTED = st.block_step  # sm1/step_triton.py as it is in this working tree


def use(variant: dict | None) -> None:
    if variant is None:
        st.block_step = ORIGINAL
    elif variant == "ported":
        st.block_step = PORTED
    else:
        KN.update(variant)
        st.block_step = block_step_xp


def check_cpu() -> None:
    """fp32, interpreter: the probe's step against the current one, on a small model."""
    from sm1.model import SM1, SM1Config
    torch.manual_seed(0)
    model = SM1(SM1Config(vocab_size=64, d_model=256, n_layer=2, d_state=1)).eval()
    block = model.layers[0]
    worst = 0.0
    for variant in ({"CONV_C": 128, "MIXER_C": 64, "FMA": False}, {"CONV_C": 256, "MIXER_C": 128, "FMA": True},
                    {"CONV_C": 64, "MIXER_C": 256, "FMA": True}):
        E = block.mixer.cfg.d_inner
        for B in (3, 20):
            u = torch.randn(B, 256)
            ssm = torch.randn(B + 2, E, 1)
            conv = torch.randn(B + 2, block.mixer.cfg.d_conv - 1, E)
            slots = torch.tensor([i + 1 for i in range(B - 1)] + [-1])
            a = [u.clone(), ssm.clone(), conv.clone()]
            b = [u.clone(), ssm.clone(), conv.clone()]
            with torch.no_grad():
                ORIGINAL(block, a[0], a[1], a[2], slots)
                use(variant)
                block_step_xp(block, b[0], b[1], b[2], slots)
            d = max((p - q).abs().max().item() for p, q in zip(a, b, strict=True))
            worst = max(worst, d)
            print(variant, B, d)
    print("worst", worst)


def name_of(v) -> str:
    return "current" if v is None else v if isinstance(v, str) else json.dumps(v)


def main() -> None:
    if sys.argv[1] == "cpu":
        return check_cpu()
    import decode
    import profile_decode_step as pds

    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    bandwidth = decode.copy_bandwidth("cuda")
    models = decode.sm1_models(["90m"], device, torch.bfloat16)
    (name, model), = models.items()
    variants: list = [None, "ported"]
    for cc, (mc, mw), fma in itertools.product((256, 128), ((64, 4), (128, 4), (128, 8), (256, 8)), (False, True)):
        variants.append({"CONV_C": cc, "CONV_WARPS": 8, "MIXER_C": mc, "MIXER_WARPS": mw, "FMA": fma})
    variants += [{"CONV_C": 256, "CONV_WARPS": 4, "MIXER_C": 128, "MIXER_WARPS": 8, "FMA": f} for f in (False, True)]
    variants.append(None)
    rows = []
    with torch.no_grad():
        for v in variants:
            use(v)
            try:
                r = decode.bench_sm1(name, model, [1024], device, bandwidth, 100, decode.FUSED_GRAPHS)
            except Exception as e:
                r = [{"error": repr(e)[:300]}]
            for x in r:
                x["variant"] = name_of(v)
                rows.append(x)
                print("ROW", x.get("variant"), x.get("ms_per_step"), x.get("max_abs_diff_vs_fp32"), x.get("error", ""),
                      flush=True)
        ok = [r for r in rows if r["variant"].startswith("{") and "ms_per_step" in r]
        best = min(ok, key=lambda r: r["ms_per_step"]) if ok else None
        if best:
            bv = json.loads(best["variant"])
            for v in (None, bv, "ported", None, bv, "ported"):
                use(v)
                r = decode.bench_sm1(name, model, [2, 16, 256, 1024], device, bandwidth, 100, decode.FUSED_GRAPHS)
                for x in r:
                    x["variant"] = name_of(v)
                    x["phase"] = "batches"
                    rows.append(x)
                    print("ROW2", x["variant"], x["batch"], x.get("ms_per_step"), x.get("max_abs_diff_vs_fp32"), flush=True)
            for v in (None, bv, "ported"):
                use(v)
                print("PROFILE", name_of(v))
                pds.profile_step(model, 1024, device)
    (out / "probe.json").write_text(json.dumps(rows, indent=1))
    for r in rows:
        print(f"{r.get('phase', 'sweep'):8} {r.get('batch', '')!s:5} {r.get('ms_per_step', '')!s:8} "
              f"{r.get('tokens_per_s', '')!s:9} {r.get('max_abs_diff_vs_fp32', '')!s:22.22} {r['variant']}")


if __name__ == "__main__":
    main()
