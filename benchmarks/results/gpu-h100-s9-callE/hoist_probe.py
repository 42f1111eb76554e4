"""Probe (session 9, call D): the fused step with each kernel's in-place loads (conv window, state, A, z) issued
ahead of its first barrier (the working tree), beside the step as it landed (c19ddb9), alternating, in one call."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "benchmarks"), str(HERE.parent / "scripts")]
import step_persistent_c19 as c19p  # noqa: E402
import step_triton_c19 as c19  # noqa: E402

from sm1 import step_persistent as sp  # noqa: E402
from sm1 import step_triton as st  # noqa: E402

NEW = {"block": st.block_step, "conv": st.conv_update, "mixer": st.mixer_update, "layers": sp.layers_step}


def use(v: str) -> None:
    st.block_step, st.conv_update, st.mixer_update, sp.layers_step = (
        NEW["block"], NEW["conv"], NEW["mixer"], NEW["layers"])
    if v == "old":
        st.block_step, sp.layers_step = c19.block_step, c19p.layers_step
    elif v == "new conv, old mixer":
        st.mixer_update = c19.mixer_update
    elif v == "old conv, new mixer":
        st.conv_update = c19.conv_update


def main() -> None:
    import decode
    import profile_decode_step as pds

    out = Path(sys.argv[1])
    device = torch.device("cuda")
    bw = decode.copy_bandwidth("cuda")
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    (name, model), = decode.sm1_models(["90m"], device, torch.bfloat16).items()
    rows = []
    with torch.no_grad():
        plan = [("old", [1, 16, 1024]), ("new", [1, 16, 1024])] * 2
        for v, batches in plan:
            use(v)
            for x in decode.bench_sm1(name, model, batches, device, bw, 100, decode.FUSED_GRAPHS):
                x["variant"] = v
                rows.append(x)
                print("ROW", v, x["batch"], x.get("ms_per_step"), x.get("tokens_per_s"), x.get("max_abs_diff_vs_fp32"),
                      x.get("error", ""), flush=True)
        for v in ("old", "new"):
            use(v)
            for b in (1, 1024):
                print("PROFILE", v, flush=True)
                pds.profile_step(model, b, device)
    (out / "hoist.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
