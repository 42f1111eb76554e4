"""Build mamba-ssm's CUDA selective scan (`selective_scan_cuda`) from its sources for one GPU architecture.

The peer in benchmarks/layer.py. mamba-ssm's setup.py compiles about eight architectures (too long for one
GPU-machine call); this builds the same sources with the same nvcc flags for sm_90 only (H100/H200), with
ninja, into OUT_DIR; put OUT_DIR on PYTHONPATH and pass the source tree as layer.py's --mamba-src.

    TORCH_CUDA_ARCH_LIST=9.0 python scripts/build_mamba_scan.py MAMBA_SRC OUT_DIR     # 216-224 s on an H100 box
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from torch.utils.cpp_extension import load

SOURCES = ["selective_scan.cpp"] + [
    f"selective_scan_{kind}.cu"
    for kind in ("fwd_fp32", "fwd_fp16", "fwd_bf16", "bwd_fp32_real", "bwd_fp32_complex", "bwd_fp16_real",
                 "bwd_fp16_complex", "bwd_bf16_real", "bwd_bf16_complex")
]  # fmt: skip
NVCC_FLAGS = [  # mamba-ssm 2.3.2's own, less the other architectures
    "-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__", "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math",
    "-gencode", "arch=compute_90,code=sm_90",
]  # fmt: skip


def main() -> None:
    src, out = Path(sys.argv[1]) / "csrc" / "selective_scan", Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count()))
    start = time.time()
    load(name="selective_scan_cuda", sources=[str(src / n) for n in SOURCES], build_directory=str(out),
         extra_cflags=["-O3", "-std=c++17"], extra_include_paths=[str(src)], extra_cuda_cflags=NVCC_FLAGS)  # fmt: skip
    print(f"built selective_scan_cuda in {time.time() - start:.0f} s -> {out}", flush=True)


if __name__ == "__main__":
    main()
