"""Dump the sm_90 PTX (Triton 3.6) of the tile kernels and the persistent kernel from a given sm1 checkout or copy."""
import sys, importlib.util, hashlib
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
tgt = GPUTarget("cuda", 90, 32)
st_path, sp_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path); m = importlib.util.module_from_spec(spec); sys.modules[name] = m; spec.loader.exec_module(m); return m
st = load("sm1.step_triton", st_path); sys.modules["step_triton_c19"] = st
sp = load("sm1.step_persistent", sp_path)
def build(fn, types, consts, warps):
    names = fn.arg_names
    sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    ptx = triton.compile(src, target=tgt, options={"num_warps": warps}).asm["ptx"]
    return "\n".join(l for l in ptx.splitlines() if not l.strip().startswith("//") and ".loc" not in l and ".file" not in l)
ptrs = lambda *ns: {n: "*bf16" for n in ns}
res = {}
ty = {**ptrs("u_ptr", "xz_ptr", "conv_ptr", "cw_ptr", "cb_ptr", "xc_ptr"), "slots_ptr": "*i64", "rs_ptr": "*fp32", "eps": "fp32"}
for C in (128, 256):
    res[f"conv{C}"] = build(st._conv_kernel, ty, dict(K=4, BLOCK_B=16, BLOCK_C=C, BLOCK_D=1024), 8)
ty = {**ptrs("xc_ptr", "z_ptr", "xp_ptr", "wdt_ptr", "dtb_ptr", "d_ptr", "y_ptr"), "rs_ptr": "*fp32", "a_ptr": "*fp32", "ssm_ptr": "*fp32", "slots_ptr": "*i64"}
for N in (1, 4):
    res[f"mixer{N}"] = build(st._mixer_kernel, ty, dict(R=48, N=N, P=64, IEEE=False, BLOCK_B=16, BLOCK_C=64), 8)
ty = {**ptrs("u_ptr", "w_in_ptr", "conv_w_ptr", "conv_b_ptr", "w_x_ptr", "w_dt_ptr", "dt_b_ptr", "d_ptr", "w_out_ptr", "conv_ptr", "xc_ptr", "z_ptr", "y_ptr"),
      "a_ptr": "*fp32", "ssm_ptr": "*fp32", "slots_ptr": "*i64", "rs_ptr": "*fp32", "part_ptr": "*fp32", "flags_ptr": "*i32", "eps": "fp32"}
for N in (1, 4):
    res[f"layers{N}"] = build(sp._layers_kernel, ty, dict(R=48, N=N, P=64, K=4, PHASES=7, GRID_SYNC=True, BLOCK_C=16, BLOCK_O=8, BLOCK_D=1024, BLOCK_E=2048, BLOCK_PARTS=128), 8)
import json
json.dump(res, open(out, "w"))
print({k: hashlib.sha1(v.encode()).hexdigest()[:10] for k, v in res.items()})
