"""The README tells the truth: its examples run against a live server, its commands and flags exist, the
settings it names are read by something, its links resolve and its benchmark numbers are in RESULTS.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import mido
import tomllib

from server.settings import Settings
from tests.deploy.conftest import REPO

README = (REPO / "README.md").read_text()
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
TESTED = re.compile(r"<!-- tested: [^>]*-->\n```(\w+)\n(.*?)```", re.S)
TOOLS = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


def section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def example_blocks(language: str) -> list[str]:
    return [body for lang, body in TESTED.findall(README) if lang == language]


def on_port(example: str, port: int) -> str:
    return example.replace("localhost:8000", f"127.0.0.1:{port}")


def test_the_readme_opens_with_the_two_set_up_commands():
    lang, first = FENCE.search(README).groups()
    commands = [line.split("#")[0].strip() for line in first.splitlines()]
    assert lang == "bash" and commands == ["bash scripts/dev.sh serve", "bash scripts/dev.sh test"]


def run_bash(example: str, port: int, cwd) -> str:
    assert shutil.which("curl"), "curl is needed to run the README's examples"
    done = subprocess.run(["bash", "-c", on_port(example, port)], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_first_curl_example_saves_a_playable_clip(live_server, tmp_path):
    run_bash(example_blocks("bash")[0], live_server, tmp_path)
    clip = mido.MidiFile(tmp_path / "clip.mid")
    assert any(m.type == "note_on" and m.velocity > 0 for track in clip.tracks for m in track)


def test_the_json_curl_example_prints_notes(live_server, tmp_path):
    clip = json.loads(run_bash(example_blocks("bash")[1], live_server, tmp_path))
    assert clip["seed"] == 7 and clip["events"] and all(e["type"] == "note" for e in clip["events"])


def test_the_websocket_client_prints_the_ready_frame_and_sixteen_notes(live_server, tmp_path):
    script = tmp_path / "stream.py"
    script.write_text(on_port(example_blocks("python")[0], live_server))
    code = example_blocks("python")[0]
    assert len([line for line in code.splitlines() if line.strip()]) <= 15, "the README promises a short client"
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "'type': 'ready'" in lines[0]
    assert len(lines[1:]) >= 16 and all(
        re.fullmatch(r"beat +[\d.]+ +pitch +\d+ +for [\d.]+ beats", x) for x in lines[1:]
    )


def _invocations() -> list[tuple[str, list[str]]]:
    """(tool, its flags) for every sm1-* command line in the README's code blocks and inline code."""
    spans = [body for _, body in FENCE.findall(README)] + re.findall(r"`([^`\n]+)`", FENCE.sub("", README))
    found = []
    for span in spans:
        for line in span.splitlines():
            line = line.split(" #")[0]
            for m in re.finditer(r"(?<![\w/-])(sm1-[a-z]+)((?: +[^ |;&]+)*)", line):
                if m.group(1) in TOOLS:
                    found.append((m.group(1), re.findall(r"(?<![\w-])--[a-z][\w-]*", m.group(2))))
    return found


def test_every_command_and_flag_the_readme_shows_exists():
    invocations = _invocations()
    assert {tool for tool, _ in invocations} >= {"sm1-server", "sm1-bridge", "sm1-generate", "sm1-data", "sm1-train"}
    helps: dict[str, str] = {}
    for tool, flags in invocations:
        if tool not in helps:
            argv = [tool, "build", "--help"] if tool == "sm1-data" else [tool, "--help"]
            helps[tool] = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
        missing = [f for f in flags if not re.search(rf"{re.escape(f)}\b", helps[tool])]
        assert not missing, f"{tool} has no {missing}"


def test_every_sm1_variable_the_readme_names_is_read_by_something():
    settings = {f"SM1_{name.upper()}" for name in Settings.model_fields}
    sources = "".join(
        p.read_text() for folder in ("sm1", "clients", "scripts", "docker") for p in (REPO / folder).rglob("*.*")
        if p.suffix in (".py", ".sh", ".yaml")
    )  # fmt: skip
    for name in set(re.findall(r"\bSM1_[A-Z_]+\b", README)) - settings:
        assert name in sources, f"{name} is in the README but nothing reads it"


def test_every_relative_link_and_anchor_resolves():
    visible = re.sub(r"<!--.*?-->", "", FENCE.sub("", README), flags=re.S)
    for target in re.findall(r"\]\((?!https?:|#)([^)#]+)", visible):
        assert (REPO / target).exists(), target
    # GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", visible, re.M)}
    for anchor in re.findall(r"\]\(#([^)]+)\)", visible):
        assert anchor in anchors, anchor


def test_every_benchmark_number_quoted_is_in_results():
    results = (REPO / "benchmarks/RESULTS.md").read_text()
    quoted = re.findall(r"\d+(?:[.,]\d+)*(?:e[-+]?\d+)?", section("Benchmarks"))
    assert quoted
    missing = [n for n in quoted if n not in results]
    assert not missing, f"not in benchmarks/RESULTS.md: {missing}"
