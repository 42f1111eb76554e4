#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT/r; mkdir -p $R
export PYTHONPATH=/tmp/site:$PWD
git log -1 --format=%H > $R/commit.txt 2>/dev/null; git status --short >> $R/commit.txt 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/model/test_step_triton.py -k cuda > $R/gpu-tests.log 2>&1; echo "tests exit $? $(tail -n 1 $R/gpu-tests.log)"
timeout 120 python3 .scratch/persist_probe.py $R/probe > $R/probe.log 2>&1; echo "probe exit $?"; tail -n 12 $R/probe.log
timeout 60 python3 .scratch/gemm_probe.py $R/gemm > $R/gemm.log 2>&1; echo "gemm exit $?"; cat $R/gemm.log | cut -c1-150
mkdir -p /tmp/old && tar xzf .scratch/old.tgz -C /tmp/old
for i in 1 2; do
  (cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 100 python3 benchmarks/decode.py --models 90m --contexts '' --batches 1,2 --reps 100 --out $R/old$i > $R/old$i.log 2>&1); echo "old$i $?"; grep 'fused+graphs' $R/old$i.log | cut -c1-160
  timeout 100 python3 benchmarks/decode.py --models 90m --contexts '' --batches 1,2 --reps 100 --out $R/new$i > $R/new$i.log 2>&1; echo "new$i $?"; grep 'fused+graphs' $R/new$i.log | cut -c1-160
done
cd $OUT && tar czf r.tgz r && rm -rf r
