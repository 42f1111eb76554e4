"""The browser client served at `/`, in Debian's headless Chromium driven by Playwright (no browser download),
against the real server on loopback."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import mido
import pytest

from tests.clients.conftest import SHARED_MIDI, ServerProcess, reference_stream

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev extra: pip install -e '.[dev]'")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SLOTS = 4  # the page server's session slots: a test fills them all


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (`bash scripts/dev.sh test` installs it)")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page_server(tiny_checkpoint, output_dir):
    srv = ServerProcess(tiny_checkpoint, output_dir, "--max-sessions", str(SLOTS)).start()
    yield srv
    srv.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 720}, accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"the page threw: {errors}"


def set_control(page, control: str, value: float) -> None:
    """Move a slider or type a number as a person would (input while moving, change when let go)."""
    page.evaluate(
        """([id, v]) => { const el = document.getElementById(id); el.value = v;
           el.dispatchEvent(new Event("input")); el.dispatchEvent(new Event("change")); }""",
        [control, str(value)],
    )


def start(page, server: ServerProcess, seed: int | None = None, tempo: float = 240) -> None:
    page.goto(server.url + "/")
    set_control(page, "tempo", tempo)
    if seed is not None:
        page.fill("#seed", str(seed))
    page.click("#start")
    page.wait_for_function("window.sm1.state.phase === 'playing'", timeout=15_000)


def played(page) -> list[tuple[int, int, int, float]]:
    notes = page.evaluate("window.sm1.player.played.map(e => [e.channel, e.pitch, e.velocity, e.beat])")
    return [tuple(n) for n in notes]


def note_pixels(page) -> int:
    """Pixels of the piano roll in a note's colour (the background and grid are near-black greys)."""
    return page.evaluate(
        """() => { const c = document.getElementById("roll");
           const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data; let n = 0;
           for (let i = 0; i < d.length; i += 4) if (Math.max(d[i], d[i + 1], d[i + 2]) > 90) n++;
           return n; }"""
    )


def test_the_page_connects_and_the_notes_appear_on_the_piano_roll(page, page_server, output_dir):
    start(page, page_server, seed=3)
    assert "playing" in page.inner_text("#status")
    page.wait_for_function("window.sm1.roll.drawn >= 5 && window.sm1.player.played.length >= 5", timeout=20_000)
    assert note_pixels(page) > 500
    page.screenshot(path=str(output_dir / "page.png"))
    assert page.is_hidden("#message")
    # the seed set on the page is the stream's seed: the same notes as a stream started with it elsewhere
    notes = played(page)
    ref = reference_stream(page_server.url, {"params": {"seed": 3}}, notes[-1][3] + 1)
    assert notes == [(e["channel"], e["pitch"], e["velocity"], e["beat"]) for e in ref[: len(notes)]]


def test_pause_holds_the_stream_and_resume_goes_on(page, page_server):
    start(page, page_server, seed=4, tempo=300)
    page.wait_for_function("window.sm1.state.received >= 3", timeout=20_000)
    page.click("#pause")
    assert page.inner_text("#pause") == "Resume"
    time.sleep(0.5)  # frames already on their way arrive
    held = page.evaluate("[window.sm1.state.received, window.sm1.player.position()]")
    time.sleep(2.0)  # 10 beats at 300 BPM: a running stream would have sent notes
    assert page.evaluate("[window.sm1.state.received, window.sm1.player.position()]") == held
    page.click("#pause")
    page.wait_for_function(f"window.sm1.state.received > {held[0]}", timeout=20_000)
    assert page.evaluate("window.sm1.player.position()") > held[1]


def test_the_tempo_control_changes_how_fast_the_stream_plays(page, page_server):
    start(page, page_server, tempo=60)

    def beats_per_second() -> float:
        b0, t0 = page.evaluate("[window.sm1.player.position(), performance.now()]")
        time.sleep(1.0)
        b1, t1 = page.evaluate("[window.sm1.player.position(), performance.now()]")
        return (b1 - b0) / ((t1 - t0) / 1000)

    assert beats_per_second() == pytest.approx(1.0, rel=0.15)
    set_control(page, "tempo", 240)
    assert beats_per_second() == pytest.approx(4.0, rel=0.15)
    received = page.evaluate("window.sm1.state.received")
    page.wait_for_function(f"window.sm1.state.received > {received}", timeout=20_000)  # the server keeps up


