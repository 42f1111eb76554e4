"""`sm1-bridge`: play an SM1 stream into a DAW through a MIDI port.

    sm1-bridge                                  # virtual output "SM1", server on 127.0.0.1:8000, 120 BPM
    sm1-bridge --tempo 96 --seed 7 --temperature 0.9 --prompt intro.mid
    sm1-bridge --input "Keystation" --clock-from "Keystation"   # the model answers what you play, at the DAW's tempo
    sm1-bridge --list                           # the MIDI ports there are

Notes are scheduled on the monotonic clock `--latency` ms behind the stream (the jitter buffer), the
playback position goes back to the server as `clock`, a dropped connection is resumed from the session's
snapshot, and every note still sounding is ended on exit, error or signal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from clients.cli import connection_args, prompt_b64, sampling_args, sampling_params
from clients.midi_input import InputDispatch, PlayedNotes, TempoFromClock
from clients.ports import PortError, api_names, list_ports, open_input, open_output
from clients.scheduler import NoteScheduler
from clients.stream import StreamClient, StreamRefused
from clients.timeline import Timeline
from sm1.events import NoteEvent

log = logging.getLogger("sm1.bridge")

NOTES_BATCH_S = 0.02  # notes played within this long go to the server in one message


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sm1-bridge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    connection_args(p)
    p.add_argument("--list", action="store_true", help="list the MIDI ports and exit")
    p.add_argument("--api", default="auto", choices=api_names(), help="MIDI API (default: the platform's own)")
    p.add_argument("--port", default="SM1", help="output port: the virtual port to create (default SM1)")
    p.add_argument(
        "--existing",
        action="store_true",
        help="open the existing output port named --port instead of creating one (always so on Windows)",
    )
    p.add_argument("--input", help="MIDI input whose notes are sent to the model (a keyboard, a DAW track)")
    p.add_argument("--clock-from", dest="clock_from", help="MIDI input whose clock (24 ppqn) sets the tempo")
    p.add_argument("--tempo", type=float, default=120.0, help="tempo in BPM until MIDI clock says otherwise")
    p.add_argument("--prompt", type=Path, help="a .mid file the stream continues")
    p.add_argument("--lookahead", type=float, help="beats the server writes ahead of playback (server default 2)")
    p.add_argument("--latency", type=float, default=100.0, help="jitter buffer: ms between receiving and playing")
    p.add_argument(
        "--rt-priority",
        type=int,
        default=20,
        dest="rt_priority",
        help="SCHED_FIFO priority of the note scheduler thread where allowed (0: normal scheduling)",
    )
    sampling_args(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log every reconnection detail")
    return p.parse_args(argv)


class Bridge:
    """The stream client, the scheduler and the inputs, wired together."""

    def __init__(self, args: argparse.Namespace, output: Any) -> None:
        self.args = args
        self.output = output
        self.latency_s = args.latency / 1000.0
        timeline = Timeline(0.0, time.monotonic() + self.latency_s, args.tempo)
        self.scheduler = NoteScheduler(output.send_message, timeline, rt_priority=args.rt_priority)
        self.inputs: list[Any] = []
        self._notes: asyncio.Queue[NoteEvent] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Future | None = None
        self.client = StreamClient(
            args.server,
            {
                "prompt": prompt_b64(args.prompt),
                "params": sampling_params(args),
                "tempo_bpm": args.tempo,
                "lookahead_beats": args.lookahead,
            },
            self.scheduler.add,
            on_ready=self._on_ready,
            on_status=lambda line: log.info("%s", line),
            position=lambda: (self.scheduler.position(), self.scheduler.timeline.tempo_bpm),
            api_key=args.api_key,
        )

    def _on_ready(self, ready: dict[str, Any], resumed: bool) -> None:
        if not resumed:  # the first `ready`: the stream's first beat plays one jitter buffer from now
            self.scheduler.move_to(float(ready.get("beat", 0.0)), time.monotonic() + self.latency_s)

    # ---- inputs (called on rtmidi's threads) -------------------------------------------------------------
    def open_inputs(self) -> None:
        args = self.args
        for name in dict.fromkeys(n for n in (args.input, args.clock_from) if n):  # one port may serve both
            dispatch = InputDispatch()
            if name == args.input:
                played = PlayedNotes(self.scheduler.position, self._played)
                dispatch.handlers.append(lambda msg, _t, played=played: played.message(msg))
            if name == args.clock_from:
                dispatch.handlers.append(TempoFromClock(self._tempo).message)
            port, what = open_input(name, dispatch, api=args.api, timing=name == args.clock_from)
            self.inputs.append(port)
            log.info("listening on %s", what)

    def _played(self, note: NoteEvent) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._notes.put_nowait, note)

    def _tempo(self, bpm: float) -> None:
        log.info("tempo from MIDI clock: %.2f BPM", bpm)
        self.scheduler.set_tempo(bpm)

    async def _forward_notes(self) -> None:
        while True:
            notes = [await self._notes.get()]
            await asyncio.sleep(NOTES_BATCH_S)
            while not self._notes.empty():
                notes.append(self._notes.get_nowait())
            if not await self.client.send({"type": "notes", "events": [n.to_json() for n in notes]}):
                log.info("not connected: %d played note(s) not sent", len(notes))

    # ---- running -------------------------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: Ctrl-C raises instead
                self._loop.add_signal_handler(sig, self._on_signal)
        forward = asyncio.create_task(self._forward_notes())
        try:
            await self.client.run()
        finally:
            forward.cancel()

    def _on_signal(self) -> None:
        self._stopping = asyncio.ensure_future(self.client.stop())

    def close(self) -> None:
        """All notes off, then close the ports."""
        self.scheduler.close()
        for port in self.inputs:
            port.close_port()
        self.output.close_port()
        s = self.scheduler.stats
        log.info("played %d notes (%d arrived too late and were skipped); all notes off", s.notes, s.late)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="sm1-bridge: %(message)s")
    sys.setswitchinterval(0.0005)  # the scheduler thread must get the GIL within a fraction of a millisecond
    try:
        if args.list:
            outputs, inputs = list_ports(args.api)
            print("MIDI outputs:", *(outputs or ["(none)"]), sep="\n  ")
            print("MIDI inputs:", *(inputs or ["(none)"]), sep="\n  ")
            return 0
        output, what = open_output(args.port, api=args.api, existing=args.existing)
    except PortError as e:
        print(f"sm1-bridge: {e}", file=sys.stderr)
        return 2
    if args.prompt is not None and not args.prompt.is_file():
        print(f"sm1-bridge: no such prompt file: {args.prompt}", file=sys.stderr)
        return 2
    log.info("playing into %s", what)
    bridge = Bridge(args, output)
    try:
        bridge.open_inputs()
        asyncio.run(bridge.run())
        return 0
    except PortError as e:
        log.error("%s", e)
        return 2
    except StreamRefused as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        bridge.close()


if __name__ == "__main__":
    sys.exit(main())
