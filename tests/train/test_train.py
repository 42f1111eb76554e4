"""sm1-train: a tiny model learns on real shards, resumes exactly, reads its config from a file, runs under DDP."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest

from sm1.checkpoint import load
from sm1.train import config_from_args

from .conftest import ROOT, SINGLE_THREAD, read_log, train_command


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, env=SINGLE_THREAD, capture_output=True, text=True, check=True, **kw)


def test_a_tiny_model_learns_and_leaves_a_log_a_plot_and_checkpoints(shards, tmp_path):
    out = tmp_path / "run"
    printed = run(train_command(shards, out, "--max-steps", "60", "--eval-every", "20")).stdout
    rows = read_log(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 61))
    train = [float(r["train_loss"]) for r in rows]
    assert sum(train[-5:]) / 5 < sum(train[:5]) / 5 - 1.0  # a nat lower than where it started
    val = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert len(val) == 3 and val[-1] < val[0] < math.log(443)  # below the uniform guess, and falling
    bits = [float(r["val_bits_per_note"]) / float(r["val_bits_per_token"]) for r in rows if r["val_loss"]]
    assert all(2.5 < b < 5 for b in bits)  # tokens per note of the val split: 3-4 for this vocabulary
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    ck = load(out / "last")
    assert ck.meta["step"] == 60 and ck.meta["val_loss"] == pytest.approx(val[-1])
    assert load(out / "best").meta["val_loss"] == min(val)
    assert json.loads(printed[printed.index("{") :])["val_loss"] == pytest.approx(val[-1])


def test_an_interrupted_run_resumes_to_exactly_the_losses_of_an_uninterrupted_one(shards, tmp_path):
    flags = ("--max-steps", "40", "--eval-every", "20")
    whole = tmp_path / "whole"
    run(train_command(shards, whole, *flags))

    parts = tmp_path / "parts"
    proc = subprocess.Popen(train_command(shards, parts, *flags), cwd=ROOT, env=SINGLE_THREAD,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    while not (parts / "log.csv").exists() or len(read_log(parts)) < 5:  # Ctrl-C a few steps in
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    stopped_at = json.loads((parts / "resume" / "state.json").read_text())["step"]
    assert 5 <= stopped_at < 40
    assert "resuming at step" in run(train_command(shards, parts, *flags)).stdout

    columns = ("step", "tokens", "lr", "train_loss")
    assert [[r[c] for c in columns] for r in read_log(parts)] == [[r[c] for c in columns] for r in read_log(whole)]
    assert read_log(parts)[-1]["val_loss"] == read_log(whole)[-1]["val_loss"]


def test_a_finished_run_run_again_does_nothing_more(shards, tmp_path):
    out = tmp_path / "run"
    run(train_command(shards, out, "--max-steps", "3", "--eval-every", "3"))
    again = run(train_command(shards, out, "--max-steps", "3", "--eval-every", "3")).stdout
    assert "resuming at step 3" in again
    assert len(read_log(out)) == 3


def test_resuming_into_a_folder_of_another_model_is_refused(shards, tmp_path):
    out = tmp_path / "run"
    run(train_command(shards, out, "--max-steps", "2", "--eval-every", "2"))
    with pytest.raises(subprocess.CalledProcessError) as e:
        run(train_command(shards, out, "--max-steps", "4", "--d-state", "16"))
    assert "holds a run of another model (d_state differ)" in e.value.stderr


def test_config_comes_from_a_yaml_file_and_flags_override_it(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("data: shards\nd_model: 64\nlr: 0.002\nmodel: gpt\n")
    cfg = config_from_args(["--config", str(path), "--lr", "0.01", "--no-compile"])
    assert (cfg.d_model, cfg.lr, cfg.model, cfg.compile, str(cfg.data)) == (64, 0.01, "gpt", False, "shards")
    path.write_text("data: shards\nd_modle: 64\n")
    with pytest.raises(SystemExit):
        config_from_args(["--config", str(path)])
    err = capsys.readouterr().err
    assert "run.yaml" in err and "d_modle" in err


def test_two_processes_train_together_under_torchrun(shards, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           *train_command(shards, out, "--max-steps", "20", "--eval-every", "10")[1:]]  # fmt: skip
    run(cmd, timeout=120)
    rows = read_log(out)
    assert [int(r["tokens"]) for r in rows] == [2 * 8 * 64 * s for s in range(1, 21)]  # both ranks' batches
    assert float(rows[-1]["val_loss"]) < float(rows[9]["val_loss"]) < math.log(443)
    assert load(out / "last").meta["tokens_seen"] == 20 * 2 * 8 * 64
