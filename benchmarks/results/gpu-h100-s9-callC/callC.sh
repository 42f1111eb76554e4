#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT; export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks:$PWD/scripts PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
timeout 450 python3 .scratch/mixer_probe.py gpu $R > $R/mixer.log 2>&1; echo "mixer exit $?"
grep "^ROW\|^PROFILE\|^batch\|_kernel\|nvjet" $R/mixer.log | cut -c1-150
