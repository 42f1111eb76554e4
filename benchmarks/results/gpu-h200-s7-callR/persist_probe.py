"""Where the one-row kernel's time goes: a barrier-only kernel (acquire-load polling against atomic polling),
and clock64 stamps around each phase and barrier of the 90M model's step (program 0 and the last program).
Scratch, not shipped: python .scratch/persist_probe.py OUTDIR"""
import importlib.util
import json
import pathlib
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, ".")
from sm1 import step_persistent as sp  # noqa: E402
from sm1.model import SM1, SM1Config  # noqa: E402

out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
dev = torch.device("cuda")
res = {}


@triton.jit
def _old_sync(flags_ptr, p, programs, BLOCK_PARTS: tl.constexpr):
    tl.debug_barrier()
    tl.atomic_xchg(flags_ptr + p, 1, sem="release", scope="gpu")
    ps = tl.arange(0, BLOCK_PARTS)
    pm = ps < programs
    arrived = 0
    while arrived < programs:
        flags = tl.atomic_add(flags_ptr + ps, 0, mask=pm, sem="acquire", scope="gpu")
        arrived = tl.sum(tl.where(pm, flags, 0), axis=0)
    tl.debug_barrier()


@triton.jit
def _barriers(flags_ptr, n, OLD: tl.constexpr, BLOCK_PARTS: tl.constexpr):
    p = tl.program_id(0)
    programs = tl.num_programs(0)
    for i in range(n):
        if OLD:
            _old_sync(flags_ptr + i * BLOCK_PARTS, p, programs, BLOCK_PARTS)
        else:
            sp._arrive(flags_ptr + i * BLOCK_PARTS, p)
            sp._wait(flags_ptr + i * BLOCK_PARTS, programs, BLOCK_PARTS)


