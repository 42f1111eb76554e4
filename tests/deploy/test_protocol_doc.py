"""docs/protocol.md agrees with a live server: every client message type its table lists, sent as its
examples show, is accepted (no `error` frame), and `stop` ends the stream as documented.
(tests/server/test_protocol_doc.py checks that the doc names every type, field and code the code has.)"""

from __future__ import annotations

import asyncio
import base64
import json
import re

import websockets

from server.protocol import MESSAGE_TYPES
from sm1.events import NoteEvent
from sm1.midi import write_midi
from tests.deploy.conftest import REPO

DOC = (REPO / "docs/protocol.md").read_text()


def client_section() -> str:
    start = DOC.index("### Client -> server")
    return DOC[start : DOC.index("\n### ", start + 1)]


def documented_types() -> list[str]:
    return re.findall(r"^\| `(\w+)` \|", client_section(), re.M)


def documented_examples() -> dict[str, dict]:
    """The JSON lines of the section, by type; an elided prompt ("...") becomes a real MIDI file."""
    examples = {}
    for block in re.findall(r"```json\n(.*?)```", client_section(), re.S):
        for line in block.splitlines():
            message = json.loads(line)
            if str(message.get("prompt", "")).endswith("..."):
                midi = write_midi([NoteEvent(60 + i, 90, 0, 0, float(i), 1.0) for i in range(4)])
                message["prompt"] = base64.b64encode(midi).decode()
            examples[message["type"]] = message
    return examples


async def answers_until_snapshot(ws) -> list[dict]:
    """Frames up to the answer of a `snapshot` sent as a marker (the server handles a connection's
    messages in order, so an error for the message before it arrives first)."""
    await ws.send(json.dumps({"type": "snapshot"}))
    frames = []
    while not frames or frames[-1]["type"] != "snapshot":
        frames.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=30)))
    return frames


def test_the_doc_lists_exactly_the_message_types_the_server_has():
    assert sorted(documented_types()) == sorted(MESSAGE_TYPES)


def test_every_documented_client_message_is_accepted_by_the_server(live_server):
    examples = documented_examples()
    assert {"start", "params", "notes", "clock"} <= examples.keys()

    async def session() -> dict[str, list[dict]]:
        rejected = {}
        async with websockets.connect(f"ws://127.0.0.1:{live_server}/v1/stream") as ws:
            await ws.send(json.dumps(examples["start"]))
            ready = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
            assert ready["type"] == "ready", ready
            for kind in documented_types():
                if kind in ("start", "stop"):
                    continue
                await ws.send(json.dumps(examples.get(kind, {"type": kind})))
                errors = [f for f in await answers_until_snapshot(ws) if f["type"] == "error"]
                if errors:
                    rejected[kind] = errors
            await ws.send(json.dumps({"type": "stop"}))
            frames = [json.loads(f) async for f in ws]
            assert frames[-1] == {"type": "end", "reason": "stopped"}
            assert ws.close_code == 1000
        return rejected

    assert asyncio.run(session()) == {}
