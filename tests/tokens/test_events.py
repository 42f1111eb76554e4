"""Note events as clients send and receive them."""

from __future__ import annotations

import json

import pytest

from sm1.events import DRUM_CHANNEL, NoteEvent


def test_a_note_survives_json():
    ev = NoteEvent(pitch=60, velocity=100, program=40, channel=2, beat=3.5, duration_beats=0.25)
    d = json.loads(json.dumps(ev.to_json()))
    assert d["type"] == "note" and NoteEvent.from_json(d) == ev


def test_drums_are_channel_10_whatever_the_program():
    ev = NoteEvent.from_json(
        {
            "type": "note",
            "pitch": 36,
            "velocity": 90,
            "program": 5,
            "channel": DRUM_CHANNEL,
            "beat": 0,
            "duration_beats": 1,
        }
    )
    assert ev.is_drum and ev.program == 5 and ev.beat == 0.0


GOOD = {"type": "note", "pitch": 60, "velocity": 100, "program": 0, "channel": 0, "beat": 0, "duration_beats": 1}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pitch", 128),
        ("pitch", -1),
        ("pitch", 60.5),
        ("pitch", "60"),
        ("pitch", True),
        ("velocity", 0),
        ("program", 128),
        ("channel", 16),
        ("beat", -0.5),
        ("beat", float("nan")),
        ("duration_beats", float("inf")),
        ("beat", None),
        ("type", "chord"),
    ],
)
def test_a_bad_field_is_refused_with_its_name(field, value):
    with pytest.raises(ValueError, match=field):
        NoteEvent.from_json({**GOOD, field: value})


def test_a_missing_field_is_refused():
    with pytest.raises(ValueError, match="velocity"):
        NoteEvent.from_json({k: v for k, v in GOOD.items() if k != "velocity"})
