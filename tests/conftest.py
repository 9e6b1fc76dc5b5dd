"""Fixtures shared by every suite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.components import docker_available, free_port, require
from tests.support.postgres import PostgresCluster, postgres_available, running_postgres
from tests.support.registry import Registry, registry_available, running_registry


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


@pytest.fixture(scope="session")
def swarm_manager(docker_engine: object) -> object:
    """The engine, checked to be a swarm manager; skipped locally, a failure under CI.

    ``.ci/components.sh`` runs ``docker swarm init --advertise-addr 127.0.0.1``.
    """
    info = docker_engine.info()  # type: ignore[attr-defined]
    swarm = info.get("Swarm") or {}
    require(
        swarm.get("LocalNodeState") == "active" and bool(swarm.get("ControlAvailable")),
        "the Docker engine is not a swarm manager (docker swarm init --advertise-addr 127.0.0.1)",
    )
    return docker_engine


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real ``docker-registry`` on 127.0.0.1 with htpasswd auth, for the session.

    Skipped locally, a failure under CI, when the registry binary or
    ``htpasswd`` is missing (``.ci/components.sh`` installs both).
    """
    ok, why = registry_available()
    require(ok, why)
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster on loopback for the session.

    Skipped locally, a failure under CI, when PostgreSQL is not installed
    (``.ci/components.sh`` installs Debian's ``postgresql``).
    """
    ok, why = postgres_available()
    require(ok, why)
    with running_postgres() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> Iterator[str]:
    """The URL of a fresh, empty database in the session's cluster (dropped after)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield postgres.create_database(name)
    postgres.drop_database(name)
