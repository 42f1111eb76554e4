"""The WebSocket protocol fuzzed with hypothesis frames (valid and invalid JSON, wrong types, huge numbers,
unicode, binary): each gets an `error` or a documented close, never an internal error, and another client
keeps streaming, in order, all along."""

import itertools
import json
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from server.protocol import MESSAGE_TYPES

HUGE = st.one_of(st.integers(min_value=2**53), st.integers(max_value=-(2**53)), st.sampled_from([1e308, -1e308]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), HUGE, st.text(max_size=40))
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["beat", "tempo_bpm", "events", "temperature", "top_k", "top_p", "seed", "constraints", "prompt", "session"]
TYPED = st.fixed_dictionaries(
    {"type": st.sampled_from([*MESSAGE_TYPES, "", "START", "dance"]) | st.text(max_size=10) | JSON},
    optional={f: JSON for f in FIELDS},
)
# (raw frame, whether it cannot be a valid message and so must be answered with an error)
FRAMES = st.one_of(
    st.binary(max_size=200).map(lambda b: (b, True)),
    st.text(max_size=200).filter(lambda t: not t.strip().startswith("{")).map(lambda t: (t, True)),
    JSON.filter(lambda v: not isinstance(v, dict)).map(lambda v: (json.dumps(v), True)),
    TYPED.map(lambda d: (json.dumps(d), not isinstance(d["type"], str) or d["type"] not in MESSAGE_TYPES)),
)
DOCUMENTED_CLOSES = {1000, 1008, 1009}  # stop; policy; frame too large


class Listener(threading.Thread):
    """A well-behaved client streaming the whole time; keeps each `events` frame's seq and arrival time."""

    def __init__(self, ws: ClientConnection) -> None:
        super().__init__(daemon=True)
        self.ws = ws
        self.ws.send(json.dumps({"type": "start", "params": {"seed": 9}, "tempo_bpm": 1000}))
        self.seqs: list[tuple[float, int]] = []
        self.closed: ConnectionClosed | None = None

    def run(self) -> None:
        try:
            for raw in self.ws:
                frame = json.loads(raw)
                if frame["type"] == "events":
                    self.seqs.append((time.monotonic(), frame["seq"]))
        except ConnectionClosed as e:
            self.closed = e


@pytest.fixture(scope="module")
def listener(fuzz_server):
    with connect(fuzz_server.ws, max_size=None) as ws:
        listener = Listener(ws)
        listener.start()
        yield listener


def answers(url: str, frame: str | bytes) -> tuple[list[dict], int | None]:
    """Start a session, send `frame`, then a snapshot request as a probe: the frames up to the probe's answer
    (or the close), and the close code if the server closed."""
    with connect(url, max_size=None) as ws:
        ws.send(json.dumps({"type": "start"}))
        assert json.loads(ws.recv(10))["type"] == "ready"
        got = []
        try:
            ws.send(frame)
            ws.send(json.dumps({"type": "snapshot"}))
            while (reply := json.loads(ws.recv(10)))["type"] != "snapshot":
                got.append(reply)
        except ConnectionClosed as e:
            return got, e.rcvd.code if e.rcvd else None
        return got, None


@given(FRAMES)
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_frame_gets_an_error_or_a_documented_close_and_others_keep_streaming(fuzz_server, listener, case):
    frame, invalid = case
    got, closed = answers(fuzz_server.ws, frame)
    errors = [f for f in got if f["type"] == "error"]
    assert all(e["code"] != "internal" for e in errors), errors
    assert closed is None or closed in DOCUMENTED_CLOSES, (closed, got)
    if invalid:
        assert errors or closed, (frame, got)


def test_the_other_client_streamed_in_order_throughout(listener):
    """Runs after the fuzzing in this module (pytest keeps file order)."""
    fuzz_ended = time.monotonic()
    while listener.seqs[-1][0] < fuzz_ended:  # and it goes on after
        assert time.monotonic() < fuzz_ended + 5 and listener.closed is None
        time.sleep(0.05)
    seqs = [s for _, s in listener.seqs]
    assert len(seqs) >= 10 and seqs == list(range(len(seqs)))  # none lost, none out of order
    times = [t for t, _ in listener.seqs]
    assert max(b - a for a, b in itertools.pairwise(times)) < 2.0  # no stall while the fuzzer ran