def time_us(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / reps * 1e3


for programs in (() if len(sys.argv) > 2 else (96, 132)):
    for old in (False, True):
        for n in (1, 48):
            flags = torch.zeros(n, 128 if programs <= 128 else 256, device=dev, dtype=torch.int32)
            bp = flags.shape[1]

            def go():
                flags.zero_()
                _barriers[(programs,)](flags, n, OLD=old, BLOCK_PARTS=bp, num_warps=8, launch_cooperative_grid=True)

            us = time_us(go)
            key = f"barriers programs={programs} poll={'atomic' if old else 'acquire-load'} n={n}"
            res[key] = round(us, 2)
            print(key, round(us, 2), "us per launch (with a zero_ of the flags)", flush=True)

# clock64 stamps: a copy of the kernel with a stamp before and after each barrier
src = pathlib.Path(sp.__file__).read_text()
stamp_fn = '''
    @triton.jit
    def _stamp(stamp_ptr, i, p):
        t = tl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [p], dtype=tl.int64, is_pure=False, pack=1)
        tl.store(stamp_ptr + p * 1024 + i, t)

    @triton.jit
    def _layers_kernel('''
src = src.replace("\n    @triton.jit\n    def _layers_kernel(", stamp_fn, 1)
src = src.replace("flags_ptr, first, last", "flags_ptr, stamp_ptr, first, last", 1)
src = src.replace("flags, first, last", "flags, STAMPS, first, last", 1)
NS = 6  # stamps a layer: before/after arrive 1, after wait 1, before/after arrive 2, after wait 2
for call, before, after in [("_arrive(flags_ptr + 2 * layer", 0, 1), ("_wait(flags_ptr + 2 * layer", None, 2),
                            ("_arrive(flags_ptr + (2 * layer + 1)", 3, 4), ("_wait(flags_ptr + (2 * layer + 1)", None, 5)]:
    i = src.index(call)
    line_start = src.rindex("\n", 0, i) + 1
    end = src.index("\n", i)
    indent = " " * (i - line_start)
    pre = f"{indent}_stamp(stamp_ptr, layer * NS + {before}, p)\n" if before is not None else ""
    src = src[:line_start] + pre + src[line_start:end + 1] + f"{indent}_stamp(stamp_ptr, layer * NS + {after}, p)\n" + src[end + 1:]
src = src.replace("NS + ", "6 + ")
assert src.count("_stamp(stamp_ptr") == 7, src.count("_stamp(stamp_ptr")
path = pathlib.Path(".scratch/stamped_persistent.py")
path.write_text(src)
if len(sys.argv) > 2:
    sys.exit(0)
spec = importlib.util.spec_from_file_location("stamped_persistent", path)
st = importlib.util.module_from_spec(spec)
sys.modules["stamped_persistent"] = st
spec.loader.exec_module(st)

torch.manual_seed(0)
model = SM1(SM1Config(vocab_size=443, d_model=768, n_layer=24)).to(dev, torch.bfloat16).eval()
pool = model.allocate_state(2)
slots = torch.tensor([0], device=dev)
u0 = model.embedding(torch.tensor([5], device=dev))
st.STAMPS = torch.zeros(96, 1024, device=dev, dtype=torch.int64)
for _ in range(20):
    st.layers_step(model, u0.clone(), pool.ssm, pool.conv, slots)
torch.cuda.synchronize()
runs = []
for _ in range(20):
    st.STAMPS.zero_()
    st.layers_step(model, u0.clone(), pool.ssm, pool.conv, slots)
    torch.cuda.synchronize()
    s = st.STAMPS[:, : 24 * NS].view(96, 24, NS).cpu()
    nxt = torch.cat([s[:, 1:, 0], s[:, -1:, 5]], 1)  # the next layer's end of its in phase
    runs.append(torch.stack([s[:, :, 1] - s[:, :, 0], s[:, :, 2] - s[:, :, 1], s[:, :, 3] - s[:, :, 2],
                             s[:, :, 4] - s[:, :, 3], s[:, :, 5] - s[:, :, 4], nxt - s[:, :, 5]], -1).double())
r = torch.stack(runs)[:, :, 1:23]  # (runs, programs, middle layers, 6) cycles
names = ["arrive 1", "mixer weights + wait 1", "mixer phase", "arrive 2", "in weights + wait 2", "next in phase"]
for prog in (0, 47, 95):
    med = r[:, prog].median(0).values.median(0).values
    res[f"cycles program {prog}"] = dict(zip(names, med.tolist()))
    print(f"program {prog} median cycles per layer:", dict(zip(names, med.tolist())), flush=True)
mean_all = r.mean((0, 2))
res["cycles mean over programs"] = dict(zip(names, mean_all.mean(0).tolist()))
print("mean over programs:", res["cycles mean over programs"])
total = (st.STAMPS[0, 23 * NS + 5] - st.STAMPS[0, 0]).item()
res["program 0 cycles from layer 0 arrive 1 to layer 23 wait 2"] = total
print("program 0 cycles, layer 0 arrive 1 to layer 23 wait 2:", total)
# the same kernel timed without stamps, in a CUDA graph of 20 steps
g = torch.cuda.CUDAGraph()
uu = u0.clone()
with torch.cuda.graph(g):
    for _ in range(20):
        sp.layers_step(model, uu, pool.ssm, pool.conv, slots)
g.replay()
torch.cuda.synchronize()
a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
a.record()
for _ in range(10):
    g.replay()
b.record()
torch.cuda.synchronize()
res["layers_step us (graph of 20, no stamps)"] = a.elapsed_time(b) / 200 * 1e3
print("layers_step us (graph, no stamps):", res["layers_step us (graph of 20, no stamps)"])
# the residual's copies, timed; and is one launch the same bits run after run (a race would not be)?
for copies in (1, 2, 4, 8):
    sp.COPIES = copies
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(20):
            sp.layers_step(model, uu, pool.ssm, pool.conv, slots)
    g.replay()
    torch.cuda.synchronize()
    a.record()
    for _ in range(10):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    res[f"layers_step us COPIES={copies}"] = a.elapsed_time(b) / 200 * 1e3
    print(f"layers_step us COPIES={copies}:", res[f"layers_step us COPIES={copies}"], flush=True)
sp.COPIES = 4
start = pool.clone()
outs = []
for i in range(30):
    p2 = start.clone()
    outs.append(sp.layers_step(model, u0.clone(), p2.ssm, p2.conv, slots).clone())
same = [torch.equal(o, outs[0]) for o in outs]
res["one launch, 30 runs from one state, same bits as the first"] = sum(same)
sp.GRID_SYNC = False
p2 = start.clone()
phased = sp.layers_step(model, u0.clone(), p2.ssm, p2.conv, slots)
sp.GRID_SYNC = True
res["one launch vs phased: max abs diff"] = (outs[0].float() - phased.float()).abs().max().item()
res["one launch vs phased: elements differing"] = (outs[0] != phased).sum().item()
print({k: v for k, v in res.items() if "launch" in k and "us" not in k}, flush=True)
(out / "probe.json").write_text(json.dumps(res, indent=1))
