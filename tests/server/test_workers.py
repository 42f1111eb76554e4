"""`sm1-server --workers 2`: two server processes on one port. Whichever worker a connection reaches, a
session's REST calls and a stream that attaches to it reach the worker that holds it; /healthz and /metrics
sum both; a worker that dies is started again; SIGTERM drains every worker's streams."""

import asyncio
import os
import re
import signal
import time

import httpx
import pytest

from tests.server.conftest import Stream, connect, start_server

WORKERS = 2


@pytest.fixture(scope="module")
def workers(tiny_checkpoint, tmp_path_factory):
    s = start_server(tiny_checkpoint, tmp_path_factory.mktemp("workers") / "server.log", workers=WORKERS)
    yield s
    s.stop()


def sessions_on_every_worker(server, per_worker: int = 1, **body) -> dict[int, list[str]]:
    """REST sessions, each made over a new connection, until every worker holds `per_worker` of them."""
    made: dict[int, list[str]] = {i: [] for i in range(WORKERS)}
    for _ in range(100):
        reply = httpx.post(f"{server.http}/v1/sessions", json=body, timeout=30)
        assert reply.status_code == 201
        sid = reply.json()["session"]
        owner = int(re.fullmatch(r"w(\d+)\.[\w-]+", sid).group(1))
        assert reply.headers["X-SM1-Worker"] == str(owner)
        if len(made[owner]) == per_worker:  # enough on this one
            assert httpx.delete(f"{server.http}/v1/sessions/{sid}", timeout=30).status_code == 204
            continue
        made[owner].append(sid)
        if all(len(ids) == per_worker for ids in made.values()):
            return made
    raise AssertionError(f"new connections never reached every worker: {made}")


def test_a_session_answers_through_whichever_worker_a_call_reaches(workers):
    made = sessions_on_every_worker(workers, params={"seed": 5})
    for owner, (sid,) in made.items():
        passed_on = set()
        for _ in range(12):  # new connections: the kernel picks a worker for each
            snap = httpx.get(f"{workers.http}/v1/sessions/{sid}/snapshot", timeout=30)
            assert snap.status_code == 200 and snap.content[:7] == b"SM1SNAP"
            assert snap.headers["X-SM1-Worker"] == str(owner)  # the owner answered
            passed_on.add(snap.headers.get("X-SM1-Forwarded-By"))
        assert str(1 - owner) in passed_on, "no call reached the other worker"
        fork = httpx.post(f"{workers.http}/v1/sessions/{sid}/fork", json={"seed": 6}, timeout=30)
        assert fork.status_code == 201 and fork.json()["session"].startswith(f"w{owner}.")
        for gone in (fork.json()["session"], sid):
            assert httpx.delete(f"{workers.http}/v1/sessions/{gone}", timeout=30).status_code == 204
        for _ in range(4):
            missing = httpx.get(f"{workers.http}/v1/sessions/{sid}/snapshot", timeout=30)
            assert missing.status_code == 404 and missing.json()["code"] == "unknown_session"
    bogus = httpx.delete(f"{workers.http}/v1/sessions/w7.nope", timeout=30)
    assert bogus.status_code == 404 and bogus.json()["code"] == "unknown_session"


def test_a_stream_attaches_to_a_session_another_worker_holds(workers):
    """Attached from both workers' connections, the same seeded session writes the same notes: the owner
    writes them, whichever worker relays."""
    note = {"velocity": 90, "program": 0, "channel": 0, "duration_beats": 1}
    prompt = [{"pitch": 60, "beat": 0, **note}, {"pitch": 64, "beat": 1, **note}]
    made = sessions_on_every_worker(workers, per_worker=6, params={"seed": 9}, realtime=False, prompt=prompt)

    async def stream(sid: str) -> list[dict]:
        async with connect(workers) as ws:
            s = Stream(ws)
            await s.send(type="start", session=sid)
            ready = await s.expect("ready")
            assert ready["session"] == sid
            return await s.events(12)

    async def main() -> dict[int, list[list[dict]]]:
        return {owner: [await stream(sid) for sid in ids] for owner, ids in made.items()}

    notes = asyncio.run(main())
    first = notes[0][0]
    assert len(first) == 12 and all(n["type"] == "note" for n in first)
    assert all(got == first for runs in notes.values() for got in runs)
    relayed = set(re.findall(r"relayed to worker (\d+)", workers.log_text()))
    assert relayed, "no stream reached a worker other than its session's"
    for ids in made.values():
        for sid in ids:
            httpx.delete(f"{workers.http}/v1/sessions/{sid}", timeout=30)


