"""What comes in on a MIDI input: a person's notes (sent to the server as `notes`, so the model answers them)
and the DAW's MIDI clock (its tempo drives playback)."""

from __future__ import annotations

from collections.abc import Callable

from clients.timeline import ClockFollower
from sm1.events import NoteEvent

CLOCK, START, CONTINUE, STOP = 0xF8, 0xFA, 0xFB, 0xFC


class InputDispatch:
    """An rtmidi input callback: keeps the input's running time (the sum of the driver's deltas) and hands
    each message with it to every handler (one port may carry both a player's notes and MIDI clock)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.handlers: list[Callable[[list[int], float], None]] = []

    def __call__(self, message: list[int], delta: float) -> None:
        self.seconds += delta
        for handle in self.handlers:
            handle(message, self.seconds)


class PlayedNotes:
    """Pairs note-on with note-off into complete notes in beats of the stream's clock.

    The server only takes complete notes (a note's duration is part of its tokens), so a note is sent when
    it is released; it starts where the key went down. Programs follow the Program Change messages seen
    on each channel (0 until one arrives)."""

    def __init__(self, position: Callable[[], float], on_note: Callable[[NoteEvent], None]) -> None:
        self.position, self.on_note = position, on_note
        self._down: dict[tuple[int, int], tuple[float, int]] = {}  # (channel, pitch) -> (beat, velocity)
        self._programs: dict[int, int] = {}

    def message(self, msg: list[int]) -> None:
        if not msg:
            return
        kind, channel = msg[0] & 0xF0, msg[0] & 0x0F
        if kind == 0xC0 and len(msg) >= 2:
            self._programs[channel] = msg[1]
        elif kind == 0x90 and len(msg) >= 3 and msg[2] > 0:
            self._release(channel, msg[1])  # the same key struck again: the first note ends here
            self._down[(channel, msg[1])] = (self.position(), msg[2])
        elif kind == 0x80 or (kind == 0x90 and len(msg) >= 3 and msg[2] == 0):
            self._release(channel, msg[1])

    def _release(self, channel: int, pitch: int) -> None:
        down = self._down.pop((channel, pitch), None)
        if down is None:
            return
        beat, velocity = down
        end = self.position()
        program = self._programs.get(channel, 0)
        self.on_note(NoteEvent(pitch, velocity, program, channel, max(0.0, beat), max(0.0, end - beat)))


class TempoFromClock:
    """MIDI clock in, tempo changes out (`on_tempo(bpm)`). `seconds` are the input's running time."""

    def __init__(self, on_tempo: Callable[[float], None]) -> None:
        self.on_tempo = on_tempo
        self.follower = ClockFollower()

    def message(self, msg: list[int], seconds: float) -> None:
        if msg and msg[0] == CLOCK:
            tempo = self.follower.pulse(seconds)
            if tempo is not None:
                self.on_tempo(tempo)
        elif msg and msg[0] in (START, STOP, CONTINUE):
            self.follower.restart()
