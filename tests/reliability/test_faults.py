"""Faults: a failing model step ends only the sessions it served, a prompt the model fails to read fails only
its request, out-of-memory on admit answers 1013, and the server goes on serving everyone else (faults
injected in the real server: server/faults.py)."""

import asyncio
import base64

from tests.reliability.conftest import Stream, connect, serving, wait_for_sessions
from tests.server.conftest import midi_bytes


def test_a_failing_step_ends_only_the_sessions_in_that_tick_and_the_server_goes_on(tiny_checkpoint, tmp_path):
    # only the stream below steps the model, so the 30th step is one of its ticks
    with serving(tiny_checkpoint, tmp_path, inject_faults="step_error@30", max_sessions=2) as server:
        with server.client() as http:
            parked = http.post("/v1/sessions", json={"params": {"seed": 5}}).json()["session"]

        async def main():
            async with connect(server) as ws:
                hit = Stream(ws)
                await hit.send(type="start", params={"seed": 1}, realtime=False)
                await hit.expect("ready")
                error = await hit.expect("error")
                closed = await hit.closed()
            async with connect(server) as a, connect(server) as b:
                fresh, resumed = Stream(a), Stream(b)
                await fresh.send(type="start", params={"seed": 2}, realtime=False)
                await resumed.send(type="start", session=parked, realtime=False)
                return error, closed, await fresh.events(20), await resumed.events(20)

        error, (code, reason), fresh, resumed = asyncio.run(main())
        log = server.log_text()
    assert error["code"] == "internal" and "model failed" in error["message"]
    assert code == 1011 and "model failed" in reason
    assert len(fresh) == 20 and len(resumed) == 20  # a new stream and the parked session both go on
    assert "injected fault: the model step failed" in log and "ending the 1 session(s) it served" in log


def test_out_of_memory_on_admit_answers_1013_and_gives_the_slot_back(tiny_checkpoint, tmp_path):
    with serving(tiny_checkpoint, tmp_path, inject_faults="admit_oom@1,admit_oom@2", max_sessions=1) as server:

        async def main():
            async with connect(server) as ws:
                s = Stream(ws)
                await s.send(type="start")
                refused, closed = await s.expect("error"), await s.closed()
            with server.client() as http:
                rest = http.post("/v1/sessions", json={})
            async with connect(server) as ws:  # the one slot is free again
                s = Stream(ws)
                await s.send(type="start", realtime=False)
                return refused, closed, rest, await s.events(10)

        refused, (code, reason), rest, after = asyncio.run(main())
        wait_for_sessions(server, 0)
        assert server.health()["status"] == "ok"
    assert refused["code"] == "server_full" and code == 1013 and "out of memory" in reason
    assert rest.status_code == 503 and rest.json()["code"] == "server_full"
    assert len(after) == 10


def test_a_prompt_the_model_fails_to_read_fails_only_its_request_and_the_server_goes_on(tiny_checkpoint, tmp_path):
    # every session's first chunk is at least its bos: chunk 1 is `playing`, 2 the stream's prompt, 3 the clip's
    prompt = base64.b64encode(midi_bytes("Aicha.mid")).decode()
    with serving(tiny_checkpoint, tmp_path, inject_faults="prefill_error@2,prefill_error@3") as server:

        async def main():
            async with connect(server) as a, connect(server) as b:
                playing, hit = Stream(a), Stream(b)
                await playing.send(type="start", params={"seed": 1}, realtime=False)
                await playing.expect("ready")
                await playing.events(5)
                await hit.send(type="start", prompt=prompt)
                error = await hit.expect("error")
                with server.client() as http:
                    clip = http.post("/v1/generate", json={"prompt": prompt, "length_beats": 4})
                    clip_after = http.post("/v1/generate", json={"prompt": prompt, "length_beats": 4})
                await hit.send(type="start", prompt=prompt, realtime=False)  # the same connection tries again
                await hit.expect("ready")
                played = await playing.events(40)
                return error, clip, clip_after, played, playing.frames, await hit.events(10)

        error, clip, clip_after, played, frames, retried = asyncio.run(main())
        wait_for_sessions(server, 0)
        log = server.log_text()
    assert error["code"] == "internal" and "reading this session's input" in error["message"]
    assert clip.status_code == 500 and clip.json()["code"] == "internal"
    assert clip_after.status_code == 200 and len(played) == 40 and len(retried) == 10
    seqs = [f["seq"] for _, f in frames if f["type"] == "events"]
    assert seqs == list(range(len(seqs)))  # the stream beside the failures lost nothing
    assert log.count("injected fault: the model failed reading a prompt") == 2
    assert log.count("ending the 1 session(s) being read") == 2
