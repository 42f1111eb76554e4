"""A fuzz set of broken files: each one gives MidiError and nothing else, quickly."""

from __future__ import annotations

import random
import time

import pytest

from sm1.midi import MidiError, read_notes
from sm1.tokenizer import Tokenizer

from .conftest import GOOD_FILES

CASES_PER_KIND = 400


@pytest.fixture(scope="module")
def originals() -> list[bytes]:
    return [p.read_bytes() for p in GOOD_FILES if p.stat().st_size > 14]


def truncations(originals: list[bytes], rng: random.Random) -> list[bytes]:
    """Cut anywhere short of the end (the stray trailing byte of one test file is no loss)."""
    out = []
    while len(out) < CASES_PER_KIND:
        data = rng.choice(originals)
        cut = data[: rng.randrange(len(data) - 1)]
        if cut != data.rstrip(b"\x00")[: len(cut)] or len(cut) < len(data) - 1:
            out.append(cut)
    return out


def non_midi(rng: random.Random) -> list[bytes]:
    out = [b"", b"MThd", b"MThd\x00\x00\x00\x06", b"RIFF....RMIDdata", "\ufeffMThd text".encode()]
    while len(out) < CASES_PER_KIND // 2:
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        out.append(noise if rng.random() < 0.5 else b"MThd\x00\x00\x00\x06" + noise)
    return out


def test_every_truncated_empty_or_non_midi_file_gives_midi_error_and_nothing_else(originals):
    rng = random.Random(20240)
    cases = truncations(originals, rng) + non_midi(rng)
    assert len(cases) >= 600
    slowest = 0.0
    for data in cases:
        start = time.perf_counter()
        with pytest.raises(MidiError):
            read_notes(data, name="fuzz.mid")
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 1.0


def test_byte_flips_give_midi_error_or_notes_that_encode(originals):
    """A flipped byte may still leave a valid file; then its notes must tokenize within bounded time."""
    tok = Tokenizer.default()
    rng = random.Random(99)
    outcomes = {"error": 0, "notes": 0}
    slowest = 0.0
    for _ in range(CASES_PER_KIND * 2):
        data = bytearray(rng.choice(originals))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        start = time.perf_counter()
        try:
            notes = read_notes(bytes(data), name="fuzz.mid")
        except MidiError:
            outcomes["error"] += 1
        else:
            outcomes["notes"] += 1
            tok.encode_notes(notes)
        slowest = max(slowest, time.perf_counter() - start)
    assert outcomes["error"] >= CASES_PER_KIND  # most flips break a file
    assert slowest < 2.0
