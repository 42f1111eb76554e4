"""Fixtures for the token and MIDI tests: the shared real files and the project's vocabulary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sm1.midi import MidiError, read_midi
from sm1.tokenizer import Tokenizer

# the shared folder sits beside the repository root (../shared/midi); SM1_SHARED_MIDI points elsewhere
SHARED_MIDI = Path(os.environ.get("SM1_SHARED_MIDI", Path(__file__).resolve().parents[3] / "shared" / "midi"))

ALL_FILES = sorted(SHARED_MIDI.glob("**/*.mid"))
BAD_FILES = sorted((SHARED_MIDI / "bad").glob("*.mid"))


def _notes(path: Path) -> int:
    try:
        return len(read_midi(path))
    except MidiError:
        return -1


_COUNTS = {p: _notes(p) for p in ALL_FILES}
GOOD_FILES = [p for p in ALL_FILES if p not in BAD_FILES and _COUNTS[p] >= 0]
FILES_WITH_NOTES = [p for p in GOOD_FILES if _COUNTS[p] > 0]


@pytest.fixture(scope="session")
def tok() -> Tokenizer:
    return Tokenizer.default()


@pytest.fixture(scope="session")
def good_files() -> list[Path]:
    assert len(GOOD_FILES) >= 40, f"expected the shared MIDI files under {SHARED_MIDI}"
    return GOOD_FILES
