#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md (issues 4, 5, 8), on one GPU machine, each step bounded in time:
#   bash scripts/gpu_benchmarks.sh OUT_DIR [MAMBA_SRC]
# OUT_DIR gets one folder per benchmark (JSON, logs); copy the tables into benchmarks/RESULTS.md from them.
# MAMBA_SRC: an unpacked mamba-ssm source tree (its sdist): its Triton state update beside our decode step, and
# its CUDA scan (built here for sm_90, scripts/build_mamba_scan.py) beside our fused layer.
# Needs the project's Python dependencies importable (pip install -e . where the machine can reach PyPI) and the
# data shards in data/music21 for the model comparison. About 40 minutes in all; the GPU calls of 2026-11-23 and
# 2026-12-04 ran these steps in several parts.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/gpu_benchmarks.sh OUT_DIR [MAMBA_SRC]}
MAMBA=${2:-}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1

step() {  # name, seconds, command...: one benchmark; its failure is logged and the next one still runs
    local name=$1 limit=$2
    shift 2
    echo "== $name (up to ${limit}s)"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "   exit $? ($(tail -n 1 "$OUT/$name.log"))"
}

if [ -n "$MAMBA" ]; then
    TORCH_CUDA_ARCH_LIST=9.0 step mamba-build 420 python scripts/build_mamba_scan.py "$MAMBA" "$OUT/mamba-build"
    export PYTHONPATH="$OUT/mamba-build:${PYTHONPATH:-}"
fi
step gpu-tests 300 python -m pytest -q -p no:cacheprovider tests/model/test_selective_scan_triton.py \
    tests/model/test_step_triton.py
step decode 240 python benchmarks/decode.py --out "$OUT/decode" ${MAMBA:+--mamba-src "$MAMBA"}
step decode-fp32 120 python benchmarks/decode.py --dtype fp32 --contexts '' --out "$OUT/decode-fp32"
step decode-sweep 200 python benchmarks/decode.py --sweep --models 90m --batches 1,2,4,16,64,256,1024 --contexts '' \
    --out "$OUT/decode-sweep"
step decode-tiles 240 python scripts/tune_decode_tiles.py --batches 256,1024 --out "$OUT/decode-tiles"
step decode-compile 150 python benchmarks/decode.py --compile --models 90m --batches 1,1024 --contexts '' \
    --out "$OUT/decode-compile"
step decode-profile 60 python scripts/profile_decode_step.py --models 90m --batches 1,4,1024
step layer 240 python benchmarks/layer.py --out "$OUT/layer" ${MAMBA:+--mamba-src "$MAMBA"}
step serve-load 300 python benchmarks/serve_load.py --device cuda --sessions 64,128,256,512,1024 --seconds 15 \
    --settle 5 --capacity 0 --client-procs 8 --out "$OUT/serve-load"
step gpu-sharing 200 python benchmarks/gpu_sharing.py --out "$OUT/gpu-sharing"
for workers in 4 8; do
    step "serve-load-workers$workers" 240 python benchmarks/serve_load.py --device cuda --sessions 512,1024,2048,2560 \
        --seconds 15 --settle 5 --capacity 0 --client-procs 8 --set workers=$workers --set pacing_lead_s=0.5 \
        --out "$OUT/serve-load-workers$workers"
done
step generation 120 python benchmarks/compare_models.py --data data/music21 --generation-only --device cuda \
    --out "$OUT/compare-generation"
for seed in 0 1; do
    step "compare-seed$seed" 240 python benchmarks/compare_models.py --data data/music21 --out "$OUT/compare-seed$seed" \
        --tokens 6000000 --max-minutes-per-model 0.7 --evals 4 --seed $seed
done
