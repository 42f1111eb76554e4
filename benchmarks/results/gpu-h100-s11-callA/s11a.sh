#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT; export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks:$PWD/scripts PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
git rev-parse HEAD > $R/commit.txt; git diff --stat >> $R/commit.txt
timeout 330 python3 .scratch/s11a_probe.py $R 320 > $R/s11a.log 2>&1; echo "probe exit $?"
grep "OVERHEAD\|CONV\|best\|done\|bandwidth" $R/s11a.log | cut -c1-330
timeout 150 python3 benchmarks/decode.py --models 90m --contexts '' --batches 1,16,256,1024 --reps 100 --out $R/decode > $R/decode.log 2>&1; echo "decode exit $?"
grep fused $R/decode.log | cut -c1-250
