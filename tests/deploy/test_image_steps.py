"""The image's build and start steps, run outside Docker (no engine here): a broken step fails CI.

The CPU variant is replayed (this machine has no GPU and its torch is the CPU build): the context is cut
by .dockerignore, every RUN of the builder runs (`python -m venv`, docker/install.sh torch, docker/install.sh
project), every COPY copies, then the ENTRYPOINT starts with the image's environment and the HEALTHCHECK
command must pass. See tests/deploy/replay.py for the two places where the replay differs from Docker.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

from sm1.checkpoint import CheckpointError, resolve_default
from tests.deploy.conftest import free_port
from tests.deploy.replay import Replay, is_system_step


@pytest.fixture(scope="module")
def image(dockerfile, context, tiny_checkpoint, tmp_path_factory):
    """The CPU image built under a stand-in root; until the lead ships a default checkpoint in checkpoints/,
    the tiny test checkpoint is put in (a copy of) the build context in its place."""
    context = shutil.copytree(context, tmp_path_factory.mktemp("image") / "context")
    try:
        resolve_default(context / "checkpoints")
    except CheckpointError:
        shutil.copytree(tiny_checkpoint, context / "checkpoints" / tiny_checkpoint.name)
    replay = Replay(dockerfile, context, tmp_path_factory.mktemp("root"), {"VARIANT": "cpu"})
    runtime = replay.build("runtime")
    replay.prune_to(runtime)
    return replay, runtime


@pytest.fixture(scope="module")
def running(image, tmp_path_factory):
    replay, runtime = image
    env = runtime.env | {"SM1_HOST": "127.0.0.1", "SM1_PORT": str(free_port()), "SM1_TORCH_THREADS": "1"}
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            replay.command(runtime.entrypoint, runtime), env=env, cwd=replay.host(runtime.workdir),
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    yield replay, runtime, env, process, log
    if process.poll() is None:
        process.kill()
        process.wait()


def healthcheck(replay, runtime, env) -> subprocess.CompletedProcess:
    timeout = float(runtime.healthcheck.flags["timeout"].rstrip("s"))
    argv = replay.command(runtime.healthcheck.exec_form(), runtime)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def test_only_steps_that_change_the_machine_are_left_to_docker(image):
    _, runtime = image
    assert runtime.skipped and all(is_system_step(step) for step in runtime.skipped)


def test_the_package_is_installed_from_the_context_not_the_checkout(image, repo):
    replay, runtime = image
    python = replay.host("/opt/venv/bin/python")
    where = subprocess.run(
        [python, "-c", "import sm1, server; print(sm1.__file__); print(server.__file__)"],
        env=runtime.env, capture_output=True, text=True, check=True, cwd=replay.host(runtime.workdir),
    ).stdout.split()  # fmt: skip
    assert all(path.startswith(str(replay.root)) and "site-packages" in path for path in where), where
    assert not replay.host("/src").exists(), "the builder's source tree is not part of the image"


def test_the_image_starts_healthy_serves_the_shipped_checkpoint_and_stops_cleanly(running):
    replay, runtime, env, process, log = running
    start_period = float(runtime.healthcheck.flags["start-period"].rstrip("s"))
    deadline = time.monotonic() + start_period
    while (check := healthcheck(replay, runtime, env)).returncode != 0:
        assert process.poll() is None, f"sm1-server exited with {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"unhealthy after the start period:\n{check.stderr}\n{log.read_text()}"
        time.sleep(0.5)
    assert json.loads(check.stdout)["status"] == "ok"

    shipped = resolve_default(replay.host("/opt/sm1/checkpoints"))
    with urllib.request.urlopen(f"http://127.0.0.1:{env['SM1_PORT']}/v1/model", timeout=10) as r:
        model = json.load(r)
    assert model["name"] == json.loads((shipped / "config.json").read_text()).get("name", shipped.name)
    for page in ("/", "/app.js"):  # the browser client: package data the non-editable install must carry
        with urllib.request.urlopen(f"http://127.0.0.1:{env['SM1_PORT']}{page}", timeout=10) as r:
            assert r.status == 200 and r.read(), page

    process.send_signal(signal.SIGTERM)  # what `docker stop` sends; uvicorn drains, then dies by the signal
    assert process.wait(timeout=15) in (0, -signal.SIGTERM), log.read_text()
    assert healthcheck(replay, runtime, env).returncode == 1, "a stopped server must read as unhealthy"
