#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT; export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks:$PWD/scripts PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
git rev-parse HEAD > $R/commit.txt; git diff --stat >> $R/commit.txt
timeout 420 python3 .scratch/s10c_probe.py $R 410 > $R/s10c.log 2>&1; echo "probe exit $?"
grep "MEDIANS\|ROW\|done\|cut" $R/s10c.log | cut -c1-200 | head -40
if [ -f $R/new.json ]; then
  timeout 90 python3 -c "
import sys, json; import sm1.step_triton as st
for k, v in json.load(open('$R/new.json')).items(): setattr(st, k, v)
import pytest; sys.exit(pytest.main(['-q', '-x', 'tests/model/test_step_triton.py', '-k', 'cuda', '-p', 'no:cacheprovider']))
" > $R/gpu-tests.log 2>&1; echo "tests exit $?"; tail -3 $R/gpu-tests.log
fi
