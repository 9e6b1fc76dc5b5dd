"""``chris plugin publish`` and ``chris plugin add --image``, as an author types them.

CUBE runs in the test's event loop on a real port; the CLI runs as a
process against it, the Docker engine pushes to the session's real registry
(``docker-registry`` on loopback), and CUBE reads the pushed image back.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from cube.app import create_app
from cube.cli.publish import PublishError, target_reference
from cube.client import CubeClient
from cube.registry import RegistryCredentials
from cube.settings import CubeSettings
from tests.cube.conftest import DS_DESCRIPTOR
from tests.support.components import free_port
from tests.support.registry import Registry, build_labelled_image

CHRIS = str(Path(sys.executable).parent / "chris")


@pytest.mark.parametrize(
    ("local", "registry", "repository", "tag", "target"),
    [
        (
            "chris-fabric/pl-dircopy:1.0.0",
            "127.0.0.1:5000",
            None,
            None,
            "127.0.0.1:5000/chris-fabric/pl-dircopy:1.0.0",
        ),
        ("ghcr.io/fnndsc/pl-x:1", "localhost:5000", None, None, "localhost:5000/fnndsc/pl-x:1"),
        ("pl-x", "reg.example", None, None, "reg.example/pl-x:latest"),
        ("pl-x:2", "reg.example/", "team/pl-y", None, "reg.example/team/pl-y:2"),
        ("pl-x:2", "reg.example", None, "3.0", "reg.example/pl-x:3.0"),
        (None, "reg.example:443", "team/pl-z", "1.0", "reg.example:443/team/pl-z:1.0"),
    ],
)
def test_target_reference(
    local: str | None, registry: str, repository: str | None, tag: str | None, target: str
) -> None:
    assert target_reference(local, registry, repository, tag) == target


@pytest.mark.parametrize(
    ("local", "registry", "repository", "why"),
    [
        ("pl-x:1", "http://reg.example", None, "host\\[:port\\]"),
        ("pl-x:1", "reg.example/team", None, "host\\[:port\\]"),
        ("pl-x:1", "myhost", None, "does not look like a registry host"),
        ("pl-x:1", "reg.example", "Team/X", "lowercase"),
        (None, "reg.example", None, "give --repository"),
        ("Not An Image", "reg.example", None, "give --repository"),
    ],
)
def test_target_reference_refusals(
    local: str | None, registry: str, repository: str | None, why: str
) -> None:
    with pytest.raises(PublishError, match=why):
        target_reference(local, registry, repository)


@dataclass
class Cube:
    """CUBE on a real port, its admin's login file, and the registry it trusts."""

    url: str
    login: Path
    registry: Registry

    async def chris(self, *args: str, **env: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            CHRIS,
            *args,
            env={**os.environ, "CHRIS_LOGIN_FILE": str(self.login), "COLUMNS": "200", **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 180)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def client(self) -> CubeClient:
        return await CubeClient.from_login(self.url, "chris", "chris1234")


@pytest.fixture
async def cube(aiohttp_server: Callable[..., Any], tmp_path: Path, registry: Registry) -> Cube:
    settings = CubeSettings(
        home=tmp_path / "cube",
        run_scheduler=False,
        registry_credentials={
            registry.host: RegistryCredentials.model_validate(registry.auth_config)
        },
    )
    server: TestServer = await aiohttp_server(create_app(settings))
    url = f"http://127.0.0.1:{server.port}/"
    client = await CubeClient.from_login(url, "chris", "chris1234")
    async with client:
        await client.add_compute_resource("site", "http://127.0.0.1:9/api/v1/", "u", "p")
        token = client.token
    login = tmp_path / "login.json"
    login.write_text(json.dumps({"url": url, "username": "chris", "token": token}))
    return Cube(url, login, registry)


@pytest.mark.docker
@pytest.mark.slow
async def test_publish_pushes_and_registers(cube: Cube, docker_engine: Any) -> None:
    reg = cube.registry
    descriptor = dict(
        DS_DESCRIPTOR, name="pl-published", version="2.0", dock_image="chris-test/pl-published:2.0"
    )
    local = build_labelled_image(docker_engine, "chris-test/pl-published:2.0", descriptor)
    target = f"{reg.host}/chris/pl-published:2.0"
    defaulted = f"{reg.host}/chris-test/pl-published:2.0"
    try:
        # push under another repository, then register it in CUBE by reference
        rc, out, err = await cube.chris(
            "plugin", "publish", local, "--registry", reg.host,
            "--repository", "chris/pl-published", "-c", "site",
            "-u", reg.username, "-p", reg.password,
        )  # fmt: skip
        assert rc == 0, out + err
        assert f"pushed {target} (sha256:" in out
        assert "registered pl-published 2.0 as plugin" in out
        async with await cube.client() as c:
            plugin = await c.plugin_by_name("pl-published")
            assert plugin.dock_image == target
            assert [r.name for r in await c.compute_resources()] == ["site"]

        # default repository and tag, credentials from the environment, no registration
        rc, out, err = await cube.chris(
            "plugin", "publish", local, "--registry", reg.host, "--no-register",
            CHRIS_REGISTRY_USERNAME=reg.username, CHRIS_REGISTRY_PASSWORD=reg.password,
        )  # fmt: skip
        assert rc == 0, out + err
        assert f"pushed {defaulted}" in out and "registered" not in out

        # `plugin add --image`: the same reference again is idempotent ...
        rc, out, err = await cube.chris("plugin", "add", "--image", target, "-c", "site")
        assert rc == 0, out + err
        assert f"as plugin {plugin.id} ({target})" in out
        # ... another reference of the same name and version is refused
        rc, out, err = await cube.chris("plugin", "add", "--image", defaulted, "-c", "site")
        assert rc == 1 and "another image" in err, out + err
        rc, out, err = await cube.chris("plugin", "add", "-c", "site")
        assert rc == 2 and "--image" in err
    finally:
        for ref in (target, defaulted):
            if docker_engine.images.list(name=ref):
                docker_engine.images.remove(ref)


@pytest.mark.docker
@pytest.mark.slow
async def test_publish_failures_are_reported(
    cube: Cube, docker_engine: Any, tmp_path: Path
) -> None:
    reg = cube.registry
    local = build_labelled_image(
        docker_engine,
        "chris-test/pl-refused:1.0",
        dict(DS_DESCRIPTOR, name="pl-refused", version="1.0", dock_image="x/pl-refused:1.0"),
    )
    refused = f"{reg.host}/chris-test/pl-refused:1.0"
    nowhere = f"127.0.0.1:{free_port()}"
    try:
        # the engine streams the failure; the docker SDK does not raise it
        rc, out, err = await cube.chris(
            "plugin", "publish", local, "--registry", reg.host, "-u", reg.username, "-p", "wrong",
        )  # fmt: skip
        assert rc == 1 and f"pushing {refused} failed" in err, out + err
        assert "unauthorized" in err.lower()
        rc, out, err = await cube.chris("plugin", "publish", local, "--registry", nowhere)
        assert rc == 1 and "failed" in err and nowhere in err, out + err
        rc, out, err = await cube.chris(
            "plugin", "publish", "chris-test/busybox:1", "--registry", reg.host
        )
        assert rc == 1 and "not a ChRIS plugin image" in err, out + err
        rc, out, err = await cube.chris(
            "plugin", "publish", "chris-test/no-such-image:1", "--registry", reg.host
        )
        assert rc == 1 and "no local image" in err, out + err
        rc, out, err = await cube.chris(
            "plugin", "publish", local, "--registry", reg.host,
            CHRIS_LOGIN_FILE=str(tmp_path / "nobody.json"),
        )  # fmt: skip
        assert rc == 2 and "chris login" in err, out + err
        async with await cube.client() as c:
            assert await c.plugins() == []
    finally:
        for ref in (refused, f"{nowhere}/chris-test/pl-refused:1.0"):
            if docker_engine.images.list(name=ref):
                docker_engine.images.remove(ref)
