"""`sm1-generate`: a clip from a running SM1 server into a .mid file.

    sm1-generate out.mid                                   # 4 bars of 4/4 at 120 BPM
    sm1-generate out.mid --prompt intro.mid --bars 8 --seed 7 --temperature 0.9
    sm1-generate out.mid --stream --beats 32               # record a live stream (as a listener hears it)
    sm1-generate out.mid --stream --fast --bars 16         # the same stream, as fast as the server writes

The whole clip comes from POST /v1/generate; --stream records /v1/stream instead. Errors are one line on
stderr and a non-zero exit (1: the server or the network, 2: the command line or a file).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from clients.cli import connection_args, prompt_b64, sampling_args, sampling_params
from clients.clip import clip_midi, fit
from clients.stream import Backoff, StreamClient, StreamRefused, auth_headers, base_urls, error_line
from sm1.events import NoteEvent

MAX_STREAM_TOKENS = 16_384  # a stream that never moves time on still ends


class Failed(Exception):
    """One line for the user; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sm1-generate", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", type=Path, help="the .mid file to write")
    connection_args(p)
    p.add_argument("--prompt", type=Path, help="a .mid file the clip continues")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--bars", type=float, help="length in bars (default 4)")
    length.add_argument("--beats", type=float, help="length in beats (quarter notes)")
    p.add_argument("--beats-per-bar", type=float, default=4.0, dest="beats_per_bar", help="for --bars (default 4)")
    p.add_argument("--tempo", type=float, default=120.0, help="tempo in BPM, written into the file (default 120)")
    p.add_argument("--program", type=int, help="General MIDI program (0-127) for every note (clips only)")
    sampling_args(p)
    p.add_argument("--stream", action="store_true", help="record the live stream (/v1/stream) instead")
    p.add_argument("--fast", action="store_true", help="with --stream: as fast as the server writes, not in real time")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    bars = args.bars if args.bars is not None else 4.0
    args.length_beats = args.beats if args.beats is not None else bars * args.beats_per_bar
    if args.length_beats <= 0:
        p.error("the length must be more than 0")
    if args.program is not None and args.stream:
        p.error("--program applies to clips; for a stream use constraints in the server's params")
    return args


def read_prompt(args: argparse.Namespace) -> str | None:
    try:
        return prompt_b64(args.prompt)
    except OSError as e:
        raise Failed(f"cannot read the prompt: {e}", 2) from e


