#!/usr/bin/env bash
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > /dev/null 2>&1
R=$OUT; export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks:$PWD/scripts PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $R/gpu.txt
for v in "acquire 8" "atomic 8" "acquire 16"; do
  timeout 60 python3 .scratch/b1_probe.py $v $R/b1.jsonl > $R/b1-${v// /-}.log 2>&1; echo "b1 $v exit $?"
done
python3 - <<'PY'
import json, os
for l in open(os.environ["OUT"] + "/b1.jsonl"):
    r = json.loads(l); print("B1", r["barrier"], r["warps"], r.get("ms_per_step"), r.get("max_abs_diff_vs_fp32"), r.get("error", ""))
PY
timeout 400 python3 .scratch/xp_probe.py gpu $R > $R/xp.log 2>&1; echo "xp exit $?"
grep -v "^{" $R/xp.log | grep -v "^ROW" | tail -60
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/model/test_step_triton.py -k cuda > $R/gpu-tests.log 2>&1; echo "tests exit $? $(tail -n 1 $R/gpu-tests.log)"; grep -o "AssertionError: (.*" $R/gpu-tests.log | head -3
