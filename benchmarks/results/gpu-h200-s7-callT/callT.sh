#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT/r; mkdir -p $R
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
timeout 150 python3 .scratch/determinism.py $R/det > $R/det.log 2>&1; echo "det exit $?"; cut -c1-300 $R/det.log
for i in 1 2 3; do timeout 100 python3 -m pytest -q -p no:cacheprovider tests/model/test_step_triton.py -k cuda > $R/gpu-tests$i.log 2>&1; echo "tests$i exit $? $(tail -n 1 $R/gpu-tests$i.log)"; grep -o "AssertionError: (.*" $R/gpu-tests$i.log | head -2; done
cd $OUT && tar czf r.tgz r && rm -rf r
