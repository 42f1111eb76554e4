"""MIDI files in and out: beats from any PPQ and tempo map, files mido reads back, one clear error."""

from __future__ import annotations

import io
from collections import Counter

import mido
import pytest

from sm1.events import DRUM_CHANNEL, NoteEvent
from sm1.midi import MidiError, MidiLimits, read_midi, write_midi

from .conftest import BAD_FILES, SHARED_MIDI


def mido_file(ppq: int, tracks: list[list[mido.Message]], file_type: int = 1) -> bytes:
    mid = mido.MidiFile(type=file_type, ticks_per_beat=ppq)
    mid.tracks.extend(mido.MidiTrack(t) for t in tracks)
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def mido_onsets(path) -> Counter:
    """(beat, pitch) of every note-on, counted by mido: an independent reading of the same file."""
    mid = mido.MidiFile(path)
    out: Counter = Counter()
    for track in mid.tracks:
        tick = 0
        for msg in track:
            tick += msg.time
            if msg.type == "note_on" and msg.velocity > 0:
                out[(tick / mid.ticks_per_beat, msg.note)] += 1
    return out


MIDO_READABLE = [
    "Funkytown.mid",
    "tonejs_claire_de_lune.mid",
    "music21_test04.mid",
    "partitura_test_anacrusis.mid",
    "jazzsoft_test-2-tracks-type-0.mid",
    "d6caebd1964d9e4a3c5ea59525230e2a.mid",
    "tonejs_beat.mid",
]


@pytest.mark.parametrize("name", MIDO_READABLE)
def test_notes_start_on_the_beats_mido_counts(name):
    events = read_midi(SHARED_MIDI / name)
    assert Counter((e.beat, e.pitch) for e in events) == mido_onsets(SHARED_MIDI / name)


@pytest.mark.parametrize("ppq", [24, 96, 480, 960, 32764])
def test_beats_do_not_depend_on_ppq_or_tempo_changes(ppq):
    tempo = [mido.MetaMessage("set_tempo", tempo=t, time=ppq) for t in (300_000, 900_000, 450_000)]
    notes = [
        mido.Message("program_change", program=40, channel=2, time=0),
        mido.Message("note_on", note=60, velocity=80, channel=2, time=ppq // 2),
        mido.Message("note_off", note=60, channel=2, time=3 * ppq),
        mido.Message("note_on", note=38, velocity=100, channel=DRUM_CHANNEL, time=ppq),
        mido.Message("note_off", note=38, channel=DRUM_CHANNEL, time=ppq // 4),
    ]
    events = read_midi(mido_file(ppq, [tempo, notes]))
    assert [(e.pitch, e.program, e.is_drum, e.beat, e.duration_beats) for e in events] == [
        (60, 40, False, 0.5, 3.0),
        (38, events[1].program, True, 4.5, 0.25),
    ]


def test_type_0_with_several_channels_keeps_each_program():
    msgs = [
        mido.Message("program_change", program=0, channel=0),
        mido.Message("program_change", program=33, channel=1),
        mido.Message("note_on", note=60, velocity=64, channel=0),
        mido.Message("note_on", note=40, velocity=64, channel=1),
        mido.Message("note_off", note=60, channel=0, time=480),
        mido.Message("note_off", note=40, channel=1),
    ]
    events = read_midi(mido_file(480, [msgs], file_type=0))
    assert sorted((e.pitch, e.program) for e in events) == [(40, 33), (60, 0)]


def test_a_zero_length_note_is_kept():
    assert any(e.duration_beats == 0 for e in read_midi(SHARED_MIDI / "music21_test16.mid"))


def test_what_we_write_mido_reads_back_note_for_note():
    events = [
        NoteEvent(60, 100, 0, 0, 0.0, 1.0),
        NoteEvent(64, 90, 0, 0, 0.5, 0.25),
        NoteEvent(43, 70, 33, 1, 1.0, 8.0),
        NoteEvent(36, 120, 0, DRUM_CHANNEL, 1.5, 0.125),
    ]
    mid = mido.MidiFile(file=io.BytesIO(write_midi(events, tempo_bpm=93.0)))
    assert mido.tempo2bpm(next(m.tempo for m in mid.tracks[0] if m.type == "set_tempo")) == pytest.approx(93.0)
    assert read_midi(write_midi(events)) == sorted(events, key=lambda e: (e.beat, not e.is_drum, e.program, e.pitch))
    programs = {(m.channel, m.program) for t in mid.tracks for m in t if m.type == "program_change"}
    assert programs == {(0, 0), (1, 33)}


def test_a_restarted_pitch_ends_the_note_still_sounding():
    events = [NoteEvent(60, 100, 0, 0, 0.0, 4.0), NoteEvent(60, 100, 0, 0, 1.0, 1.0)]
    back = read_midi(write_midi(events))
    assert [(e.beat, e.duration_beats) for e in back] == [(0.0, 1.0), (1.0, 1.0)]


def test_every_shared_file_survives_write_and_read(good_files):
    """Every note comes back at its onset (to 1/480 beat); a unison double on one channel comes back once."""
    for path in good_files:
        events = read_midi(path)
        back = read_midi(write_midi(events))
        key = lambda e: (round(e.beat * 480), e.pitch, e.is_drum, e.program if not e.is_drum else 0)  # noqa: E731
        assert Counter(map(key, back)) == Counter(set(map(key, events))), path.name


@pytest.mark.parametrize("path", [*BAD_FILES, SHARED_MIDI / "ValueError_Control168.mid"], ids=lambda p: p.name)
def test_a_broken_file_raises_midi_error_naming_the_file(path):
    with pytest.raises(MidiError) as info:
        read_midi(path)
    assert str(path) in str(info.value) and info.value.reason
    assert isinstance(info.value, ValueError)


def test_a_missing_file_is_a_midi_error(tmp_path):
    with pytest.raises(MidiError, match="cannot read file"):
        read_midi(tmp_path / "nope.mid")


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (MidiLimits(max_bytes=1000), "max_bytes"),
        (MidiLimits(max_notes=100), "max_notes"),
        (MidiLimits(max_beats=50), "max_beats"),
        (MidiLimits(max_tracks=1), "max_tracks"),
    ],
)
def test_limits_refuse_what_is_too_big(limits, reason):
    path = SHARED_MIDI / "Funkytown.mid"
    with pytest.raises(MidiError, match=reason):
        read_midi(path, limits)
    with pytest.raises(MidiError, match=reason):
        read_midi(path.read_bytes(), limits, name="upload.mid")


def test_bytes_are_named_in_errors():
    with pytest.raises(MidiError, match=r"^upload\.mid: not a MIDI file"):
        read_midi(b"hello world, no midi here", name="upload.mid")
