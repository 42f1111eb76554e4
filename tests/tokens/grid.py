"""The stated grid of docs/tokenizer.md, written out the slow, obvious way, to check the encoder against."""

from __future__ import annotations

import math
from collections import Counter

from sm1.events import NoteEvent

ONSET_STEP = 1 / 8
DURATIONS = [k / 8 for k in range(1, 33)] + [4 + k / 4 for k in range(1, 33)]  # 1/8 .. 4, then 4.25 .. 12
VELOCITIES = [math.floor(127 * k / 32) for k in range(1, 33)]  # 3, 7, ..., 127
PITCHES = range(21, 110)
DRUM_PITCHES = range(27, 89)


def nearest(grid: list[float], x: float) -> float:
    """Nearest grid value; a tie goes to the larger."""
    return min(grid, key=lambda g: (abs(g - x), -g))


def on_grid(ev: NoteEvent) -> tuple | None:
    """What a note must come back as after encode/decode, or None if the vocabulary drops it."""
    if ev.pitch not in (DRUM_PITCHES if ev.is_drum else PITCHES):
        return None
    onset = math.floor(ev.beat / ONSET_STEP + 0.5) * ONSET_STEP
    program = -1 if ev.is_drum else ev.program
    return (onset, ev.pitch, program, nearest(VELOCITIES, ev.velocity), nearest(DURATIONS, ev.duration_beats))


def as_played(ev: NoteEvent) -> tuple:
    return (ev.beat, ev.pitch, -1 if ev.is_drum else ev.program, ev.velocity, ev.duration_beats)


def expected_notes(events: list[NoteEvent]) -> Counter:
    return Counter(q for q in map(on_grid, events) if q is not None)


def decoded_notes(events: list[NoteEvent]) -> Counter:
    return Counter(map(as_played, events))
