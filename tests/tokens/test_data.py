"""sm1-data build and the training loader, on a small folder and on slices of the music21 corpus."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sm1.data.loader import ShardError, TokenShards
from sm1.midi import read_midi
from sm1.tokenizer import Tokenizer

from .conftest import BAD_FILES, FILES_WITH_NOTES

SMALL = [p for p in FILES_WITH_NOTES if p.stat().st_size < 20_000][:12]


def sm1_data(*args: str) -> dict:
    """Run the real command line; return its report.json."""
    cmd = [sys.executable, "-m", "sm1.data.cli", "build", *args, "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder like a user's: nested, one broken file, one duplicate, one file that is not MIDI."""
    root = tmp_path_factory.mktemp("corpus")
    for i, path in enumerate(SMALL):
        sub = root / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, sub / path.name)
    shutil.copy(SMALL[0], root / "copy of the first.MID")
    shutil.copy(BAD_FILES[0], root / "broken.mid")
    (root / "notes.txt").write_text("not a MIDI file, not listed")
    return root


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shards")
    return out, sm1_data(str(folder), "--out", str(out), "--workers", "2", "--batch-size", "4", "--val-fraction", "0.3")


def test_build_counts_every_file_and_says_why_it_skipped(built):
    _, report = built
    assert report["files_seen"] == len(SMALL) + 2
    assert report["files_used"] == len(SMALL)
    assert report["skipped_reasons"] == {"duplicate content": 1, "truncated": 1}
    assert report["notes"] == sum(len(read_midi(p)) for p in SMALL)
    assert report["tokens"] == report["train_tokens"] + report["val_tokens"]
    assert report["train_tokens"] > 0 and report["val_tokens"] > 0


