"""Stack fixtures for the end-to-end suites: all four services as real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cube.cli.stack import SiteBackend, Stack, StackConfig
from cube.client import CubeClient
from tests.support.components import free_port


def stack_config(home: Path, backend: SiteBackend = SiteBackend.LOCAL, **extra: Any) -> StackConfig:
    return StackConfig(
        home=home,
        backend=backend,
        cube_port=free_port(),
        pfcon_port=free_port(),
        pfioh_port=free_port(),
        pman_port=free_port(),
        pacs_api_port=free_port(),
        dicom_port=free_port(),
        **extra,
    )


async def running_stack(cfg: StackConfig) -> AsyncIterator[tuple[Stack, CubeClient]]:
    stack = Stack(cfg)
    await stack.start()
    try:
        await stack.bootstrap()
        client = await CubeClient.from_login(cfg.cube_url, cfg.admin_user, cfg.admin_password)
        async with client:
            yield stack, client
    finally:
        await stack.stop()


@pytest.fixture
async def local_stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, CubeClient]]:
    async for pair in running_stack(stack_config(tmp_path, extra_env={"CUBE_LEASE_SECONDS": "3"})):
        yield pair


@pytest.fixture
async def innetwork_stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, CubeClient]]:
    """The local stack with its site in-network (``chris up --innetwork``)."""
    cfg = stack_config(tmp_path, innetwork=True, extra_env={"CUBE_LEASE_SECONDS": "3"})
    async for pair in running_stack(cfg):
        yield pair


def site_jobs(engine: Any, backend: SiteBackend) -> list[Any]:
    """The fabric's jobs (``chris-jid-*``) pman has on the engine: containers or services."""
    selector = {"label": "org.chrisproject.managed-by=pman"}
    if backend is SiteBackend.SWARM:
        return [
            s for s in engine.services.list(filters=selector) if s.name.startswith("chris-jid-")
        ]
    # sparse: a full listing inspects each container and fails on one removed meanwhile
    found = engine.containers.list(all=True, sparse=True, filters=selector)
    return [c for c in found if c.attrs["Names"][0].lstrip("/").startswith("chris-jid-")]


def remove_site_jobs(engine: Any, backend: SiteBackend) -> None:
    """Remove what :func:`site_jobs` finds (a failed test must not leave jobs behind)."""
    import docker.errors

    for job in site_jobs(engine, backend):
        try:
            job.remove() if backend is SiteBackend.SWARM else job.remove(force=True)
        except docker.errors.NotFound:
            pass


async def engine_stack(
    home: Path, engine: Any, backend: SiteBackend, **extra: Any
) -> AsyncIterator[tuple[Stack, CubeClient]]:
    """The stack with pman on a Docker engine backend (``chris up --backend docker|swarm``).

    No explicit images: the stack reads each plugin's descriptor from the
    image its host descriptor names, as ``chris up`` does.
    """
    from tests.support.images import ensure_plugin_images

    ensure_plugin_images(engine)
    try:
        async for pair in running_stack(stack_config(home, backend, **extra)):
            yield pair
    finally:
        remove_site_jobs(engine, backend)


@pytest.fixture
async def docker_stack(
    tmp_path: Path, docker_engine: Any
) -> AsyncIterator[tuple[Stack, CubeClient]]:
    """The stack with pman on the Docker engine."""
    async for pair in engine_stack(tmp_path, docker_engine, SiteBackend.DOCKER):
        yield pair


@pytest.fixture
async def swarm_stack(
    tmp_path: Path, swarm_manager: Any
) -> AsyncIterator[tuple[Stack, CubeClient]]:
    """The stack with pman on the one-node swarm."""
    async for pair in engine_stack(tmp_path, swarm_manager, SiteBackend.SWARM):
        yield pair
