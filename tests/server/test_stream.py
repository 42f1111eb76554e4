"""WebSocket /v1/stream against the real server: order, pace, params, notes, snapshot, fork, pause, reset."""

import asyncio
import base64
import itertools
import time

from server.settings import Settings
from tests.server.conftest import Stream, connect, midi_bytes

LEAD_S = Settings.model_fields["pacing_lead_s"].default  # the server starts an onset's notes this early
FIELDS = {"type", "pitch", "velocity", "program", "channel", "beat", "duration_beats"}


def well_formed(note: dict) -> bool:
    return (
        set(note) == FIELDS
        and note["type"] == "note"
        and 0 <= note["pitch"] <= 127
        and 1 <= note["velocity"] <= 127
        and 0 <= note["program"] <= 127
        and 0 <= note["channel"] <= 15
        and note["beat"] >= 0
        and note["duration_beats"] >= 0
    )


def test_a_stream_delivers_ordered_well_formed_events_at_the_right_pace(server):
    tempo, lookahead = 960.0, 2.0  # 16 beats a second: the random test model writes sparse notes

    async def main():
        async with connect(server) as ws:
            s = Stream(ws)
            await s.send(type="start", params={"seed": 1}, tempo_bpm=tempo, lookahead_beats=lookahead)
            ready = await s.expect("ready")
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3.0:
                await s.recv()
            await s.send(type="stop")
            await s.closed()
            return ready, t0, [(t, f) for t, f in s.frames if f["type"] == "events"]

    ready, t0, frames = asyncio.run(main())
    assert ready["model"] == "tiny" and ready["vocab_size"] == 443 and ready["state_bytes"] > 0
    assert [f["seq"] for _, f in frames] == list(range(len(frames)))
    assert all(a["token_index"] < b["token_index"] for (_, a), (_, b) in itertools.pairwise(frames))
    notes = [(t, n) for t, f in frames for n in f["events"]]
    assert len(notes) >= 10 and all(well_formed(n) for _, n in notes)
    beats = [n["beat"] for _, n in notes]
    assert beats == sorted(beats)
    for arrived, n in notes:
        due = t0 + (n["beat"] - ready["beat"]) * 60 / tempo
        assert arrived >= due - lookahead * 60 / tempo - LEAD_S - 0.05, "written further ahead than the lookahead"
        assert arrived <= max(due - lookahead * 60 / tempo, t0) + 0.5, "a note came late"


def test_params_change_mid_stream(server):
    async def main():
        async with connect(server) as ws:
            s = Stream(ws)
            await s.send(type="start", params={"seed": 2}, realtime=False)
            before = await s.events(30)
            await s.send(type="params", constraints={"pitch_min": 60, "pitch_max": 64, "drums": False})
            await s.events(2)  # a note half-written when the change arrives may still complete
            after = await s.events(30)
            return before, after

    before, after = asyncio.run(main())
    assert not all(60 <= n["pitch"] <= 64 and n["channel"] != 9 for n in before)
    assert all(60 <= n["pitch"] <= 64 and n["channel"] != 9 for n in after)


def frozen_start(seed: int, **more) -> dict:
    """A start whose clock all but stands still (1 bpm): the stream writes its lookahead and waits there,
    at a point that depends only on the seed."""
    return {"type": "start", "params": {"seed": seed}, "tempo_bpm": 1, "lookahead_beats": 4, **more}


async def until_quiet(s: Stream, quiet: float = 0.5) -> list[dict]:
    """Notes until the stream has written its lookahead and stops."""
    notes = []
    try:
        while True:
            notes += (await s.expect("events", timeout=quiet))["events"]
    except TimeoutError:
        return notes


def test_notes_from_the_client_change_what_follows(server):
    played = [{"type": "note", "pitch": 60 + i, "velocity": 90, "program": 0, "channel": 0, "beat": 0.0,
               "duration_beats": 0.5} for i in range(0, 12, 4)]  # fmt: skip

    async def run(with_notes: bool):
        async with connect(server) as ws:
            s = Stream(ws)
            await s.send(**frozen_start(3))
            ready = await s.expect("ready")
            first = await until_quiet(s)
            if with_notes:
                await s.send(type="notes", events=played)
            await s.send(type="clock", beat=ready["beat"] + 200)
            return first, await s.events(15)

    first_a, then_a = asyncio.run(run(with_notes=False))
    first_b, then_b = asyncio.run(run(with_notes=True))
    assert first_a == first_b  # same seed, same point
    assert then_a != then_b


