#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT; export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks:$PWD/scripts PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
git rev-parse HEAD > $R/commit.txt; git diff --stat >> $R/commit.txt
timeout 420 python3 .scratch/s10a_probe.py $R > $R/s10a.log 2>&1; echo "probe exit $?"
grep "BEST\|ROW\|HEAD\|done\|Error\|error" $R/s10a.log | cut -c1-220 | head -60
if [ -f $R/best.txt ]; then
  timeout 100 python3 -c "
import sys, json; import sm1.step_triton as st
cfg = json.load(open('$R/best.txt'))[0]
st.XMIX = True; st.XMIX_ROWS, st.XMIX_C, st.XMIX_K, st.XMIX_WARPS, st.XMIX_WAVES = cfg
import pytest; sys.exit(pytest.main(['-q', '-x', 'tests/model/test_step_triton.py', '-k', 'cuda', '-p', 'no:cacheprovider']))
" > $R/gpu-tests.log 2>&1; echo "tests exit $?"; tail -3 $R/gpu-tests.log
fi
