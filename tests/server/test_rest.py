"""REST against the real server: clips as MIDI or JSON, the model, session lifecycle, health, metrics."""

import base64
import io

import mido

from tests.server.conftest import midi_bytes, start_server


def test_generate_returns_a_midi_file_that_mido_reads(server):
    with server.client() as http:
        r = http.post("/v1/generate", json={"seed": 1, "length_beats": 32, "tempo_bpm": 100})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/midi"
    assert r.headers["x-sm1-seed"] == "1"
    midi = mido.MidiFile(file=io.BytesIO(r.content))
    notes = [m for track in midi.tracks for m in track if m.type == "note_on" and m.velocity > 0]
    assert notes and midi.length > 0
    tempos = [m.tempo for track in midi.tracks for m in track if m.type == "set_tempo"]
    assert tempos == [mido.bpm2tempo(100)]


def test_the_same_seed_gives_the_same_clip(server):
    body = {"seed": 42, "temperature": 0.8, "top_k": 40, "length_beats": 24}
    with server.client() as http:
        a, b = http.post("/v1/generate", json=body), http.post("/v1/generate", json=body)
        c = http.post("/v1/generate", json=body | {"seed": 43})
    assert a.content == b.content and a.content != c.content


def test_a_clip_without_a_seed_reports_the_one_it_used(server):
    with server.client() as http:
        first = http.post("/v1/generate", json={"format": "json"}).json()
        again = http.post("/v1/generate", json={"format": "json", "seed": first["seed"]}).json()
    assert first["events"] == again["events"]


def test_json_events_by_accept_header_or_format_field(server):
    with server.client() as http:
        by_accept = http.post("/v1/generate", json={"seed": 3}, headers={"Accept": "application/json"})
        by_field = http.post("/v1/generate", json={"seed": 3, "format": "json"})
    assert by_accept.headers["content-type"] == "application/json"
    assert by_accept.json() == by_field.json()
    clip = by_field.json()
    assert clip["seed"] == 3 and clip["tokens"] > 0 and clip["model"] == "tiny"
    assert all(0 <= e["beat"] < 16 for e in clip["events"])  # default length: 16 beats from the prompt's end


def test_a_prompt_uploaded_as_a_file_or_sent_as_base64_gives_the_same_clip(server):
    mid = midi_bytes("Aicha.mid")
    with server.client() as http:
        uploaded = http.post(
            "/v1/generate",
            files={"prompt": ("aicha.mid", mid, "audio/midi")},
            data={"request": '{"seed": 9, "format": "json", "length_beats": 8}'},
        )
        b64 = base64.b64encode(mid).decode()
        inline = http.post("/v1/generate", json={"seed": 9, "format": "json", "length_beats": 8, "prompt": b64})
        plain = http.post("/v1/generate", json={"seed": 9, "format": "json", "length_beats": 8})
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json() == inline.json()
    assert uploaded.json()["events"] != plain.json()["events"]


def test_a_prompt_as_note_events_and_include_prompt(server):
    notes = [{"pitch": 60 + i, "velocity": 80, "program": 0, "channel": 0, "beat": i * 0.5, "duration_beats": 0.5}
             for i in range(8)]  # fmt: skip
    with server.client() as http:
        r = http.post("/v1/generate", json={"seed": 5, "format": "json", "prompt": notes, "include_prompt": True})
    events = r.json()["events"]
    assert [e["pitch"] for e in events[:8]] == [60 + i for i in range(8)]


def test_generate_on_one_program_plays_only_that_program(server):
    with server.client() as http:
        clip = http.post("/v1/generate", json={"seed": 6, "format": "json", "program": 33, "length_beats": 64}).json()
    assert clip["events"] and {e["program"] for e in clip["events"]} == {33}
    assert not any(e["channel"] == 9 for e in clip["events"])


def test_model_reports_its_size_and_state_floats(server):
    with server.client() as http:
        m = http.get("/v1/model").json()
    assert m["name"] == "tiny" and m["architecture"] == "sm1" and m["vocab_size"] == 443
    assert m["state_floats"] == {"ssm": 2 * 64 * 1, "conv": 2 * 64 * 3, "total": 2 * 64 * 4}
    assert m["state_bytes"] == 4 * m["state_floats"]["total"] and m["device"] == "cpu" and m["params"] > 0


def test_a_bfloat16_server_says_so_and_repeats_a_seeded_clip(server, tiny_checkpoint, tmp_path):
    bf16 = start_server(tiny_checkpoint, tmp_path / "server.log", weights_dtype="bfloat16")
    try:
        body = {"seed": 42, "temperature": 0.8, "length_beats": 24, "format": "json"}
        with bf16.client() as http, server.client() as fp32:
            m, m32 = http.get("/v1/model").json(), fp32.get("/v1/model").json()
            a, b = http.post("/v1/generate", json=body).json(), http.post("/v1/generate", json=body).json()
    finally:
        bf16.stop()
    assert m["dtype"] == "bfloat16" and m32["dtype"] == "float32"
    assert m["model_id"] != m32["model_id"]  # other numerics: snapshots do not cross between the two
    assert m["state_bytes"] == 4 * m["state_floats"]["ssm"] + 2 * m["state_floats"]["conv"]  # ssm stays fp32
    assert a["events"] and a["events"] == b["events"]


def test_session_lifecycle_create_snapshot_fork_delete(server):
    with server.client() as http:
        created = http.post("/v1/sessions", json={"params": {"seed": 11}, "tempo_bpm": 90})
        assert created.status_code == 201
        info = created.json()
        sid = info["session"]
        assert info["seed"] == 11 and info["tempo_bpm"] == 90 and info["token_index"] == 0
        snap = http.get(f"/v1/sessions/{sid}/snapshot")
        assert snap.headers["content-type"] == "application/octet-stream" and snap.content[:7] == b"SM1SNAP"
        restored = http.post("/v1/sessions", content=snap.content, headers={"Content-Type": "application/octet-stream"})
        assert restored.status_code == 201 and restored.json()["seed"] == 11
        fork = http.post(f"/v1/sessions/{sid}/fork", json={"seed": 12})
        assert fork.status_code == 201 and fork.json()["seed"] == 12
        for s in (sid, restored.json()["session"], fork.json()["session"]):
            assert http.delete(f"/v1/sessions/{s}").status_code == 204
        gone = http.get(f"/v1/sessions/{sid}/snapshot")
    assert gone.status_code == 404 and gone.json()["code"] == "unknown_session"


def test_metrics_and_health(server):
    with server.client() as http:
        http.post("/v1/generate", json={"seed": 1})
        text = http.get("/metrics").text
        health = http.get("/healthz").json()
    for name in ("sm1_sessions", "sm1_tokens_total", "sm1_tokens_per_second", "sm1_tick_seconds_bucket",
                 "sm1_tick_batch_size_bucket", "sm1_event_lateness_seconds_bucket", "sm1_errors_total"):  # fmt: skip
        assert name in text
    assert health["status"] == "ok" and health["capacity"] == 256 and health["tick_ms"]["n"] > 0


def test_openapi_documents_the_routes(server):
    with server.client() as http:
        paths = http.get("/openapi.json").json()["paths"]
    sessions = ["/v1/sessions", "/v1/sessions/{session_id}/snapshot", "/v1/sessions/{session_id}/fork"]
    assert {"/v1/generate", "/v1/model", *sessions, "/v1/sessions/{session_id}", "/healthz", "/metrics"} <= set(paths)
