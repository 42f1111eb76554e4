"""Note events in musical time: the one currency between MIDI files, tokens, the engine and clients.

Time is in beats (quarter notes), never seconds, so the listener's tempo drives playback.
Drums are channel 9 (MIDI channel 10); their `program` is kept as given but plays no part in the sound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DRUM_CHANNEL = 9
_FIELDS = ("pitch", "velocity", "program", "channel", "beat", "duration_beats")
_MELODIC_CHANNELS = tuple(c for c in range(16) if c != DRUM_CHANNEL)


def _int_field(d: dict[str, Any], name: str, lo: int, hi: int) -> int:
    value = d.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"note event: {name} must be an integer {lo}..{hi}, got {value!r}")
    return value


def _beat_field(d: dict[str, Any], name: str) -> float:
    value = d.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"note event: {name} must be a finite number >= 0 (beats), got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class NoteEvent:
    """One complete note: it is only ever emitted once its duration is known (no stuck notes)."""

    pitch: int
    velocity: int
    program: int
    channel: int
    beat: float
    duration_beats: float

    def __post_init__(self) -> None:
        raw = {"pitch": self.pitch, "velocity": self.velocity, "program": self.program, "channel": self.channel}
        _int_field(raw, "pitch", 0, 127)
        _int_field(raw, "velocity", 1, 127)
        _int_field(raw, "program", 0, 127)
        _int_field(raw, "channel", 0, 15)
        beats = {"beat": self.beat, "duration_beats": self.duration_beats}
        object.__setattr__(self, "beat", _beat_field(beats, "beat"))
        object.__setattr__(self, "duration_beats", _beat_field(beats, "duration_beats"))

    @property
    def is_drum(self) -> bool:
        return self.channel == DRUM_CHANNEL

    @property
    def end_beat(self) -> float:
        return self.beat + self.duration_beats

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "note",
            "pitch": self.pitch,
            "velocity": self.velocity,
            "program": self.program,
            "channel": self.channel,
            "beat": self.beat,
            "duration_beats": self.duration_beats,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NoteEvent:
        """Validate a client's note (ValueError with a message a person understands)."""
        if not isinstance(d, dict):
            raise ValueError(f"note event must be an object, got {type(d).__name__}")
        if d.get("type", "note") != "note":
            raise ValueError(f"note event: type must be 'note', got {d.get('type')!r}")
        return cls(**{name: d.get(name) for name in _FIELDS})


class ChannelMap:
    """Gives each General MIDI program its own MIDI channel, in order of first use; drums stay on 9.

    Tokens carry programs, not channels, so whoever turns tokens (or a file's tracks) into playable
    events needs one consistent assignment. More than 15 melodic programs share channels round-robin.
    """

    def __init__(self, assigned: dict[int, int] | None = None) -> None:
        self.assigned: dict[int, int] = dict(assigned or {})

    def channel(self, program: int, drum: bool) -> int:
        if drum:
            return DRUM_CHANNEL
        if program not in self.assigned:
            self.assigned[program] = _MELODIC_CHANNELS[len(self.assigned) % len(_MELODIC_CHANNELS)]
        return self.assigned[program]


@dataclass(frozen=True)
class NoteArrays:
    """The same notes as parallel numpy arrays: what corpus building moves around (no object per note)."""

    beat: np.ndarray  # (N,) float64
    duration: np.ndarray  # (N,) float64, beats
    pitch: np.ndarray  # (N,) int64
    velocity: np.ndarray  # (N,) int64
    program: np.ndarray  # (N,) int64, 0..127 (for drums: as given)
    drum: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.pitch)

    @classmethod
    def concatenate(cls, parts: list[NoteArrays]) -> NoteArrays:
        if not parts:
            return cls.from_events([])
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _ARRAY_FIELDS))

    @classmethod
    def from_events(cls, events: list[NoteEvent]) -> NoteArrays:
        return cls(
            beat=np.array([e.beat for e in events], dtype=np.float64),
            duration=np.array([e.duration_beats for e in events], dtype=np.float64),
            pitch=np.array([e.pitch for e in events], dtype=np.int64),
            velocity=np.array([e.velocity for e in events], dtype=np.int64),
            program=np.array([e.program for e in events], dtype=np.int64),
            drum=np.array([e.is_drum for e in events], dtype=bool),
        )

    def sorted(self) -> NoteArrays:
        """Order by onset, then drums before melodic programs, then program, then pitch."""
        return self.take(np.lexsort((self.pitch, np.where(self.drum, -1, self.program), self.beat)))

    def take(self, index: np.ndarray) -> NoteArrays:
        """The notes picked by an index or boolean mask."""
        return NoteArrays(*(getattr(self, f)[index] for f in _ARRAY_FIELDS))

    def to_events(self) -> list[NoteEvent]:
        channels = ChannelMap()
        return [
            NoteEvent(int(p), int(v), int(prog), channels.channel(int(prog), bool(d)), float(b), float(dur))
            for b, dur, p, v, prog, d in zip(
                self.beat, self.duration, self.pitch, self.velocity, self.program, self.drum, strict=True
            )
        ]


_ARRAY_FIELDS = ("beat", "duration", "pitch", "velocity", "program", "drum")
