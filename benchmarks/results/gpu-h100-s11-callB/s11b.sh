#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT; export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks:$PWD/scripts PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
git rev-parse HEAD > $R/commit.txt; git diff --stat >> $R/commit.txt
timeout 200 python3 .scratch/s11b_probe.py $R > $R/s11b.log 2>&1; echo "probe exit $?"
cut -c1-200 $R/s11b.log | grep batch
timeout 150 python3 benchmarks/decode.py --models 90m --contexts '' --batches 1,16,256,1024 --reps 100 --out $R/decode > $R/decode.log 2>&1; echo "decode exit $?"
grep '"fused+graphs' $R/decode.log | cut -c1-250
timeout 150 python3 -m pytest -q -x tests/model/test_step_triton.py tests/model/test_batched_step.py -k "cuda or staged or batches or copied" -p no:cacheprovider > $R/gpu-tests.log 2>&1; echo "tests exit $?"; tail -n 3 $R/gpu-tests.log
