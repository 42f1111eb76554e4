"""MIDI files <-> note events in beats.

Reading uses symusic (a C++ parser, about 200x faster than mido on real files; docs/tokenizer.md);
writing uses mido, which gives full control of channels and note-offs. Whatever goes wrong in a file
ends in one exception, MidiError, naming the file and the reason; the caps in MidiLimits bound the
memory and time any file can take.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import mido
import numpy as np
import symusic
from pydantic import BaseModel, Field

from sm1.events import DRUM_CHANNEL, NoteArrays, NoteEvent


class MidiError(ValueError):
    """A MIDI file that cannot be used: corrupt, truncated, empty, not MIDI, or over a limit."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class MidiLimits(BaseModel):
    """Caps on what one file may cost (settings: the server and the corpus builder pass their own)."""

    max_bytes: int = Field(16 * 1024 * 1024, gt=0, description="file size")
    max_tracks: int = Field(1024, gt=0, description="tracks declared in the header")
    max_notes: int = Field(500_000, gt=0, description="notes after parsing")
    max_beats: float = Field(100_000.0, gt=0, description="end of the last note, in beats")


def read_midi(
    source: str | Path | bytes, limits: MidiLimits | None = None, *, name: str | None = None
) -> list[NoteEvent]:
    """Notes of a type 0/1/2 file (any PPQ, any tempo map) in beats, sorted by onset.

    `name` labels bytes in error messages (e.g. an upload's file name)."""
    return read_notes(source, limits, name=name).to_events()


def read_notes(source: str | Path | bytes, limits: MidiLimits | None = None, *, name: str | None = None) -> NoteArrays:
    """As read_midi, as arrays (no object per note: what corpus building uses)."""
    limits = limits or MidiLimits()
    name, data = _load_bytes(source, limits, name)
    _check_header(name, data, limits)
    try:
        score = symusic.Score.from_midi(data)
    except Exception as e:  # symusic raises RuntimeError/ValueError/IndexError with terse texts
        raise MidiError(name, f"corrupt MIDI data ({_first_line(e)})") from e
    tpq = score.ticks_per_quarter
    if tpq <= 0:
        raise MidiError(name, f"unsupported time division (ticks per quarter {tpq})")
    parts = []
    for track in score.tracks:
        n = track.note_num()
        if not n:
            continue
        arr = track.notes.numpy()
        parts.append(
            NoteArrays(
                beat=arr["time"].astype(np.float64) / tpq,
                duration=np.maximum(arr["duration"].astype(np.float64), 0.0) / tpq,
                pitch=arr["pitch"].astype(np.int64),
                velocity=arr["velocity"].astype(np.int64),
                program=np.full(n, track.program, dtype=np.int64),
                drum=np.full(n, bool(track.is_drum)),
            )
        )
        if sum(len(p) for p in parts) > limits.max_notes:
            raise MidiError(name, f"more than {limits.max_notes} notes (limit max_notes)")
    notes = NoteArrays.concatenate(parts)
    if len(notes):
        bad = (notes.pitch < 0) | (notes.velocity <= 0) | (notes.program < 0) | (notes.program > 127)
        if bad.any():
            raise MidiError(name, "corrupt MIDI data (note with an out-of-range pitch, velocity or program)")
        last = float(np.max(notes.beat + notes.duration))
        if last > limits.max_beats:
            raise MidiError(name, f"music lasts {last:.0f} beats, more than {limits.max_beats:g} (limit max_beats)")
    return notes.sorted()


