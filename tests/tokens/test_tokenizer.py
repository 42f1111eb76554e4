"""The vocabulary and the encoder: MidiTok's TSD id for id, and a round trip that keeps every note on the grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sm1.events import DRUM_CHANNEL, NoteEvent
from sm1.midi import read_midi
from sm1.tokenizer import DRUMS_PROGRAM, Tokenizer, VocabError, miditok_config

from .conftest import GOOD_FILES
from .grid import DURATIONS, decoded_notes, expected_notes


def note(pitch=60, beat=0.0, dur=1.0, program=0, velocity=100, drum=False) -> NoteEvent:
    return NoteEvent(pitch, velocity, program, DRUM_CHANNEL if drum else 0, beat, dur)


def test_vocabulary_is_miditok_tsd_with_programs_id_for_id(tok):
    from miditok import TSD

    theirs = TSD(miditok_config())
    assert [name for name, _ in sorted(theirs.vocab.items(), key=lambda kv: kv[1])] == tok.tokens


def test_vocabulary_fits_uint16_and_has_pad_bos_eos(tok):
    assert tok.vocab_size == len(tok.tokens) <= np.iinfo(np.uint16).max + 1
    assert [tok.tokens[i] for i in (tok.pad_id, tok.bos_id, tok.eos_id)] == ["PAD_None", "BOS_None", "EOS_None"]


def test_every_id_is_documented_once(tok):
    described = tok.describe()
    assert [d["id"] for d in described] == list(range(tok.vocab_size))
    assert len({d["token"] for d in described}) == tok.vocab_size
    assert all(d["meaning"] and d["kind"] in tok.kinds for d in described)


def test_lookup_arrays_tell_what_each_id_is(tok):
    for arr in (tok.pitch_of, tok.program_of, tok.kind_of, tok.velocity_of, tok.beats_of):
        assert arr.shape == (tok.vocab_size,)
    kind = {name: tok.kinds[k] for name, k in zip(tok.tokens, tok.kind_of, strict=True)}
    assert kind["Pitch_60"] == "pitch" and tok.pitch_of[tok.id_of("Pitch_60")] == 60
    assert kind["PitchDrum_36"] == "drum" and tok.pitch_of[tok.id_of("PitchDrum_36")] == 36
    assert tok.program_of[tok.id_of("Program_40")] == 40
    assert tok.program_of[tok.id_of("Program_-1")] == DRUMS_PROGRAM
    assert tok.beats_of[tok.id_of("TimeShift_1.4.8")] == 1.5
    assert tok.velocity_of[tok.id_of("Velocity_127")] == 127
    assert tok.pitch_of[tok.id_of("Velocity_127")] == -1 and tok.program_of[tok.id_of("Pitch_60")] == -1


def test_a_piece_starts_with_bos_and_ends_with_eos_only_when_asked(tok):
    ids = tok.encode([note()])
    assert ids[0] == tok.bos_id and tok.eos_id not in ids
    assert tok.encode([note()], eos=True)[-1] == tok.eos_id


@pytest.mark.parametrize("path", GOOD_FILES, ids=lambda p: p.name)
def test_round_trip_keeps_every_note_of_a_real_file_on_the_grid(tok, path):
    events = read_midi(path)
    assert decoded_notes(tok.decode(tok.encode(events))) == expected_notes(events)


EDGE_CASES = {
    "overlapping same-pitch notes": [note(60, 0, 4), note(60, 1, 1), note(60, 1, 2)],
    "drums and melody at one time": [note(36, 0, 0.25, drum=True), note(42, 0, 0.25, drum=True), note(48, 0, 2)],
    "notes longer than the largest duration token": [note(50, 0, 40.0), note(52, 3, 12.1), note(53, 3, 11.9)],
    "program changes": [note(60, b / 2, 0.5, program=p) for b, p in enumerate([0, 40, 0, 73, 73, 128 - 1])],
    "a zero-length note": [note(64, 1, 0.0)],
    "off-grid onsets and a tie": [note(60, 0.0624, 1), note(61, 0.0625, 1), note(62, 4.3333, 4.125)],
    "a long silence": [note(60, 0, 1), note(62, 1000.5, 1)],
    "pitches outside the vocabulary are dropped": [note(10, 0, 1), note(120, 0, 1), note(20, 0, drum=True)],
    "every velocity": [note(60, i, 0.5, velocity=i) for i in range(1, 128)],
}


@pytest.mark.parametrize("events", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_round_trip_of_edge_cases(tok, events):
    assert decoded_notes(tok.decode(tok.encode(events))) == expected_notes(events)


def test_long_notes_are_cut_to_the_largest_duration(tok):
    (ev,) = tok.decode(tok.encode([note(60, 0, 40.0)]))
    assert ev.duration_beats == max(DURATIONS) == 12.0


def test_program_token_appears_only_when_the_program_changes(tok):
    ids = tok.encode([note(60 + i, i, 1, program=5) for i in range(8)])
    assert sum(tok.program_of[i] >= 0 for i in ids) == 1


notes_strategy = st.lists(
    st.builds(
        NoteEvent,
        pitch=st.integers(0, 127),
        velocity=st.integers(1, 127),
        program=st.integers(0, 127),
        channel=st.sampled_from([0, 3, DRUM_CHANNEL]),
        beat=st.floats(0, 200, allow_nan=False),
        duration_beats=st.floats(0, 30, allow_nan=False),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(notes_strategy)
def test_round_trip_property_on_generated_notes(events):
    tok = Tokenizer.default()
    assert decoded_notes(tok.decode(tok.encode(events))) == expected_notes(events)


def test_miditok_reads_our_ids_as_the_same_notes(tok, good_files):
    """Our ids mean what MidiTok says they mean (an independent decoder of the same vocabulary)."""
    from miditok import TSD

    theirs = TSD(miditok_config())
    for path in good_files[:12]:
        ours = tok.decode(tok.encode(read_midi(path)))
        score = theirs.decode(tok.encode(read_midi(path)))
        tpq = score.ticks_per_quarter
        notes = [
            (n.time / tpq, n.pitch, -1 if t.is_drum else t.program, n.velocity, n.duration / tpq)
            for t in score.tracks
            for n in t.notes
        ]
        assert sorted(notes) == sorted(decoded_notes(ours).elements()), path.name


def test_save_and_load_give_an_equal_vocabulary(tok, tmp_path):
    tok.save(tmp_path / "vocab.json")
    loaded = Tokenizer.load(tmp_path / "vocab.json")
    assert loaded == tok and loaded.fingerprint == tok.fingerprint
    assert loaded.encode([note()]) == tok.encode([note()])


def test_a_vocabulary_that_differs_from_the_code_is_refused(tok, tmp_path):
    d = tok.to_dict()
    d["tokens"] = d["tokens"][:-1]
    (tmp_path / "vocab.json").write_text(json.dumps(d))
    with pytest.raises(VocabError, match="vocabulary mismatch"):
        Tokenizer.load(tmp_path / "vocab.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(VocabError, match="not an SM1 vocabulary"):
        Tokenizer.load(tmp_path / "other.json")