def test_snapshot_then_restore_continues_exactly_as_the_original(server):
    async def frames_from(s: Stream, first_seq: int, n: int) -> dict[int, dict]:
        """`events` frames by seq, from first_seq on, until n of them."""
        got = {}
        while len(got) < n:
            frame = await s.expect("events")
            if frame["seq"] >= first_seq:
                got[frame["seq"]] = frame
        return got

    async def main():
        async with connect(server) as ws:
            s = Stream(ws)
            await s.send(type="start", params={"seed": 4, "temperature": 0.9}, realtime=False)
            await s.events(20)
            await s.send(type="snapshot")
            snap = await s.expect("snapshot")
            original = [f for _, f in s.frames if f["type"] == "events"]
            original += list((await frames_from(s, 0, 40)).values())
        with server.client() as http:
            created = http.post("/v1/sessions", json={"snapshot": snap["data"]})
        assert created.status_code == 201, created.text
        async with connect(server) as ws:
            s = Stream(ws)
            await s.send(type="start", session=created.json()["session"])
            ready = await s.expect("ready")
            restored = await frames_from(s, 0, 30)
        return snap, original, ready, restored

    snap, original, ready, restored = asyncio.run(main())
    assert base64.b64decode(snap["data"])[:7] == b"SM1SNAP" and snap["bytes"] > 0
    assert ready["token_index"] == snap["token_index"]
    by_seq = {f["seq"]: f for f in original}
    first = min(restored)
    assert by_seq[first - 1]["token_index"] < snap["token_index"] <= by_seq[first]["token_index"]
    assert [restored[q] for q in sorted(restored)] == [by_seq[q] for q in sorted(restored)]


def test_fork_gives_two_independent_sessions(server):
    with server.client() as http:
        parent = http.post("/v1/sessions", json={"params": {"seed": 5}, "realtime": False}).json()["session"]
        twin = http.post(f"/v1/sessions/{parent}/fork").json()["session"]
        other = http.post(f"/v1/sessions/{parent}/fork", json={"seed": 6}).json()["session"]

        async def stream(session: str, n: int, **params) -> list[dict]:
            async with connect(server) as ws:
                s = Stream(ws)
                await s.send(type="start", session=session)
                await s.expect("ready")
                if params:
                    await s.send(type="params", **params)
                return await s.events(n)

        async def main():
            return await asyncio.gather(stream(parent, 30), stream(twin, 30), stream(other, 30))

        a, b, c = asyncio.run(main())
        assert a == b and a != c
        assert http.delete(f"/v1/sessions/{twin}").status_code == 204
        more = asyncio.run(stream(parent, 5))
        assert len(more) == 5 and more[0]["beat"] >= a[-1]["beat"]
        assert http.get(f"/v1/sessions/{twin}/snapshot").status_code == 404


def test_pause_stops_the_stream_and_resume_goes_on(server):
    async def main():
        async with connect(server) as ws:
            s = Stream(ws)
            await s.send(type="start", params={"seed": 7}, realtime=False)
            await s.events(5)
            await s.send(type="pause")
            await until_quiet(s, quiet=0.3)  # what was in flight
            s.frames.clear()
            await asyncio.sleep(0.5)
            silent = len(await until_quiet(s, quiet=0.2)) == 0
            await s.send(type="resume")
            resumed = await s.events(5)
            return silent, resumed

    silent, resumed = asyncio.run(main())
    assert silent and len(resumed) == 5


def test_reset_plays_the_same_notes_again(server):
    async def main():
        async with connect(server) as ws:
            s = Stream(ws)
            await s.send(type="start", params={"seed": 8}, prompt=base64.b64encode(midi_bytes("Aicha.mid")).decode(),
                         realtime=False)  # fmt: skip
            await s.expect("ready")
            first = await s.events(20)
            await s.send(type="pause")
            await until_quiet(s, quiet=0.3)
            await s.send(type="reset")
            await s.send(type="resume")
            s.frames.clear()
            again = await s.events(20)
            return first, again, [f["seq"] for _, f in s.frames if f["type"] == "events"]

    first, again, seqs = asyncio.run(main())
    assert again == first
    assert seqs[0] > 0  # numbering never goes back, so a client sees the reset is not a loss


def test_ready_comes_once_a_long_prompt_is_read_so_the_first_notes_are_on_time(server):
    prompt = base64.b64encode(midi_bytes("Funkytown.mid")).decode()  # about 19,000 tokens to prefill

    async def main():
        async with connect(server) as ws:
            s = Stream(ws)
            await s.send(type="start", prompt=prompt, params={"seed": 12}, tempo_bpm=240, lookahead_beats=4)
            ready = await s.expect("ready")
            t_ready = time.monotonic()
            first = await s.expect("events")
            return t_ready, ready, time.monotonic(), first

    t_ready, ready, t_first, first = asyncio.run(main())
    assert ready["beat"] > 100  # the clock starts where the prompt ends
    assert first["events"][0]["beat"] >= ready["beat"]
    due = t_ready + (first["events"][0]["beat"] - ready["beat"] - 4) * 60 / 240
    assert t_first - max(due, t_ready) < 0.3, "the first notes waited for the prefill"


def test_frames_are_not_compressed_unless_the_server_is_told_to(server):
    """A client offers permessage-deflate (websockets does by default); the server declines it: compressing
    every small `events` frame costs more CPU than the bytes it saves on a stream (settings.ws_compression)."""

    async def main():
        async with connect(server) as ws:
            s = Stream(ws)
            await s.send(type="start", realtime=False)
            await s.events(5)
            return ws.request.headers.get("Sec-WebSocket-Extensions"), ws.response.headers.get(
                "Sec-WebSocket-Extensions"
            )

    offered, accepted = asyncio.run(main())
    assert offered and "permessage-deflate" in offered
    assert accepted is None
