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
    """The tempo of incoming MIDI clock pulses: a least-squares fit over the last two beats of them (the
    pulses' timestamps carry the MIDI driver's jitter, e.g. one JACK period; a fit over 48 pulses averages
    it out, where the first and last pulse alone would not).

    `pulse(t)` takes the pulse's time in seconds and returns a new tempo when it moved by more than
    `min_change` (relative), else None. A Start or Stop message (`restart()`), or a gap in the pulses
    (transport stopped), forgets the old pulses."""

    MAX_GAP_S = 0.25  # a pulse interval this long is below 10 BPM: the clock stopped, it did not slow down

    def __init__(self, min_change: float = 0.005, window: int = 2 * PPQN) -> None:
        self.min_change = min_change
        self.pulses: deque[float] = deque(maxlen=window)
        self.tempo_bpm: float | None = None

    def restart(self) -> None:
        self.pulses.clear()

    def pulse(self, t: float) -> float | None:
        if self.pulses and t - self.pulses[-1] > self.MAX_GAP_S:
            self.pulses.clear()
        self.pulses.append(t)
        n = len(self.pulses)
        if n < self.pulses.maxlen:
            return None
        mean_i, mean_t = (n - 1) / 2, sum(self.pulses) / n
        covariance = sum((i - mean_i) * (ti - mean_t) for i, ti in enumerate(self.pulses))
        seconds_per_pulse = covariance / (n * (n * n - 1) / 12)  # / sum((i - mean_i)^2)
        if seconds_per_pulse <= 0:
            return None
        tempo = 60.0 / (PPQN * seconds_per_pulse)
        if self.tempo_bpm is not None and abs(tempo - self.tempo_bpm) <= self.min_change * self.tempo_bpm:
            return None
        self.tempo_bpm = tempo
        return tempo
