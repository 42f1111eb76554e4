# The fold's mixer kernels: registers and stack frame (Triton 3.6, sm_90, compiled on the CPU; run from the repo root
# with .scratch/step_triton_c19.py = c19ddb9's sm1/step_triton.py, and regs.py of ../gpu-h100-s9-callE)
import sys
sys.argv = ["x", "a", "b"]
exec(open("benchmarks/results/gpu-h100-s9-callE/regs.py").read().split("for label, path in")[0])
load("sm1.step_triton", ".scratch/step_triton_c19.py")
sys.path.insert(0, ".scratch")
xp = load("xp_probe", "benchmarks/results/gpu-h100-s9-callA/xp_probe.py")
ty = {**ptrs("xc_ptr", "z_ptr", "wdt_ptr", "dtb_ptr", "d_ptr", "y_ptr"), "rs_ptr": "*fp32", "a_ptr": "*fp32", "ssm_ptr": "*fp32", "slots_ptr": "*i64", "part_ptr": "*fp32"}
for C, W, F in ((128, 4, True), (128, 8, True), (256, 8, True), (64, 4, True), (128, 4, False)):
    print("mixer_xp", C, W, "FMA" if F else "dot", usage(xp._mixer_xp_kernel, ty, dict(R=48, N=1, P=64, S=6, IEEE=False, FMA=F, BLOCK_B=16, BLOCK_C=C), W))
