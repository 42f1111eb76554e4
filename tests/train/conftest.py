"""Fixtures of the training tests: token shards built by `sm1-data build` from real MIDI files."""

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_MIDI = ROOT.parent / "shared" / "midi"
# a handful of real pieces: piano, pop, a chorale, multi-track GM files
SHARD_SOURCES = ("aria_classical.mid", "aria_nocturne.mid", "Maestro_1.mid", "Maestro_2.mid", "POP909_008.mid",
                 "POP909_010.mid", "music21_test10.mid", "Mr._Blue_Sky.mid", "Funkytown.mid", "Aicha.mid")  # fmt: skip


def load_benchmark(name: str):
    """Import benchmarks/<name>.py (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """Shards of a few real MIDI files, built by the real `sm1-data build` command."""
    src = tmp_path_factory.mktemp("midi")
    for name in SHARD_SOURCES:
        (src / name).symlink_to(SHARED_MIDI / name)
    out = tmp_path_factory.mktemp("shards")
    build = [sys.executable, "-m", "sm1.data.cli", "build", str(src), "--out", str(out), "--val-fraction", "0.3",
             "--no-progress"]  # fmt: skip
    subprocess.run(build, check=True, capture_output=True)
    return out


def train_command(shards: Path, out: Path, *flags: str) -> list[str]:
    """`sm1-train` on a tiny model (d_model 32, 2 layers, 64-token windows), with extra flags."""
    return [sys.executable, "-m", "sm1.train", "--data", str(shards), "--out", str(out), "--d-model", "32",
            "--n-layer", "2", "--seq-len", "64", "--batch-size", "8", "--warmup-steps", "5", "--lr", "3e-3",
            "--no-progress", *flags]  # fmt: skip


# one thread per process: the machine is small and shared, and runs compared bit for bit must use the same count
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def read_log(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))
