"""Registers, spills and shared memory of the tile kernels (Triton 3.6, sm_90) from two sources: c19ddb9's and call D's/E's."""
import sys, importlib.util, subprocess, tempfile, os, re
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
tgt = GPUTarget("cuda", 90, 32)
BIN = "/tmp/t36site/triton/backends/nvidia/bin/cuobjdump"
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path); m = importlib.util.module_from_spec(spec); sys.modules[name] = m; spec.loader.exec_module(m); return m
def usage(fn, types, consts, warps):
    names = fn.arg_names
    sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    k = triton.compile(src, target=tgt, options={"num_warps": warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    out = subprocess.run([BIN, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    return m.group(0) if m else out[-300:]
ptrs = lambda *ns: {n: "*bf16" for n in ns}
tyc = {**ptrs("u_ptr", "xz_ptr", "conv_ptr", "cw_ptr", "cb_ptr", "xc_ptr"), "slots_ptr": "*i64", "rs_ptr": "*fp32", "eps": "fp32"}
tym = {**ptrs("xc_ptr", "z_ptr", "xp_ptr", "wdt_ptr", "dtb_ptr", "d_ptr", "y_ptr"), "rs_ptr": "*fp32", "a_ptr": "*fp32", "ssm_ptr": "*fp32", "slots_ptr": "*i64"}
for label, path in (("c19ddb9", sys.argv[1]), ("other", sys.argv[2])):  # two copies of sm1/step_triton.py
    st = load("sm1.step_triton", path)
    print(label, "conv 16x256 w8:", usage(st._conv_kernel, tyc, dict(K=4, BLOCK_B=16, BLOCK_C=256, BLOCK_D=1024), 8),
          "| mixer 16x64 w8:", usage(st._mixer_kernel, tym, dict(R=48, N=1, P=64, IEEE=False, BLOCK_B=16, BLOCK_C=64), 8))
