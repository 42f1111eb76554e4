"""Plays note events on a MIDI output at their wall-clock times.

One thread owns the output: it sleeps on a monotonic clock until the next message is due, then sends it.
Messages are kept by beat, not by time, so a tempo change moves everything still queued. Every note-on
is paired with its note-off; a note that restarts a pitch still sounding on its channel first ends the
earlier one (what a synthesizer would do), and the earlier note's own note-off is then skipped. `panic()`
ends every sounding note at once (exit, error, signal): nothing is ever left hanging in the DAW.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from clients.timeline import Timeline
from sm1.events import DRUM_CHANNEL, NoteEvent

log = logging.getLogger("sm1.bridge")

NOTE_ON, NOTE_OFF, CONTROL, PROGRAM = 0x90, 0x80, 0xB0, 0xC0
ALL_NOTES_OFF = 123
OFF, ON, OFF_AFTER_ON = 0, 1, 2  # at one beat a note ends before the next starts (unless it is that note)

Send = Callable[[list[int]], None]


@dataclass(order=True)
class _Due:
    beat: float
    kind: int
    seq: int
    note: NoteEvent = field(compare=False)
    note_id: int = field(compare=False)


@dataclass
class PlayStats:
    notes: int = 0  # note-ons sent
    late: int = 0  # arrived after their time had passed by more than `late_s`: skipped


class NoteScheduler:
    """Sends note events to `send` at the times `timeline` gives their beats.

    `late_s`: a note that arrives later than this after its due time is skipped rather than played late
    (after a reconnect, a burst of stale notes would sound like a glitch)."""

    def __init__(self, send: Send, timeline: Timeline, late_s: float = 0.05, rt_priority: int = 0) -> None:
        self._send = send
        self.rt_priority = rt_priority
        self._timeline = timeline
        self.late_s = late_s
        self.stats = PlayStats()
        self._queue: list[_Due] = []
        self._seq = itertools.count()
        self._sounding: dict[tuple[int, int], int] = {}  # (channel, pitch) -> note id
        self._programs: dict[int, int] = {}  # channel -> program last sent
        self._used_channels: set[int] = set()
        self._cond = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="sm1-scheduler", daemon=True)
        self._thread.start()

    # ---- the clock --------------------------------------------------------------------------------------
    @property
    def timeline(self) -> Timeline:
        return self._timeline

    def position(self, now: float | None = None) -> float:
        """The playback position in beats."""
        return self._timeline.beat_at(time.monotonic() if now is None else now)

    def move_to(self, beat: float, at: float) -> None:
        """Beat `beat` plays at monotonic time `at` (the stream's start)."""
        with self._cond:
            self._timeline = self._timeline.moved_to(beat, at)
            self._cond.notify()

    def set_tempo(self, tempo_bpm: float) -> None:
        with self._cond:
            self._timeline = self._timeline.with_tempo(tempo_bpm, time.monotonic())
            self._cond.notify()

    # ---- notes ------------------------------------------------------------------------------------------
    def add(self, events: list[NoteEvent]) -> None:
        now = time.monotonic()
        late = 0
        with self._cond:
            for ev in events:
                if self._timeline.time_of(ev.beat) < now - self.late_s:
                    late += 1
                    continue
                note_id = next(self._seq)
                heapq.heappush(self._queue, _Due(ev.beat, ON, note_id, ev, note_id))
                off = OFF if ev.duration_beats > 0 else OFF_AFTER_ON
                heapq.heappush(self._queue, _Due(ev.end_beat, off, next(self._seq), ev, note_id))
            self.stats.late += late
            self._cond.notify()
        if late:
            log.info("%d note(s) arrived after their time and were skipped", late)

    def panic(self) -> None:
        """Drop what is queued and end every note now: a note-off for each sounding note, then All Notes Off
        on every channel this scheduler has used."""
        with self._cond:
            self._queue.clear()
            for channel, pitch in list(self._sounding):
                self._send([NOTE_OFF | channel, pitch, 0])
            self._sounding.clear()
            for channel in sorted(self._used_channels):
                self._send([CONTROL | channel, ALL_NOTES_OFF, 0])
            self._cond.notify()

    def close(self) -> None:
        """panic(), then stop the thread."""
        self.panic()
        with self._cond:
            self._running = False
            self._cond.notify()
        self._thread.join(timeout=2.0)

    # ---- the thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        log.info("note scheduler: %s", _realtime(self.rt_priority))
        with self._cond:
            while self._running:
                if not self._queue:
                    self._cond.wait()
                    continue
                wait = self._timeline.time_of(self._queue[0].beat) - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                due = heapq.heappop(self._queue)
                try:
                    self._play(due)
                except Exception:  # a broken port must not kill the thread that ends notes
                    log.exception("MIDI output failed")

    def _play(self, due: _Due) -> None:
        ev = due.note
        key = (ev.channel, ev.pitch)
        if due.kind != ON:
            if self._sounding.get(key) == due.note_id:
                del self._sounding[key]
                self._send([NOTE_OFF | ev.channel, ev.pitch, 0])
            return
        if key in self._sounding:
            self._send([NOTE_OFF | ev.channel, ev.pitch, 0])
        if ev.channel != DRUM_CHANNEL and self._programs.get(ev.channel) != ev.program:
            self._programs[ev.channel] = ev.program
            self._send([PROGRAM | ev.channel, ev.program])
        self._used_channels.add(ev.channel)
        self._sounding[key] = due.note_id
        self._send([NOTE_ON | ev.channel, ev.pitch, ev.velocity])
        self.stats.notes += 1


def _realtime(priority: int) -> str:
    """Ask for realtime scheduling (SCHED_FIFO) for the calling thread, as audio software does: on a busy
    machine a normal thread can wake 10 ms late. Where it is not allowed, the thread runs as it is."""
    if priority <= 0:
        return "normal scheduling (realtime priority not asked for)"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (AttributeError, OSError) as e:  # not Linux, or not permitted (no CAP_SYS_NICE / rtprio limit)
        return f"normal scheduling (realtime priority refused: {e})"
    return f"realtime priority (SCHED_FIFO {priority})"
