"""A clip of exactly the length asked for: notes cut at its end and the file's end marker placed there, so
a DAW loops it cleanly and `mido.MidiFile(...).length` is the requested length."""

from __future__ import annotations

import dataclasses
import io

import mido

from sm1.events import NoteEvent
from sm1.midi import write_midi


def fit(events: list[NoteEvent], start_beat: float, length_beats: float) -> list[NoteEvent]:
    """The notes starting in [start_beat, start_beat + length_beats), moved to start at 0 and cut at the end."""
    out = []
    for ev in events:
        beat = ev.beat - start_beat
        if 0 <= beat < length_beats:
            out.append(dataclasses.replace(ev, beat=beat, duration_beats=min(ev.duration_beats, length_beats - beat)))
    return out


def clip_midi(events: list[NoteEvent], length_beats: float, tempo_bpm: float) -> bytes:
    """A .mid of `events` (already fitted) whose end marker sits at `length_beats`."""
    mid = mido.MidiFile(file=io.BytesIO(write_midi(events, tempo_bpm)))
    end_tick = round(length_beats * mid.ticks_per_beat)
    for track in mid.tracks:
        ticks = sum(msg.time for msg in track if not (msg.is_meta and msg.type == "end_of_track"))
        kept = [msg for msg in track if not (msg.is_meta and msg.type == "end_of_track")]
        track[:] = [*kept, mido.MetaMessage("end_of_track", time=max(0, end_tick - ticks))]
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()
