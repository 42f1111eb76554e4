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


def test_a_piece_covers_the_window_only_if_a_note_starts_at_its_end_or_later():
    assert quality.covers(notes([60] * 16), 15.0) and not quality.covers(notes([60] * 16), 16.0)
    assert not quality.covers([], 0.0)


def test_a_piece_that_ends_before_the_continuation_window_is_left_out(tiny_checkpoint, tmp_path):
    # music21_test10.mid ends with a note at beat 15: its "real" continuation over beats 8..24 is half silence
    # (0.5 notes a beat), which pulled the mean of the real continuations down beside any generated one
    out = tmp_path / "quality"
    prompts = [str(SHARED_MIDI / "music21_test10.mid"), str(SHARED_MIDI / "aria_classical.mid")]
    report = quality.main(["--checkpoint", str(tiny_checkpoint), "--prompts", *prompts, "--prompt-beats", "8",
                           "--beats", "16", "--temperatures", "1.0", "--out", str(out)])  # fmt: skip
    assert {c["piece"] for c in report["clips"]} == {"aria_classical.mid"}
    assert report["summary"]["real"]["clips"] == 1
    assert set(report["summary_by_set"]) == {"file"} and all(c["set"] == "file" for c in report["clips"])


def test_the_density_benchmark_counts_notes_a_beat_as_the_decoder_does(tiny_checkpoint, shards, tmp_path):
    cmd = [sys.executable, "benchmarks/density.py", "--checkpoint", str(tiny_checkpoint), "--data", str(shards),
           "--prompts", str(SHARED_MIDI / "aria_classical.mid"), "--prompt-beats", "8", "--beats", "8", "--seeds", "2",
           "--free-tokens", "40", "--out", str(tmp_path)]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    report = json.loads((tmp_path / "density.json").read_text())
    from sm1.data.loader import TokenShards

    val = TokenShards(shards, "val")
    dec = val.vocab.decoder()
    decoded = sum(len(dec.feed(int(t))) for t in val.tokens)
    assert report["data"]["splits"]["val"]["notes_per_beat"] == pytest.approx(decoded / dec.beat)
    assert len(report["free"]["streams"]) == 8 and all(s["beats"] >= 0 for s in report["free"]["streams"])
    [row] = [r for r in report["prompts"] if r["set"] == "file"]
    assert row["piece"] == "aria_classical.mid" and row["real"] > 0.5
    assert row["as_written"]["notes_per_beat"] >= 0 and 0 <= row["velocity_90"]["strings"] <= 1
