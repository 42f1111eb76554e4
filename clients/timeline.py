"""Musical time on the bridge: the playback position in beats against the monotonic clock, and the DAW's
tempo read from MIDI clock (24 pulses per quarter note)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

PPQN = 24  # MIDI clock pulses per quarter note (one beat)


@dataclass(frozen=True)
class Timeline:
    """Beat `anchor_beat` plays at monotonic time `anchor_time` and the beats run at `tempo_bpm` from there.

    Immutable: a tempo change makes a new one anchored where the old one was at that moment, so a reader in
    another thread always sees one consistent mapping."""

    anchor_beat: float
    anchor_time: float
    tempo_bpm: float

    def beat_at(self, t: float) -> float:
        return self.anchor_beat + (t - self.anchor_time) * self.tempo_bpm / 60.0

    def time_of(self, beat: float) -> float:
        return self.anchor_time + (beat - self.anchor_beat) * 60.0 / self.tempo_bpm

    def with_tempo(self, tempo_bpm: float, now: float) -> Timeline:
        return Timeline(self.beat_at(now), now, tempo_bpm)

    def moved_to(self, beat: float, now: float) -> Timeline:
        return replace(self, anchor_beat=beat, anchor_time=now)


class ClockFollower:
    """The tempo of incoming MIDI clock pulses, averaged over the last beat of them.

    `pulse(t)` takes the pulse's time in seconds (the MIDI driver's timestamps are steadier than the moment
    Python sees the message) and returns a new tempo when it moved by more than `min_change` (relative),
    else None. A Start or Stop message (`restart()`) forgets the old pulses."""

    def __init__(self, min_change: float = 0.005, window: int = PPQN) -> None:
        self.min_change = min_change
        self.pulses: deque[float] = deque(maxlen=window + 1)
        self.tempo_bpm: float | None = None

    def restart(self) -> None:
        self.pulses.clear()

    def pulse(self, t: float) -> float | None:
        self.pulses.append(t)
        if len(self.pulses) < self.pulses.maxlen:
            return None
        span = self.pulses[-1] - self.pulses[0]
        if span <= 0:
            return None
        tempo = 60.0 * (len(self.pulses) - 1) / (PPQN * span)
        if self.tempo_bpm is not None and abs(tempo - self.tempo_bpm) <= self.min_change * self.tempo_bpm:
            return None
        self.tempo_bpm = tempo
        return tempo
