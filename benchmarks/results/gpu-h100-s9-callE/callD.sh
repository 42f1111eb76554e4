#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT; export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
timeout 200 python3 .scratch/hoist_probe.py $R > $R/hoist.log 2>&1; echo "hoist exit $?"
grep "^ROW\|^PROFILE\|^batch\|_kernel\|nvjet\|bandwidth" $R/hoist.log | cut -c1-120
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/model/test_step_triton.py -k cuda > $R/gpu-tests.log 2>&1; echo "tests exit $? $(tail -n 1 $R/gpu-tests.log)"; grep -o "AssertionError: (.*" $R/gpu-tests.log | head -3