def test_a_relayed_stream_passes_on_errors_params_and_the_close(workers):
    """Bad frames, a params change and `stop` on a stream another worker holds: the owner answers each, and
    its close code reaches the client."""
    made = sessions_on_every_worker(workers, per_worker=6, params={"seed": 3}, realtime=False)
    relayed_before = workers.log_text().count("relayed to worker")

    async def main() -> list[tuple]:
        seen = []
        for ids in made.values():
            for sid in ids:
                async with connect(workers) as ws:
                    s = Stream(ws)
                    await s.send(type="start", session=sid)
                    await s.expect("ready")
                    metrics = await asyncio.to_thread(httpx.get, f"{workers.http}/metrics", timeout=30)
                    open_now = re.search(r"^sm1_stream_connections\s+(\S+)$", metrics.text, re.M).group(1)
                    await ws.send("{not json")
                    bad = await s.expect("error")
                    await s.send(type="dance")
                    unknown = await s.expect("error")
                    await s.send(type="params", temperature=0.5)
                    await s.events(2)
                    await s.send(type="stop")
                    end = await s.expect("end")
                    seen.append((bad["code"], unknown["code"], end["reason"], await s.closed(), open_now))
        return seen

    seen = asyncio.run(main())
    assert set(seen) == {("bad_json", "unknown_type", "stopped", (1000, "stopped"), "1.0")}  # relays not counted twice
    assert workers.log_text().count("relayed to worker") > relayed_before  # 12 streams: not all to their owner
    for ids in made.values():
        for sid in ids:
            assert httpx.delete(f"{workers.http}/v1/sessions/{sid}", timeout=30).status_code == 204


def test_health_and_metrics_add_up_the_workers(workers):
    made = sessions_on_every_worker(workers, per_worker=2)
    for _ in range(4):
        health = httpx.get(f"{workers.http}/healthz", timeout=30).json()
        assert health["status"] == "ok" and health["sessions"] == 2 * WORKERS
        assert health["capacity"] == WORKERS * 256 and [w["worker"] for w in health["workers"]] == [0, 1]
        assert [w["sessions"] for w in health["workers"]] == [2, 2]
        metrics = httpx.get(f"{workers.http}/metrics", timeout=30).text
        assert re.search(r"^sm1_sessions\s+4\.0$", metrics, re.M), metrics
    for ids in made.values():
        for sid in ids:
            assert httpx.delete(f"{workers.http}/v1/sessions/{sid}", timeout=30).status_code == 204


def test_a_dead_worker_is_started_again_and_sigterm_drains_every_worker(tiny_checkpoint, tmp_path):
    server = start_server(tiny_checkpoint, tmp_path / "server.log", workers=WORKERS)
    try:
        made = sessions_on_every_worker(server)
        survivor, lost = made[0][0], made[1][0]
        victim = _health(server)["workers"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        answers = set()
        while "worker 1 exited with -9" not in server.log_text() or _health(server).get("status") != "ok":
            assert time.monotonic() < deadline, server.log_text()
            gone = httpx.get(f"{server.http}/v1/sessions/{lost}/snapshot", timeout=30)  # dead, then restarted
            answers.add((gone.status_code, gone.json()["code"]))
        assert answers == {(404, "unknown_session")}
        assert httpx.get(f"{server.http}/v1/sessions/{survivor}/snapshot", timeout=30).status_code == 200

        async def attach_lost() -> dict:
            async with connect(server) as ws:
                s = Stream(ws)
                await s.send(type="start", session=lost)
                return await s.expect("error")

        assert asyncio.run(attach_lost())["code"] == "unknown_session"

        async def main():
            streams = []
            while {s.ready["session"][:3] for s in streams} != {"w0.", "w1."}:  # a stream on each worker
                s = Stream(await connect(server))
                await s.send(type="start", params={"seed": len(streams)}, realtime=False)
                s.ready = await s.expect("ready")
                await s.events(3)
                streams.append(s)
            server.process.send_signal(signal.SIGTERM)
            return [await s.expect("end") for s in streams], [await s.closed() for s in streams]

        ends, closes = asyncio.run(main())
        assert {e["reason"] for e in ends} == {"server shutting down"}
        assert set(closes) == {(1001, "server shutting down")}
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.http}/healthz", timeout=2)


def _health(server) -> dict:
    try:
        return httpx.get(f"{server.http}/healthz", timeout=5).json()
    except httpx.HTTPError:
        return {}

