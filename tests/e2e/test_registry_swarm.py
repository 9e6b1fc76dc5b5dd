"""End to end: a plugin author publishes to a registry; the fabric runs it on swarm.

A new plugin image (the simpledsapp image under a new name, its descriptor
label rewritten) is published with ``chris plugin publish`` to a real
``docker-registry`` on loopback (htpasswd auth) and registered in CUBE by its
image reference alone: CUBE reads the descriptor from the registry. Its
local tags are then removed, so pman on the one-node swarm has to pull the
image from the registry, with its own credentials, to run the feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from cube.cli.stack import SiteBackend
from cube.schema import InstanceStatus
from tests.e2e.conftest import engine_stack
from tests.support.images import ensure_plugin_images
from tests.support.registry import Registry

pytestmark = [pytest.mark.slow, pytest.mark.docker]

CHRIS = str(Path(sys.executable).parent / "chris")
DESCRIPTOR_LABEL = "org.chrisproject.descriptor"
LOCAL = "chris-test/pl-published:1.0.0"


def _author_image(engine: docker.DockerClient) -> str:
    """The author's new plugin: simpledsapp's image under another name."""
    images = ensure_plugin_images(engine)
    base = images["pl-simpledsapp"]
    descriptor = json.loads(engine.images.get(base).labels[DESCRIPTOR_LABEL])
    descriptor.update(name="pl-published", title="A plugin from the registry")
    engine.images.build(
        fileobj=io.BytesIO(f"FROM {base}\n".encode()),
        tag=LOCAL,
        labels={DESCRIPTOR_LABEL: json.dumps(descriptor)},
        rm=True,
    )
    return LOCAL


async def _chris(*args: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        CHRIS,
        *args,
        env={**os.environ, "COLUMNS": "200", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text
    return text


async def test_published_plugin_runs_in_a_feed_on_swarm(
    tmp_path: Path, swarm_manager: Any, registry: Registry
) -> None:
    engine: docker.DockerClient = swarm_manager
    local = _author_image(engine)
    reference = f"{registry.host}/chris-test/pl-published:1.0.0"
    creds = {
        "CUBE_REGISTRY_CREDENTIALS": json.dumps({registry.host: registry.auth_config}),
        "PMAN_REGISTRY_USERNAME": registry.username,
        "PMAN_REGISTRY_PASSWORD": registry.password,
        "PMAN_PULL_IMAGES": "true",
    }
    try:
        # aclosing: a failure stops the stack (and removes its jobs) at once
        stacks = engine_stack(tmp_path / "fabric", engine, SiteBackend.SWARM, extra_env=creds)
        async with contextlib.aclosing(stacks):
            async for stack, client in stacks:
                cfg = stack.config
                login = tmp_path / "login.json"
                login.write_text(
                    json.dumps({"url": cfg.cube_url, "username": "chris", "token": client.token})
                )
                out = await _chris(
                    "plugin",
                    "publish",
                    local,
                    "--registry",
                    registry.host,
                    "--repository",
                    "chris-test/pl-published",
                    "--compute",
                    cfg.compute_name,
                    env={
                        "CHRIS_LOGIN_FILE": str(login),
                        "CHRIS_REGISTRY_USERNAME": registry.username,
                        "CHRIS_REGISTRY_PASSWORD": registry.password,
                    },
                )
                assert f"pushed {reference}" in out
                assert "registered pl-published 1.0.0" in out

                # only the registry has the image now: the swarm site must pull it
                for tag in (local, reference):
                    engine.images.remove(tag)
                with pytest.raises(docker.errors.ImageNotFound):
                    engine.images.get(reference)

                plugin = await client.plugin_by_name("pl-published")
                assert plugin.dock_image == reference
                assert plugin.title == "A plugin from the registry"
                sample = tmp_path / "sample.txt"
                sample.write_text("from the registry\n")
                await client.upload(sample, "home/chris/uploads/reg/sample.txt")
                dircopy = await client.plugin_by_name("pl-dircopy")
                root = await client.create_instance(dircopy.id, {"dir": "home/chris/uploads/reg"})
                published = await client.create_instance(
                    plugin.id, {"prefix": "reg_"}, previous_id=root.id
                )
                final = await client.wait(published.id, timeout=240)
                assert final.status is InstanceStatus.FINISHED_SUCCESSFULLY, (
                    final.error_code,
                    final.error_message,
                    final.summary,
                )
                names = {
                    f.fname.removeprefix(final.output_path + "/")
                    for f in await client.instance_files(published.id)
                }
                assert names == {"reg_sample.txt"}
                # pman pulled the reference from the registry
                assert engine.images.get(reference).labels[DESCRIPTOR_LABEL]
    finally:
        for tag in (local, reference):
            try:
                # force: the swarm removes a finished task's container a moment
                # after its service, and untagging must not wait for that
                engine.images.remove(tag, force=True)
            except docker.errors.ImageNotFound:
                pass