# ---- the whole clip (REST) ----------------------------------------------------------------------------------
def generate_clip(args: argparse.Namespace) -> tuple[list[NoteEvent], dict[str, Any]]:
    http_url, _ = base_urls(args.server)
    body = {
        "prompt": read_prompt(args),
        "length_beats": args.length_beats,
        "tempo_bpm": args.tempo,
        "program": args.program,
        **(sampling_params(args) or {}),
        "format": "json",
    }
    body = {k: v for k, v in body.items() if v is not None}
    done = threading.Event()
    progress = threading.Thread(target=_elapsed, args=(done, args), daemon=True)
    progress.start()
    try:
        headers, timeout = auth_headers(args.api_key), httpx.Timeout(600, connect=5)
        r = httpx.post(f"{http_url}/v1/generate", json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise Failed(f"cannot reach {http_url} ({_cause(e)}): is sm1-server running there?") from e
    finally:
        done.set()
        progress.join()
    if r.status_code != 200:
        try:
            reason = error_line(r.json())
        except ValueError:
            reason = f"HTTP {r.status_code}: {r.text[:200]}"
        raise Failed(f"the server refused: {reason}")
    clip = r.json()
    return fit([NoteEvent.from_json(e) for e in clip["events"]], 0.0, args.length_beats), clip


def _elapsed(done: threading.Event, args: argparse.Namespace) -> None:
    """A progress line while the server writes the clip (REST gives no partial progress)."""
    desc = f"generating {args.length_beats:g} beats"
    with tqdm(desc=desc, bar_format="{desc}: {elapsed}", disable=args.quiet, leave=False) as bar:
        while not done.wait(0.25):
            bar.refresh()


# ---- a recorded stream ----------------------------------------------------------------------------------------
class Recorder:
    """Keeps the notes of a stream until `length_beats` past where it started are covered."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.length = args, args.length_beats
        self.start_beat: float | None = None
        self.started_at = 0.0
        self.events: list[NoteEvent] = []
        self.seed: int | None = None
        self.covered = False  # --fast: the length is written
        self.bar = tqdm(
            total=self.length,
            desc="recording",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:g} beats [{elapsed}]",
            disable=args.quiet,
            leave=False,
        )
        self.client = StreamClient(
            args.server,
            {
                "prompt": read_prompt(args),
                "params": sampling_params(args),
                "tempo_bpm": args.tempo,
                "realtime": not args.fast,
            },
            self.on_events,
            on_ready=self.on_ready,
            on_status=lambda line: logging.getLogger("sm1.generate").debug("%s", line),
            api_key=args.api_key,
            backoff=Backoff(attempts=3),
        )

    def on_ready(self, ready: dict[str, Any], resumed: bool) -> None:
        if self.start_beat is None:
            self.start_beat, self.started_at, self.seed = float(ready["beat"]), time.monotonic(), ready.get("seed")

    def on_events(self, events: list[NoteEvent]) -> None:
        self.events += events
        if self.args.fast:
            self._progress(max(e.beat for e in events) - self.start_beat)
        if any(e.beat >= self.start_beat + self.length for e in events):  # events come in beat order
            self.covered = True

    def _progress(self, beats: float) -> None:
        self.bar.update(max(0.0, min(self.length, beats) - self.bar.n))

    def _finished(self) -> bool:
        if self.start_beat is None:
            return False
        if self.args.fast:
            return self.covered or self.client.last_index >= MAX_STREAM_TOKENS
        played = (time.monotonic() - self.started_at) * self.args.tempo / 60.0
        self._progress(played)
        return played >= self.length  # every note starting before the end has arrived (the lookahead)

    async def run(self) -> None:
        stream = asyncio.create_task(self.client.run())
        try:
            while not stream.done() and not self._finished():
                await asyncio.wait({stream}, timeout=0.05)
            if not stream.done():
                await self.client.stop()
            await stream
        finally:
            self.bar.close()


def record_stream(args: argparse.Namespace) -> tuple[list[NoteEvent], dict[str, Any]]:
    recorder = Recorder(args)
    try:
        asyncio.run(recorder.run())
    except StreamRefused as e:
        raise Failed(str(e)) from e
    if recorder.start_beat is None:
        raise Failed("the stream ended before it started")
    # `ready.beat` is the playback position when the server answered: where the prompt ended plus the
    # moments since (a few microseconds of beats); a note at the stream's very start sits just before it
    start = min([recorder.start_beat, *(e.beat for e in recorder.events)])
    return fit(recorder.events, start, args.length_beats), {"seed": recorder.seed}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.out.parent and not args.out.parent.is_dir():
            raise Failed(f"no such folder: {args.out.parent}", 2)
        events, info = record_stream(args) if args.stream else generate_clip(args)
        data = clip_midi(events, args.length_beats, args.tempo)
        try:
            args.out.write_bytes(data)
        except OSError as e:
            raise Failed(f"cannot write {args.out}: {e}", 2) from e
    except Failed as e:
        print(f"sm1-generate: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("sm1-generate: interrupted; nothing written", file=sys.stderr)
        return 130
    seconds = args.length_beats * 60.0 / args.tempo
    print(
        f"wrote {args.out}: {len(events)} notes, {args.length_beats:g} beats ({seconds:.1f} s at {args.tempo:g} BPM), "
        f"seed {info.get('seed')}"
    )
    return 0


def _cause(e: httpx.HTTPError) -> str:
    text = str(e)
    return text.split("] ")[-1] if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
