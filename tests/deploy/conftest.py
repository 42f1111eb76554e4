"""Fixtures for the deployment checks: the repository's Dockerfile, .dockerignore and compose files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.dockerfile import Dockerfile, DockerIgnore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return Dockerfile.read(REPO / "Dockerfile")


@pytest.fixture(scope="session")
def dockerignore() -> DockerIgnore:
    return DockerIgnore((REPO / ".dockerignore").read_text())


@pytest.fixture(scope="session")
def context(dockerignore, tmp_path_factory) -> Path:
    """The build context Docker would be sent (read only: copy it before changing anything)."""
    path = tmp_path_factory.mktemp("context")
    dockerignore.build_context(REPO, path)
    return path
