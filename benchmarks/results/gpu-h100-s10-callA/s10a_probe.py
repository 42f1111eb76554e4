"""Probe (session 10, call A): x_proj inside the mixer kernel (XMIX, the working tree), conv tiles at 16 warps, and a
padded LM head, beside the shipped step (2c0d041), kernel by kernel and then whole steps, alternating, in one call."""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "benchmarks"), str(HERE.parent / "scripts")]
import decode  # noqa: E402
import profile_decode_step as pds  # noqa: E402
from tune_decode_tiles import graph_us  # noqa: E402

from sm1 import step_triton as st  # noqa: E402

T0 = time.time()
OUT = Path(sys.argv[1])
RESULTS: dict[str, list] = {"mixer": [], "conv": [], "head": [], "step": []}
XKNOBS = ("XMIX_ROWS", "XMIX_C", "XMIX_K", "XMIX_WARPS", "XMIX_WAVES")


def say(*a) -> None:
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


def save() -> None:
    (OUT / "s10a.json").write_text(json.dumps(RESULTS, indent=1))


def set_x(on: bool, cfg: tuple | None = None) -> None:
    st.XMIX = on
    if cfg:
        for k, v in zip(XKNOBS, cfg, strict=True):
            setattr(st, k, v)


def inputs(block, B):
    cfg, dev, dtype = block.mixer.cfg, block.norm.weight.device, block.norm.weight.dtype
    E = cfg.d_inner
    gen = torch.Generator(device=dev).manual_seed(B)
    u = torch.randn(B, cfg.d_model, device=dev, generator=gen).to(dtype)
    conv = torch.randn(B, cfg.d_conv - 1, E, device=dev, generator=gen).to(dtype)
    ssm = torch.randn(B, E, cfg.d_state, device=dev, generator=gen)
    slots = torch.randperm(B, device=dev, generator=gen)
    w = st.decode_weights(block)
    xz = u @ w.w_in.T
    xc, rs = st.conv_update(block, w, u, xz, conv.clone(), slots)
    return u, conv, ssm, slots, w, xz, xc, rs


def mixer_sweep(block, batches, configs) -> dict:
    best = {}
    for B in batches:
        u, conv, ssm, slots, w, xz, xc, rs = inputs(block, B)
        E = block.mixer.cfg.d_inner
        saved = ssm.clone()
        fn = lambda: st.mixer_update(block, w, xc, xz[:, E:], rs, ssm, slots)  # noqa: E731
        set_x(False)
        want = fn().float()
        want_h = ssm.clone()
        base = []
        for rep in range(2):
            ssm.copy_(saved)
            base.append(graph_us(fn, 20))
        row = {"batch": B, "variant": "x_proj (cuBLAS) + mixer tile", "us": base}
        RESULTS["mixer"].append(row)
        say("MIXER", json.dumps(row))
        for cfg in configs:
            set_x(True, cfg)
            ssm.copy_(saved)
            row = {"batch": B, "variant": "xmix", **dict(zip(XKNOBS, cfg, strict=True))}
            try:
                got = fn().float()
                row["max_abs_diff_y"] = (got - want).abs().max().item()
                row["max_abs_diff_h"] = (ssm - want_h).abs().max().item()
                ssm.copy_(saved)
                row["us"] = [graph_us(fn, 20)]
            except Exception as e:
                row["error"] = repr(e)[:160]
            RESULTS["mixer"].append(row)
            say("MIXER", json.dumps(row))
        ok = [r for r in RESULTS["mixer"] if r["batch"] == B and "us" in r and r["variant"] == "xmix"]
        ok.sort(key=lambda r: r["us"][0])
        best[B] = ok[:3]
        say("BEST", B, base, [(r["us"], [r[k] for k in XKNOBS]) for r in ok[:6]])
        save()
    set_x(False)
    return best


