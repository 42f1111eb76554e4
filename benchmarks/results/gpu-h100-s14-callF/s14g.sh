#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT; export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks:$PWD/scripts:$PWD/.scratch PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
git rev-parse HEAD >> $R/gpu.txt; git diff >> $R/gpu.txt
timeout 120 python3 .scratch/s14f_probe.py $R > $R/s14f.log 2>&1; echo "probe exit $?"
cut -c1-330 $R/s14f.log
