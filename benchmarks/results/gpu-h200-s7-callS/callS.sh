#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT/r; mkdir -p $R
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/model/test_step_triton.py -k cuda > $R/gpu-tests.log 2>&1; echo "tests exit $? $(tail -n 1 $R/gpu-tests.log)"; grep -o "AssertionError: (.*" $R/gpu-tests.log | head -3
mkdir -p /tmp/old && tar xzf .scratch/old.tgz -C /tmp/old
for i in 1 2; do
  (cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 120 python3 benchmarks/decode.py --models default,90m --contexts '' --batches 1,2 --reps 200 --out $R/old$i > $R/old$i.log 2>&1); echo "old$i $?"; grep '^| .*fused+graphs' $R/old$i.log | cut -c1-160
  timeout 120 python3 benchmarks/decode.py --models default,90m --contexts '' --batches 1,2 --reps 200 --out $R/new$i > $R/new$i.log 2>&1; echo "new$i $?"; grep '^| .*fused+graphs' $R/new$i.log | cut -c1-160
done
timeout 90 python3 scripts/profile_decode_step.py --models 90m --batches 1 > $R/profile.log 2>&1; echo "profile $?"; grep -A12 "batch 1:" $R/profile.log | cut -c1-120
cd $OUT && tar czf r.tgz r && rm -rf r