def conv_sweep(block, B) -> None:
    u, conv, ssm, slots, w, xz, xc, rs = inputs(block, B)
    saved = conv.clone()
    fn = lambda: st.conv_update(block, w, u, xz, conv, slots)[0]  # noqa: E731
    defaults = (st.CONV_ROWS, st.CONV_C, st.CONV_C_WIDE, st.CONV_WARPS)
    want = fn().float()
    for rows, c, warps in [(16, 256, 8)] + list(itertools.product((16, 32), (128, 256, 512), (8, 16))) + [(16, 256, 8)]:
        st.CONV_ROWS, st.CONV_C, st.CONV_C_WIDE, st.CONV_WARPS = rows, c, c, warps
        conv.copy_(saved)
        row = {"batch": B, "rows": rows, "channels": c, "warps": warps}
        try:
            row["max_abs_diff"] = (fn().float() - want).abs().max().item()
            conv.copy_(saved)
            row["us"] = graph_us(fn, 20)
        except Exception as e:
            row["error"] = repr(e)[:160]
        RESULTS["conv"].append(row)
        say("CONV", json.dumps(row))
    st.CONV_ROWS, st.CONV_C, st.CONV_C_WIDE, st.CONV_WARPS = defaults
    save()


def head_probe(model, B) -> None:
    x = torch.randn(B, model.config.d_model, device="cuda", dtype=torch.bfloat16)
    W = model.lm_head.weight
    V = W.shape[0]
    Wp = torch.zeros(((V + 63) // 64) * 64, W.shape[1], device=W.device, dtype=W.dtype)
    Wp[:V] = W
    for name, fn in [("lm_head + float", lambda: F.linear(x, W).float()),
                     ("padded to 64 + slice + float", lambda: F.linear(x, Wp)[:, :V].float()),
                     ("lm_head + float", lambda: F.linear(x, W).float())]:
        row = {"batch": B, "variant": name, "us": graph_us(fn, 20)}
        RESULTS["head"].append(row)
        say("HEAD", json.dumps(row))
    save()


def step_runs(model, name, bw, cfg, batches) -> None:
    for rep in range(2):
        for label, on in (("2c0d041", False), ("xmix", True)):
            set_x(on, cfg if on else None)
            for x in decode.bench_sm1(name, model, batches, torch.device("cuda"), bw, 100, decode.FUSED_GRAPHS):
                x |= {"variant": label, "cfg": list(cfg) if on else None, "rep": rep}
                RESULTS["step"].append(x)
                say("ROW", label, x["batch"], x.get("ms_per_step"), x.get("tokens_per_s"),
                    x.get("max_abs_diff_vs_fp32"), x.get("error", ""))
            save()
    set_x(False)


def main() -> None:
    device = torch.device("cuda")
    bw = decode.copy_bandwidth("cuda")
    say(f"copy bandwidth {bw / 1e9:.0f} GB/s", torch.cuda.get_device_name())
    (name, model), = decode.sm1_models(["90m"], device, torch.bfloat16).items()
    block = model.layers[0]
    configs = [(r, c, k, wp, wv) for r, c, k, wp in itertools.product((16, 32), (64, 128, 256), (64, 128), (4, 8))
               for wv in (0.5, 1.0, 2.0, 4.0)]
    with torch.no_grad():
        best = mixer_sweep(block, [1024], configs)
        top = [tuple(r[k] for k in XKNOBS) for r in best[1024]]
        mixer_sweep(block, [256, 16], top + [(16, 128, 128, 8, w) for w in (0.5, 1.0, 2.0, 4.0, 8.0)])
        conv_sweep(block, 1024)
        head_probe(model, 1024)
        step_runs(model, name, bw, top[0], [16, 256, 1024])
        set_x(True, top[0])
        say("PROFILE xmix", top[0])
        pds.profile_step(model, 1024, device)
        set_x(False)
        say("PROFILE 2c0d041")
        pds.profile_step(model, 1024, device)
    (OUT / "best.txt").write_text(json.dumps(top))
    say("done")


if __name__ == "__main__":
    main()
