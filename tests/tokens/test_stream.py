"""The streaming decoder: one id at a time, the same notes as a whole-sequence decoder, a tiny snapshot."""

from __future__ import annotations

import json
import random

import pytest
import symusic

from sm1.events import DRUM_CHANNEL, NoteEvent
from sm1.midi import read_midi
from sm1.tokenizer import miditok_config

from .conftest import FILES_WITH_NOTES
from .grid import decoded_notes


def stream(dec, ids) -> list[NoteEvent]:
    return [ev for i in ids for ev in dec.feed(i)]


@pytest.fixture(scope="module")
def miditok():
    from miditok import TSD

    return TSD(miditok_config())


@pytest.mark.parametrize("path", FILES_WITH_NOTES, ids=lambda p: p.name)  # MidiTok 3.1 fails on no notes
def test_streaming_yields_what_miditok_whole_decoding_yields(tok, miditok, path):
    """MidiTok's own encoding of the file, decoded by MidiTok at once and by us token by token."""
    ids = miditok.encode(symusic.Score(str(path))).ids
    whole = miditok.decode(ids)
    tpq = whole.ticks_per_quarter
    theirs = sorted(
        (n.time / tpq, n.pitch, -1 if t.is_drum else t.program, n.velocity, n.duration / tpq)
        for t in whole.tracks
        for n in t.notes
    )
    assert sorted(decoded_notes(stream(tok.decoder(), ids)).elements()) == theirs


def test_streaming_equals_whole_decoding_on_garbage(tok):
    """What a badly trained model samples: any id order. No exception, valid notes, time never goes back."""
    rng = random.Random(7)
    for _ in range(20):
        ids = [rng.randrange(tok.vocab_size) for _ in range(2000)]
        dec = tok.decoder()
        beats = []
        events = []
        for i in ids:
            events += dec.feed(i)
            beats.append(dec.beat)
        assert events == tok.decode(ids)
        assert beats == sorted(beats)


def test_a_note_is_emitted_by_its_duration_token_with_its_duration(tok):
    ids = tok.encode([NoteEvent(60, 100, 0, 0, 2.5, 1.5)])
    dec = tok.decoder()
    emitted = [dec.feed(i) for i in ids]
    assert all(e == [] for e in emitted[:-1])
    (ev,) = emitted[-1]
    assert (ev.beat, ev.duration_beats, tok.tokens[ids[-1]]) == (2.5, 1.5, "Duration_1.4.8")


def test_snapshot_mid_stream_continues_exactly(tok, good_files):
    ids = tok.encode(read_midi(good_files[0]))
    whole = tok.decode(ids)
    for cut in (1, 2, 3, len(ids) // 2, len(ids) // 2 + 1, len(ids) - 1):
        first = tok.decoder()
        head = stream(first, ids[:cut])
        snapshot = json.dumps(first.state_dict())
        assert len(snapshot) < 200
        second = tok.decoder()
        second.load_state_dict(json.loads(snapshot))
        assert head + stream(second, ids[cut:]) == whole


def test_drums_decode_on_channel_10_and_programs_get_their_own_channels(tok):
    events = [
        NoteEvent(36, 100, 0, DRUM_CHANNEL, 0, 0.25),
        NoteEvent(60, 100, 40, 0, 0, 1),
        NoteEvent(64, 100, 73, 0, 0, 1),
    ]
    out = tok.decode(tok.encode(events))
    assert {(e.program, e.channel) for e in out if not e.is_drum} in ({(40, 0), (73, 1)}, {(40, 1), (73, 0)})
    assert [e.pitch for e in out if e.is_drum] == [36]


def test_live_notes_continue_the_stream_at_its_clock(tok, good_files):
    ids = tok.encode(read_midi(good_files[1]))[:301]
    dec = tok.decoder()
    stream(dec, ids)
    while not dec.at_note_boundary:
        dec.feed(tok.id_of("TimeShift_0.1.8"))
    clock = dec.beat
    played = [NoteEvent(67, 90, 0, 0, clock + 1.0, 0.5), NoteEvent(48, 70, 33, 1, clock + 1.25, 2.0)]
    live = tok.encode_live(played, dec)
    assert tok.bos_id not in live
    heard = stream(dec, live)
    assert [(e.pitch, e.program, e.beat, e.duration_beats) for e in heard] == [
        (67, 0, clock + 1.0, 0.5),
        (48, 33, clock + 1.25, 2.0),
    ]
    assert dec.beat == clock + 1.25


def test_live_notes_played_before_the_clock_sound_at_the_clock(tok):
    dec = tok.decoder()
    stream(dec, tok.encode([NoteEvent(60, 100, 0, 0, 8.0, 1)]))
    (ev,) = stream(dec, tok.encode_live([NoteEvent(62, 100, 0, 0, 3.0, 1)], dec))
    assert ev.beat == 8.0


def test_an_id_outside_the_vocabulary_is_refused(tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decoder().feed(tok.vocab_size)


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"tick": -1},
        {"tick": 0, "program": 500, "pitch": None, "drum": False, "velocity": None, "channels": []},
        "nonsense",
    ],
)
def test_a_malformed_decoder_snapshot_is_refused(tok, bad):
    dec = tok.decoder()
    with pytest.raises(ValueError, match="decoder state"):
        dec.load_state_dict(bad)
    assert dec.tick == 0
