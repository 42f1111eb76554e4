"""Small runs of the churn and soak benchmarks (the real commands; full sizes in benchmarks/RESULTS.md)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bench(script: str, out: Path, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, f"benchmarks/{script}.py", "--out", str(out), *args],
        cwd=REPO, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads((out / f"{script}.json").read_text())


def test_churn_leaves_no_session_no_growth_and_no_unexpected_log_line(tiny_checkpoint, tmp_path):
    r = bench("churn", tmp_path, "--checkpoint", str(tiny_checkpoint), "--cycles", "200", "--warmup", "50")
    assert r["failed_cycles"] == 0 and r["sessions_after"] == 0 and r["unexpected_log_lines"] == 0
    assert r["rss_after_mb"] <= 1.1 * r["rss_before_mb"]
    assert r["lost_without_stop_logged"] >= 2 * 250 // 3  # the closes and aborts were noticed as such


def test_a_short_soak_of_8_streams_loses_no_event(tmp_path):
    r = bench("soak", tmp_path, "--sessions", "8", "--minutes", str(20 / 60), "--interval", "5", "--settle", "2")
    assert r["lost"] == 0 and r["notes"] > 0
    assert len(r["samples"]) == 4 and all(s["sessions"] == 8 for s in r["samples"])


def test_the_decode_benchmark_runs_its_cpu_paths_and_the_gpt_beside_them(tmp_path):
    r = bench("decode", tmp_path, "--device", "cpu", "--models", "64x2", "--batches", "1,4", "--contexts", "256",
              "--gpt-batches", "1", "--reps", "3")  # fmt: skip
    eager = [row for row in r["sm1"] if row["path"] == "eager"]
    assert [row["batch"] for row in eager] == [1, 4]
    assert all(row["max_abs_diff_vs_fp32"] < 1e-4 and row["ms_per_step"] > 0 and row["x_floor"] >= 1 for row in eager)
    [gpt] = r["gpt"]
    assert gpt["context"] == 256 and gpt["ms_per_token"] > 0 and gpt["cache_mb_per_session"] > 0


def test_the_tick_overhead_benchmark_splits_a_tick_into_its_parts(tmp_path):
    r = bench("tick_overhead", tmp_path, "--sessions", "16,32", "--ticks", "3")
    assert [row["sessions"] for row in r["rows"]] == [16, 32]
    for row in r["rows"]:
        assert row["tick_ms"] > row["model_step_ms"] > 0 and row["us_per_session_outside_the_step"] > 0
        shares = row["shares_of_profiled_time"]
        assert all(0 < v < 1 for v in shares.values()) and sum(shares.values()) < 1.0