def _load_bytes(source: str | Path | bytes, limits: MidiLimits, name: str | None) -> tuple[str, bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        name = name or "<bytes>"
    else:
        name = name or str(source)
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > limits.max_bytes:
                raise MidiError(name, f"file is {size} bytes, more than {limits.max_bytes} (limit max_bytes)")
            data = path.read_bytes()
        except OSError as e:
            raise MidiError(name, f"cannot read file ({e.strerror or e})") from e
    if len(data) > limits.max_bytes:
        raise MidiError(name, f"file is {len(data)} bytes, more than {limits.max_bytes} (limit max_bytes)")
    return name, data


def _check_header(name: str, data: bytes, limits: MidiLimits) -> None:
    """Refuse what is plainly not a usable MIDI file before the parser sees it."""
    if not data:
        raise MidiError(name, "file is empty")
    if len(data) < 14 or data[:4] != b"MThd":
        raise MidiError(name, "not a MIDI file (it does not start with an MThd header)")
    length, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    if length < 6:
        raise MidiError(name, f"corrupt MIDI header (length {length})")
    if fmt > 2:
        raise MidiError(name, f"unknown MIDI file format {fmt}")
    if ntracks > limits.max_tracks:
        raise MidiError(name, f"header declares {ntracks} tracks, more than {limits.max_tracks} (limit max_tracks)")
    if division & 0x8000:
        raise MidiError(name, "SMPTE time division is not supported (no beats to read)")
    if division == 0:
        raise MidiError(name, "corrupt MIDI header (0 ticks per quarter note)")
    found, pos = 0, 8 + length
    while pos + 8 <= len(data) and found < ntracks:  # walk the chunk headers: a cut file ends mid-chunk
        kind, size = data[pos : pos + 4], struct.unpack(">I", data[pos + 4 : pos + 8])[0]
        if pos + 8 + size > len(data):
            raise MidiError(name, f"truncated: chunk {found + 1} claims {size} bytes, {len(data) - pos - 8} remain")
        found += kind == b"MTrk"
        pos += 8 + size
    if found < ntracks:
        raise MidiError(name, f"truncated: the header declares {ntracks} tracks, the file holds {found}")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


PPQ = 480


def write_midi(events: list[NoteEvent], tempo_bpm: float = 120.0) -> bytes:
    """A type 1 .mid: a tempo track, then one track per channel with its program. A note that restarts
    a pitch still sounding on its channel ends the earlier one there (what a synthesizer would do); the
    same pitch struck twice at the same time on one channel is written once."""
    if not 1.0 <= tempo_bpm <= 1000.0:
        raise ValueError(f"tempo_bpm must be in 1..1000, got {tempo_bpm}")
    mid = mido.MidiFile(type=1, ticks_per_beat=PPQ)
    meta = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm), time=0)])
    mid.tracks.append(meta)
    by_channel: dict[int, list[NoteEvent]] = {}
    for ev in events:
        by_channel.setdefault(ev.channel, []).append(ev)
    for channel in sorted(by_channel):
        mid.tracks.append(_channel_track(channel, by_channel[channel]))
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def _channel_track(channel: int, events: list[NoteEvent]) -> mido.MidiTrack:
    # (tick, order, message): at one tick note-offs (0) go before program changes (1) and note-ons (2)
    timeline: list[tuple[int, int, mido.Message]] = []
    program = None
    sounding: dict[int, int] = {}  # pitch -> index in timeline of the note-off of the note now sounding
    for ev in sorted(events, key=lambda e: (e.beat, e.pitch)):
        on = round(ev.beat * PPQ)
        off = max(on + 1, round(ev.end_beat * PPQ))
        if channel != DRUM_CHANNEL and ev.program != program:
            program = ev.program
            timeline.append((on, 1, mido.Message("program_change", channel=channel, program=program)))
        earlier = sounding.get(ev.pitch)
        if earlier is not None and timeline[earlier - 1][0] == on:
            continue  # the same pitch struck twice at once on one channel sounds once
        if earlier is not None and timeline[earlier][0] > on:
            timeline[earlier] = (on, 0, timeline[earlier][2])
        timeline.append((on, 2, mido.Message("note_on", channel=channel, note=ev.pitch, velocity=ev.velocity)))
        sounding[ev.pitch] = len(timeline)
        timeline.append((off, 0, mido.Message("note_off", channel=channel, note=ev.pitch)))
    timeline.sort(key=lambda x: (x[0], x[1]))
    track = mido.MidiTrack()
    now = 0
    for tick, _, msg in timeline:
        track.append(msg.copy(time=tick - now))
        now = tick
    return track
