"""How far ahead a stream is written: the playback clock, the lookahead, and when tokens are wanted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Pacing:
    """Keeps a stream's written horizon `lookahead_beats` ahead of its playback position, and no further.

    The playback position runs at `tempo_bpm` from an anchor (start, resume, or the client's own clock
    report); `realtime=False` means as fast as possible. Times are monotonic seconds. `lead_s` is the
    writer's own margin: the notes of one onset take a few tokens each, one per tick, so writing starts
    that much earlier for them to be complete when the window reaches them.
    """

    tempo_bpm: float = 120.0
    lookahead_beats: float = 2.0
    realtime: bool = True
    lead_s: float = 0.0
    anchor_beat: float = 0.0
    anchor_time: float = 0.0
    paused: bool = False

    def anchor(self, beat: float, now: float) -> None:
        self.anchor_beat, self.anchor_time = beat, now

    def position(self, now: float) -> float:
        """Playback position in beats."""
        if self.paused:
            return self.anchor_beat
        return self.anchor_beat + (now - self.anchor_time) * self.tempo_bpm / 60.0

    def pause(self, now: float) -> None:
        if not self.paused:
            self.anchor(self.position(now), now)
            self.paused = True

    def resume(self, now: float) -> None:
        if self.paused:
            self.anchor(self.anchor_beat, now)
            self.paused = False

    def set_tempo(self, tempo_bpm: float, now: float) -> None:
        self.anchor(self.position(now), now)
        self.tempo_bpm = tempo_bpm

    def wants_tokens(self, horizon: float, now: float) -> bool:
        if self.paused:
            return False
        return not self.realtime or horizon < self.position(now) + self._ahead()

    def seconds_until_wanted(self, horizon: float, now: float) -> float | None:
        """How long until `wants_tokens` turns true with no new input (None: not by the clock alone)."""
        if self.paused or not self.realtime:
            return None
        return max(0.0, (horizon - self._ahead() - self.position(now)) * 60.0 / self.tempo_bpm)

    def _ahead(self) -> float:
        return self.lookahead_beats + self.lead_s * self.tempo_bpm / 60.0

    def deadline(self, beat: float) -> float:
        """When a note at `beat` should leave the server: its due time minus the lookahead, but never
        before the anchor (a burst after start, resume or a jump of the clock is not lateness)."""
        due = self.anchor_time + (beat - self.lookahead_beats - self.anchor_beat) * 60.0 / self.tempo_bpm
        return max(due, self.anchor_time)

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "tempo_bpm": self.tempo_bpm,
            "lookahead_beats": self.lookahead_beats,
            "realtime": self.realtime,
            "beat": self.position(now),
            "paused": self.paused,
        }
