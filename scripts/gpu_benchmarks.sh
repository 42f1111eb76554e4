#!/usr/bin/env bash
# The GPU figures still owed (issues 4, 5, 8), in one run on one GPU machine, each step bounded in time:
#   bash scripts/gpu_benchmarks.sh OUT_DIR [MAMBA_SRC]
# OUT_DIR gets one folder per benchmark (JSON, logs); copy the tables into benchmarks/RESULTS.md from them.
# MAMBA_SRC: an unpacked mamba-ssm source tree, for its Triton selective_state_update beside ours.
# Needs the project's Python dependencies importable (pip install -e . where the machine can reach PyPI).
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

step decode 180 python benchmarks/decode.py --out "$OUT/decode" ${MAMBA:+--mamba-src "$MAMBA"}
step serve-load 240 python benchmarks/serve_load.py --device cuda --sessions 1,64,256,1024,2048 --seconds 15 \
    --settle 5 --capacity 0 --client-procs 8 --out "$OUT/serve-load"
step generation 120 python benchmarks/compare_models.py --data data/music21 --generation-only --device cuda \
    --out "$OUT/compare-generation"
