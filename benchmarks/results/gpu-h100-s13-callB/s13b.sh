#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT; export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks:$PWD/scripts PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
lscpu | grep -E "Model name|^CPU\(s\)" >> $R/gpu.txt; git rev-parse HEAD >> $R/gpu.txt; git status --short >> $R/gpu.txt
cat $R/gpu.txt
timeout 150 python3 benchmarks/serve_load.py --device cuda --sessions 2048 --seconds 15 --settle 5 --capacity 0 --client-procs 8 --set workers=8 --set pacing_lead_s=0.5 --out $R/serve-load-workers8 > $R/serve-load-workers8.log 2>&1; echo "serve_load exit $?"
tail -25 $R/serve-load-workers8.log
ls $R/serve-load-workers8