def test_every_piece_in_the_shards_is_its_file_encoded_between_bos_and_eos(built, folder):
    out, _ = built
    tok = Tokenizer.load(out / "vocab.json")
    index = json.loads((out / "index.json").read_text())
    assert index["vocab_fingerprint"] == tok.fingerprint
    shards = {s: np.fromfile(out / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")}
    for piece in index["pieces"]:
        ids = shards[piece["split"]][piece["offset"] : piece["offset"] + piece["length"]].tolist()
        path = folder / piece["key"].split("/", 1)[1]
        assert ids == tok.encode(read_midi(path), eos=True), piece["key"]
    assert sum(p["length"] for p in index["pieces"]) == sum(len(s) for s in shards.values())


def test_the_split_follows_the_content_not_the_run(built, folder, tmp_path):
    out, _ = built
    first = {p["key"].rsplit("/", 1)[1]: p["split"] for p in json.loads((out / "index.json").read_text())["pieces"]}
    other = tmp_path / "other"
    other.mkdir()
    for path in SMALL[::3]:
        shutil.copy(path, other / path.name)
    sm1_data(str(other), "--out", str(tmp_path / "o"), "--workers", "1", "--val-fraction", "0.3")
    second = json.loads((tmp_path / "o" / "index.json").read_text())["pieces"]
    assert {p["key"].rsplit("/", 1)[1]: p["split"] for p in second}.items() <= first.items()


def test_a_rerun_resumes_and_writes_the_same_bytes(built, folder):
    out, report = built
    before = {s: (out / f"{s}.bin").read_bytes() for s in ("train", "val")}
    again = sm1_data(str(folder), "--out", str(out), "--workers", "2", "--batch-size", "4", "--val-fraction", "0.3")
    assert again["batches_reused"] == again["batches"] == report["batches"]
    victim = sorted((out / "parts").glob("*.json"))[0]  # as if the build had stopped before this batch
    victim.unlink()
    resumed = sm1_data(str(folder), "--out", str(out), "--workers", "2", "--batch-size", "4", "--val-fraction", "0.3")
    assert resumed["batches_reused"] == report["batches"] - 1
    assert {s: (out / f"{s}.bin").read_bytes() for s in ("train", "val")} == before


def test_the_loader_reads_what_the_build_wrote(built):
    out, report = built
    train = TokenShards(out, "train")
    assert train.num_tokens == report["train_tokens"] and train.vocab == Tokenizer.default()
    batch = train.sample_batch(8, 128, torch.Generator().manual_seed(0))
    assert batch.shape == (8, 129) and batch.dtype == torch.int64
    assert int(batch.min()) >= 0 and int(batch.max()) < train.vocab.vocab_size
    val = TokenShards(out, "val")
    rows = torch.cat(list(val.iter_sequential(4, 64)))
    assert rows.shape[1] == 65
    flat = torch.cat([rows[0], *(r[1:] for r in rows[1:])])  # windows overlap by one token
    assert flat.tolist() == val.tokens[: len(flat)].tolist()
    assert len(flat) > val.num_tokens - 65


def test_transposition_moves_each_rows_melody_together_and_keeps_it_in_range(built):
    train = TokenShards(built[0], "train")
    tok = train.vocab
    plain = train.sample_batch(16, 256, torch.Generator().manual_seed(3))
    moved = train.sample_batch(16, 256, torch.Generator().manual_seed(3), transpose=5)
    melodic = torch.from_numpy(tok.kind_of == tok.kinds.index("pitch"))[plain]
    assert torch.equal(plain[~melodic], moved[~melodic])  # drums, time, velocity untouched
    shifts = set()
    for p, m, mask in zip(plain, moved, melodic, strict=True):
        delta = (m - p)[mask].unique()
        assert len(delta) <= 1 and (len(delta) == 0 or abs(int(delta)) <= 5)
        shifts.update(delta.tolist())
    assert len(shifts) > 2
    assert bool(torch.from_numpy(tok.kind_of == tok.kinds.index("pitch"))[moved][melodic].all())


def test_tempo_augmentation_renotates_a_row_at_double_length(built):
    train = TokenShards(built[0], "train")
    tok = train.vocab
    plain = train.sample_batch(8, 400, torch.Generator().manual_seed(5))
    slow = train.sample_batch(8, 400, torch.Generator().manual_seed(5), stretch=1.0)
    for p, s in zip(plain, slow, strict=True):
        a, b = tok.decode(p.tolist()), tok.decode(s.tolist())
        assert len(b) > 0 and len(b) <= len(a)
        a = a[: len(b)]
        assert [(e.pitch, e.velocity) for e in b] == [(e.pitch, e.velocity) for e in a]
        assert [e.beat for e in b] == [2 * e.beat for e in a]
        assert [e.duration_beats for e in b] == [min(2 * e.duration_beats, 12.0) for e in a]


def test_shards_from_another_vocabulary_are_refused(built, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(built[0], out, ignore=shutil.ignore_patterns("parts"))
    index = json.loads((out / "index.json").read_text())
    index["vocab_fingerprint"] = "0" * 16
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match="disagree"):
        TokenShards(out, "train")
    with pytest.raises(ShardError, match="not a token shard folder"):
        TokenShards(tmp_path, "train")


def test_a_slice_of_the_music21_corpus_builds_and_loads(tmp_path):
    report = sm1_data(
        "music21:airdsAirs",
        "music21:bach",
        "--limit",
        "4",
        "--out",
        str(tmp_path),
        "--workers",
        "2",
        "--val-fraction",
        "0",
    )
    assert report["files_seen"] == 8 and report["files_used"] >= 6
    assert set(report["per_source"]) == {"music21/airdsAirs", "music21/bach"}
    assert all("public-domain" in s["licence"] for s in report["per_source"].values())
    shards = TokenShards(tmp_path, "train")
    assert shards.num_tokens == report["tokens"] > 1000
    assert shards.sample_batch(2, 256, torch.Generator().manual_seed(0)).shape == (2, 257)


def test_restricted_sources_are_left_out_unless_asked_for(tmp_path):
    report = sm1_data("music21:essenFolksong", "--limit", "3", "--out", str(tmp_path / "a"), "--workers", "1")
    assert report["files_seen"] == 0
    (excluded,) = report["excluded"]
    assert excluded["source"] == "music21/essenFolksong" and excluded["pieces"] > 8000
    assert "non-commercial" in excluded["licence"]
    asked = sm1_data(
        "music21:essenFolksong", "--limit", "3", "--include-restricted", "--out", str(tmp_path / "b"), "--workers", "1"
    )
    assert asked["files_seen"] == 3 and "non-commercial" in asked["per_source"]["music21/essenFolksong"]["licence"]


def test_a_source_that_is_not_there_is_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "sm1.data.cli", "build", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "not a folder" in done.stderr
