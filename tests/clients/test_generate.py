"""sm1-generate against the real server: a .mid of the requested length, from a clip or a recorded stream."""

from __future__ import annotations

import subprocess

import mido
import pytest

from tests.clients.conftest import SHARED_MIDI, free_port, reference_stream

PPQ_TOLERANCE_S = 0.01  # a tick or two at any tempo used here


def generate(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["sm1-generate", *args], capture_output=True, text=True, timeout=timeout)


def notes(path) -> list[tuple[int, int, float]]:
    """(channel, pitch, beat) of every note-on in the file."""
    mid = mido.MidiFile(path)
    ticks, out = 0, []
    for msg in mido.merge_tracks(mid.tracks):
        ticks += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            out.append((msg.channel, msg.note, round(ticks / mid.ticks_per_beat, 3)))
    return sorted(out)


def test_a_clip_of_two_bars_is_a_midi_file_two_bars_long(server, tmp_path):
    out = tmp_path / "clip.mid"
    run = generate(str(out), "--server", server.url, "--bars", "2", "--tempo", "90", "--seed", "4")
    assert run.returncode == 0, run.stderr
    assert mido.MidiFile(out).length == pytest.approx(2 * 4 * 60 / 90, abs=PPQ_TOLERANCE_S)
    assert notes(out), "the clip has no notes"
    assert f"wrote {out}" in run.stdout and "seed 4" in run.stdout
    assert "generating" in run.stderr  # the progress line


def test_the_same_seed_writes_the_same_clip_and_another_seed_another(server, tmp_path):
    paths = [tmp_path / f"{name}.mid" for name in ("a", "b", "c")]
    for path, seed in zip(paths, ("7", "7", "8"), strict=True):
        run = generate(str(path), "--server", server.url, "--beats", "12", "--seed", seed, "-q")
        assert run.returncode == 0, run.stderr
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert notes(paths[0]) != notes(paths[2])


def test_a_clip_continues_a_prompt_file_and_keeps_to_its_length(server, tmp_path):
    out = tmp_path / "continued.mid"
    prompt = SHARED_MIDI / "aria_classical.mid"
    run = generate(str(out), "--server", server.url, "--prompt", str(prompt), "--beats", "6", "--seed", "1", "-q")
    assert run.returncode == 0, run.stderr
    assert mido.MidiFile(out).length == pytest.approx(6 * 60 / 120, abs=PPQ_TOLERANCE_S)


@pytest.mark.parametrize("pace", ["--fast", None], ids=["fast", "realtime"])
def test_a_recorded_stream_is_the_streams_first_beats(server, tmp_path, pace):
    out = tmp_path / "stream.mid"
    args = [str(out), "--server", server.url, "--stream", "--beats", "16", "--tempo", "480", "--seed", "9", "-q"]
    run = generate(*args, *([pace] if pace else []))
    assert run.returncode == 0, run.stderr
    assert mido.MidiFile(out).length == pytest.approx(16 * 60 / 480, abs=PPQ_TOLERANCE_S)
    ref = reference_stream(server.url, {"params": {"seed": 9}}, 16)
    # one note per pitch, channel and onset: a pitch struck twice at once sounds (and is written) once
    assert notes(out) == sorted({(e["channel"], e["pitch"], round(e["beat"], 3)) for e in ref})


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line of error, got: {stderr!r}"
    return lines[0]


def test_no_server_is_one_clear_line_and_exit_status_1(tmp_path):
    for mode in ([], ["--stream"]):
        run = generate(str(tmp_path / "x.mid"), "--server", f"127.0.0.1:{free_port()}", "-q", *mode)
        assert run.returncode == 1
        assert "cannot reach" in one_line(run.stderr)
        assert not (tmp_path / "x.mid").exists()


def test_a_prompt_the_server_refuses_is_one_line_with_its_reason(server, tmp_path):
    bad = SHARED_MIDI / "bad" / "jazzsoft_test-not-a-midi-file.mid"
    for mode in ([], ["--stream"]):
        run = generate(str(tmp_path / "x.mid"), "--server", server.url, "--prompt", str(bad), "-q", *mode)
        assert run.returncode == 1
        line = one_line(run.stderr)
        assert "bad_prompt" in line and "not a MIDI file" in line


def test_command_line_mistakes_exit_with_status_2(server, tmp_path):
    missing = generate(str(tmp_path / "x.mid"), "--server", server.url, "--prompt", str(tmp_path / "nope.mid"), "-q")
    assert missing.returncode == 2 and "cannot read the prompt" in one_line(missing.stderr)
    no_folder = generate(str(tmp_path / "no" / "x.mid"), "--server", server.url, "-q")
    assert no_folder.returncode == 2 and "no such folder" in one_line(no_folder.stderr)
    assert generate(str(tmp_path / "x.mid"), "--bars", "0").returncode == 2
