"""Fixtures of the training tests: token shards built by `sm1-data build` from real MIDI files."""

import importlib.util
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
    subprocess.run([sys.executable, "-m", "sm1.data", "build", str(src), "--out", str(out)], check=True)
    return out
