"""docker/compose.yaml (and the root docker-compose.yml that includes it), checked without a Docker engine:
valid against the Compose Specification, and consistent with the Dockerfile and the server's settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from compose_spec import PyCompose

from tests.deploy import compose
from tests.deploy.test_dockerfile import CHECKPOINT_ENV, SERVER_ENV, final_env

COMPOSE_FILES = ["docker/compose.yaml", "docker-compose.yml"]
USER_ENV = {"SM1_PUBLISH": "0.0.0.0:9000", "SM1_USER_CHECKPOINTS": "/srv/sm1-checkpoints"}


@pytest.fixture(scope="module")
def services(repo) -> dict:
    """What `docker compose up` from the repository root sees, with no variables set."""
    return compose.load(repo / "docker-compose.yml", {})["services"]


@pytest.mark.parametrize("path", COMPOSE_FILES)
@pytest.mark.parametrize("env", [{}, USER_ENV], ids=["defaults", "user-variables"])
def test_compose_files_follow_the_compose_specification(repo, path, env):
    model = compose.load(repo / path, env)
    PyCompose.from_json(json.dumps(model))  # raises ValueError on anything Compose would reject


def test_the_root_file_brings_in_the_docker_folder_services(repo, services):
    assert set(services) == set(compose.load(repo / "docker/compose.yaml", {})["services"])


def test_plain_up_starts_the_gpu_server_with_a_reserved_gpu(services):
    default = [name for name, s in services.items() if not s.get("profiles")]
    assert default == ["sm1"]
    devices = services["sm1"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["sm1"]["build"]["args"]["VARIANT"] == "gpu"


def test_a_cpu_host_has_its_own_service_with_no_gpu(services):
    cpu = services["sm1-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert cpu["build"]["args"]["VARIANT"] == "cpu"
    assert cpu["image"] != services["sm1"]["image"], "the two builds must not overwrite each other's tag"


@pytest.mark.parametrize("name", ["sm1", "sm1-cpu"])
def test_builds_use_the_repository_dockerfile(repo, services, name):
    assert Path(services[name]["build"]["context"]) == repo
    assert services[name]["build"].get("dockerfile", "Dockerfile") == "Dockerfile"


@pytest.mark.parametrize("name", ["sm1", "sm1-cpu"])
def test_the_published_port_reaches_the_port_the_image_listens_on(dockerfile, services, name):
    variant = services[name]["build"]["args"]["VARIANT"]
    (mapping,) = services[name]["ports"]
    host_ip, host_port, container_port = mapping.split(":")
    assert container_port == final_env(dockerfile, variant)["SM1_PORT"]
    assert (host_ip, host_port) == ("127.0.0.1", "8000"), "only this machine by default: there is no API key"


def test_the_published_address_is_the_users_choice(repo):
    services = compose.load(repo / "docker-compose.yml", USER_ENV)["services"]
    assert services["sm1"]["ports"] == ["0.0.0.0:9000:8000"]
    assert services["sm1"]["volumes"] == ["/srv/sm1-checkpoints:/checkpoints:ro"]


@pytest.mark.parametrize("name", ["sm1", "sm1-cpu"])
def test_the_healthcheck_is_the_images_own(dockerfile, services, name):
    image = dockerfile.stage("runtime").first("HEALTHCHECK")
    check = services[name]["healthcheck"]
    assert check["test"] == ["CMD", *image.exec_form()]
    for key in ("interval", "timeout", "retries", "start_period"):
        assert str(check[key]) == image.flags[key.replace("_", "-")]


@pytest.mark.parametrize("name", ["sm1", "sm1-cpu"])
def test_every_environment_name_is_one_the_server_reads(services, name):
    names = set(services[name]["environment"])
    assert names <= SERVER_ENV | {CHECKPOINT_ENV}, f"not read by server/settings.py: {names - SERVER_ENV}"
    assert all(v is None for v in services[name]["environment"].values()), "values come from the user's shell"


def test_compose_own_variables_cannot_be_mistaken_for_settings(repo):
    names = compose.used_variables(repo / "docker/compose.yaml")
    assert names == set(USER_ENV)
    assert not names & SERVER_ENV


@pytest.mark.parametrize("name", ["sm1", "sm1-cpu"])
def test_user_checkpoints_are_mounted_read_only_where_sm1_checkpoint_can_name_them(repo, services, name):
    (volume,) = services[name]["volumes"]
    source, target, mode = volume.split(":")
    assert Path(source) == repo / "runs", "by default the folder sm1-train writes to"
    assert target == "/checkpoints" and mode == "ro"
    assert "SM1_CHECKPOINT" in services[name]["environment"]


@pytest.mark.parametrize("name", ["sm1", "sm1-cpu"])
def test_the_server_comes_back_after_a_crash_or_reboot_and_gets_time_to_drain(services, name):
    from server.settings import Settings

    assert services[name]["restart"] == "unless-stopped"
    grace = int(re.fullmatch(r"(\d+)s", services[name]["stop_grace_period"]).group(1))
    assert grace > Settings().shutdown_grace_s


def test_there_is_no_service_the_server_does_not_use(repo, services):
    """Redis (session snapshots across replicas) joins the file when the server has a client for it."""
    sources = [p.read_text() for folder in ("server", "sm1") for p in (repo / folder).rglob("*.py")]
    assert not any(re.search(r"^\s*(import|from)\s+redis\b", s, re.M) for s in sources)
    assert set(services) == {"sm1", "sm1-cpu"}


@pytest.mark.parametrize("name", ["sm1", "sm1-cpu"])
def test_host_and_port_stay_the_images_so_the_published_port_stays_right(dockerfile, services, name):
    variant = services[name]["build"]["args"]["VARIANT"]
    assert {"SM1_HOST", "SM1_PORT"} <= final_env(dockerfile, variant).keys()
    assert not {"SM1_HOST", "SM1_PORT"} & services[name]["environment"].keys()
