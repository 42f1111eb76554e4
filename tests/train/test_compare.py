"""The three-model comparison runs end to end (--tiny, on CPU) and reports every figure it promises."""

import json
import subprocess
import sys

from .conftest import ROOT, SINGLE_THREAD


def test_the_comparison_trains_three_models_and_times_generation(shards, tmp_path):
    out = tmp_path / "compare"
    cmd = [sys.executable, "benchmarks/compare_models.py", "--data", str(shards), "--out", str(out), "--tiny"]
    printed = subprocess.run(cmd, cwd=ROOT, env=SINGLE_THREAD, check=True, capture_output=True, text=True).stdout
    report = json.loads((out / "compare.json").read_text())
    models = report["models"]
    assert [m["label"][:6] for m in models] == ["SM1 d_", "SM1 d_", "GPT 1L"]
    assert [m["d_state"] for m in models] == [1, 16, None]
    sm1_params = models[0]["params"]
    assert all(abs(m["params"] - sm1_params) / sm1_params < 0.25 for m in models)  # matched sizes
    assert len({m["tokens"] for m in models}) == 1  # the same token budget
    assert all(m["val_bits_per_note"] > m["val_bits_per_token"] > 0 and m["tokens_per_s"] > 0 for m in models)
    gen = report["generation"]
    assert sorted({g["context"] for g in gen}) == [64, 128, 256] and len(gen) == 9
    sm1_state = {g["state_bytes"] for g in gen if g["label"] == "SM1 d_state=1"}
    gpt_cache = [g["state_bytes"] for g in gen if g["label"].startswith("GPT")]
    assert len(sm1_state) == 1  # constant in context
    assert gpt_cache[0] < gpt_cache[1] < gpt_cache[2]  # the KV cache grows with it
    assert "| SM1 d_state=1 |" in printed and "val bits/note" in printed
    assert (out / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
