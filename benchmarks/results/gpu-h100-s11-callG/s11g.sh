#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT; export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks:$PWD/scripts PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
git rev-parse HEAD > $R/commit.txt; git diff --stat >> $R/commit.txt
for i in 1 2; do
timeout 150 python3 benchmarks/decode.py --models default,90m --contexts '' --batches 1,16,256,1024 --reps 100 --out $R/decode$i > $R/decode$i.log 2>&1; echo "decode exit $?"
grep '"fused+graphs' $R/decode$i.log | cut -c1-200
done
timeout 200 python3 .scratch/s11g_probe.py $R > $R/s11g.log 2>&1; echo "probe exit $?"
cat $R/s11g.log
