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
async def docker_stack(
    tmp_path: Path, docker_engine: Any
) -> AsyncIterator[tuple[Stack, CubeClient]]:
    from tests.support.images import ensure_plugin_images

    ensure_plugin_images(docker_engine)
    # no explicit images: the stack reads each plugin's descriptor from the image
    # its host descriptor names, as `chris up --backend docker` does
    cfg = stack_config(tmp_path, SiteBackend.DOCKER)
    try:
        async for pair in running_stack(cfg):
            yield pair
    finally:
        for c in docker_engine.containers.list(
            all=True, filters={"label": "org.chrisproject.managed-by=pman"}
        ):
            if c.name.startswith("chris-jid-"):
                c.remove(force=True)


@pytest.fixture
async def swarm_stack(
    tmp_path: Path, swarm_manager: Any
) -> AsyncIterator[tuple[Stack, CubeClient]]:
    """The stack with pman on the one-node swarm (``chris up --backend swarm``)."""
    from tests.support.images import ensure_plugin_images

    ensure_plugin_images(swarm_manager)
    cfg = stack_config(tmp_path, SiteBackend.SWARM)
    try:
        async for pair in running_stack(cfg):
            yield pair
    finally:
        for service in swarm_manager.services.list(
            filters={"label": "org.chrisproject.managed-by=pman"}
        ):
            if service.name.startswith("chris-jid-"):
                service.remove()
