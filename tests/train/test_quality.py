"""The quality benchmark's measures behave as their names say, and the benchmark runs on a checkpoint."""

import json
import subprocess
import sys

import pytest

from sm1.events import NoteEvent

from .conftest import ROOT, SHARED_MIDI, load_benchmark

quality = load_benchmark("quality")


def notes(pitches, start=0.0):
    return [NoteEvent(pitch=p, velocity=80, program=0, channel=0, beat=start + i, duration_beats=1.0)
            for i, p in enumerate(pitches)]  # fmt: skip


C_MAJOR = notes([60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60])


def test_a_c_major_scale_is_in_c_major_and_a_harmonic_minor_line_in_a_minor():
    assert quality.estimate_key(C_MAJOR) == (0, "major")
    assert quality.estimate_key(notes([57, 60, 64, 57, 59, 60, 62, 64, 65, 68, 69, 64, 57])) == (9, "minor")


def test_a_continuation_in_the_prompts_key_scores_in_key_and_close():
    m = quality.clip_metrics(C_MAJOR, notes([64, 67, 72, 65], start=16), beats=4)
    assert m["in_key"] == 1.0
    assert m["pc_distance"] < 0.5
    assert m["notes_per_beat"] == 1.0
    assert m["pitch_range"] == 8


def test_a_continuation_off_the_key_scores_out_of_key_and_far():
    m = quality.clip_metrics(C_MAJOR, notes([61, 66, 68, 70], start=16), beats=4)
    assert m["in_key"] == 0.0
    assert m["pc_distance"] == pytest.approx(1.0)


def test_the_benchmark_measures_real_and_generated_continuations(tiny_checkpoint, tmp_path):
    out = tmp_path / "quality"
    prompts = [str(SHARED_MIDI / "aria_classical.mid"), str(SHARED_MIDI / "POP909_008.mid")]
    cmd = [sys.executable, "benchmarks/quality.py", "--checkpoint", str(tiny_checkpoint), "--prompts", *prompts,
           "--prompt-beats", "8", "--beats", "8", "--out", str(out)]  # fmt: skip
    printed = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    report = json.loads((out / "quality.json").read_text())
    assert set(report["summary"]) == {"real", "T=0.9", "T=1"}
    assert "| T=0.9 |" in printed
    real = [c for c in report["clips"] if c["source"] == "real"]
    assert len(real) == 2 and all(c["unfinished"] == 0 and c["notes_per_beat"] > 0.5 for c in real)
    assert all(c["in_key"] > 0.7 for c in real)  # real music stays (mostly) in its key
    assert sorted(p.name for p in out.glob("*.mid")) == [
        "POP909_008_T0.9.mid", "POP909_008_T1.mid", "aria_classical_T0.9.mid", "aria_classical_T1.mid"]  # fmt: skip


def test_held_out_pieces_of_the_shards_serve_as_prompts_too(tiny_checkpoint, shards, tmp_path):
    out = tmp_path / "quality"
    cmd = [sys.executable, "benchmarks/quality.py", "--checkpoint", str(tiny_checkpoint), "--prompts",
           "--data", str(shards), "--prompt-beats", "8", "--beats", "8", "--temperatures", "1.0", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    report = json.loads((out / "quality.json").read_text())
    pieces = {c["piece"] for c in report["clips"]}
    assert len(pieces) == 1 and pieces.pop().startswith("val:")  # the one held-out piece of these shards
    assert [c["source"] for c in report["clips"]] == ["real", "T=1"]
    assert len(list(out.glob("val_*_T1.mid"))) == 1
