"""Fixtures shared by every suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.components import docker_available, free_port, require


@pytest.fixture
def unused_port() -> int:
    """A free port on 127.0.0.1."""
    return free_port()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[object]:
    """A ``docker.DockerClient``; skipped locally, a failure under CI, when absent."""
    ok, why = docker_available()
    require(ok, why)
    import docker

    client = docker.from_env(timeout=120)
    yield client
    client.close()