def test_a_new_temperature_changes_what_the_model_writes(page, page_server):
    start(page, page_server, seed=6, tempo=300)
    page.wait_for_function("window.sm1.state.received >= 2", timeout=20_000)
    set_control(page, "temperature", 2.0)  # another distribution: another stream from here on
    page.wait_for_function("window.sm1.state.received >= 12", timeout=30_000)
    notes = played(page)
    ref = reference_stream(page_server.url, {"params": {"seed": 6}}, notes[-1][3] + 1)
    same = [(e["channel"], e["pitch"], e["velocity"], e["beat"]) for e in ref[: len(notes)]]
    assert notes[:2] == same[:2], "the notes before the change come from the seed"
    assert notes != same, "the stream went on as if the temperature had not changed"


def test_stop_ends_the_stream_and_the_download_is_what_was_played(page, page_server, tmp_path):
    start(page, page_server, seed=8, tempo=300)
    page.wait_for_function("window.sm1.player.played.filter(e => e.beat <= window.sm1.player.position()).length >= 6",
                           timeout=30_000)  # fmt: skip
    page.click("#stop")
    page.wait_for_function("window.sm1.state.phase === 'stopped'", timeout=10_000)
    assert page.is_hidden("#message")
    heard = page.evaluate(
        """() => { const p = window.sm1.player, now = p.position();
           return p.played.filter(e => e.beat <= now).map(e => [e.pitch, e.beat - window.sm1.state.startBeat]); }"""
    )
    with page.expect_download() as download:
        page.click("#download")
    path = tmp_path / "played.mid"
    download.value.save_as(path)
    mid = mido.MidiFile(path)
    ticks, ons = 0, []
    for msg in mido.merge_tracks(mid.tracks):
        ticks += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            ons.append((msg.note, ticks / mid.ticks_per_beat))
    assert sorted(ons) == sorted((p, pytest.approx(b, abs=1 / 480)) for p, b in heard)


def test_a_prompt_the_server_cannot_read_is_refused_with_its_reason(page, page_server):
    page.goto(page_server.url + "/")
    page.set_input_files("#prompt", str(SHARED_MIDI / "bad" / "jazzsoft_test-not-a-midi-file.mid"))
    page.click("#start")
    page.wait_for_selector("#message:not([hidden])", timeout=15_000)
    text = page.inner_text("#message")
    assert "refused" in text and "bad_prompt" in text and "not a MIDI file" in text
    assert page.evaluate("window.sm1.state.phase") != "playing"


def test_a_full_server_says_so(page, page_server, output_dir):
    from websockets.sync.client import connect

    url = page_server.url.replace("http://", "ws://") + "/v1/stream"
    with contextlib.ExitStack() as held:  # every slot taken by another client
        for _ in range(SLOTS):
            ws = held.enter_context(connect(url))
            ws.send('{"type": "start"}')
            assert '"ready"' in ws.recv(timeout=15)
        page.goto(page_server.url + "/")
        page.click("#start")
        page.wait_for_selector("#message:not([hidden])", timeout=15_000)
        assert "full" in page.inner_text("#message")
        assert page.evaluate("window.sm1.state.phase") == "error"
        page.screenshot(path=str(output_dir / "page-refused.png"))


def test_the_page_says_so_when_the_server_drops(page, own_server):
    start(page, own_server, tempo=300)
    own_server.kill()
    page.wait_for_selector("#message:not([hidden])", timeout=15_000)
    assert "connection to the server was lost" in page.inner_text("#message").lower()
    assert page.inner_text("#status") == "disconnected"


def test_an_uploaded_prompt_is_continued_from_its_end(page, page_server):
    page.goto(page_server.url + "/")
    page.set_input_files("#prompt", str(SHARED_MIDI / "aria_classical.mid"))
    page.click("#start")
    page.wait_for_function("window.sm1.state.phase === 'playing'", timeout=30_000)
    start_beat = page.evaluate("window.sm1.state.startBeat")
    assert start_beat > 4, "the stream should start where the prompt ends"
    page.wait_for_function("window.sm1.player.played.length >= 1", timeout=30_000)
    assert min(beat for *_, beat in played(page)) >= start_beat - 1e-3
