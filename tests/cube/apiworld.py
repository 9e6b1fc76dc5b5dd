"""A populated CUBE for the API compatibility tests: users, a group, feeds, files, PACS.

``build_world`` drives the real API (and writes output files the way the
scheduler registers them, since these tests run without a compute site).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from aiohttp import FormData
from aiohttp.test_utils import TestClient
from yarl import URL

from cube.api.common import SESSIONS, STORAGE
from cube.db.models import StoredFile
from tests.cube.conftest import ADMIN, DS_DESCRIPTOR, FS_DESCRIPTOR, token_for

JSON = {"Accept": "application/json"}
CJ = {"Accept": "application/vnd.collection+json"}


def local(href: str) -> str:
    """The path and query of an absolute link (the test client takes relative URLs)."""
    return URL(href).path_qs


def basic(username: str, password: str) -> dict[str, str]:
    """An HTTP Basic ``Authorization`` header."""
    raw = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@dataclass
class World:
    admin: dict[str, str]
    alice: dict[str, str]
    bob: dict[str, str]
    carol: dict[str, str]
    ids: dict[str, int] = field(default_factory=dict)


async def ok(resp: Any, status: int = 200) -> Any:
    """The JSON body of a response that must have ``status``."""
    assert resp.status == status, f"{resp.method} {resp.url}: {resp.status} {await resp.text()}"
    return await resp.json(content_type=None)


async def make_user(api: TestClient, name: str) -> dict[str, str]:
    password = f"{name}-password"
    await ok(
        await api.post(
            "/api/v1/users/",
            json={"username": name, "password": password, "email": f"{name}@x.org"},
        ),
        201,
    )
    return await token_for(api, name, password)


async def upload(api: TestClient, headers: dict[str, str], path: str, data: bytes) -> Any:
    form = FormData()
    form.add_field("upload_path", path)
    form.add_field("fname", data, filename=path.rsplit("/", 1)[-1])
    return await ok(await api.post("/api/v1/userfiles/", data=form, headers=headers), 201)


async def add_output(api: TestClient, inst: dict[str, Any], name: str, data: bytes) -> int:
    """Store and register an output file of an instance, as the scheduler does."""
    app = api.server.app
    fname = f"{inst['output_path']}/{name}"
    path = app[STORAGE].local_path(fname)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    owner_id = None
    async with app[SESSIONS]() as s:
        from cube.db.models import PluginInstance

        row = await s.get(PluginInstance, inst["id"])
        assert row is not None
        owner_id = row.owner_id
        f = StoredFile(fname=fname, fsize=len(data), owner_id=owner_id, plugin_inst_id=inst["id"])
        s.add(f)
        await s.commit()
        assert f.id is not None
        return f.id


async def build_world(api: TestClient) -> World:
    """Admin, alice (owns a feed), bob (in group ``lab``), carol (nobody)."""
    admin = await token_for(api, *ADMIN)
    world = World(
        admin=admin,
        alice=await make_user(api, "alice"),
        bob=await make_user(api, "bobby"),
        carol=await make_user(api, "carol"),
    )
    await ok(
        await api.post(
            "/chris-admin/api/v1/computeresources/",
            json={
                "name": "site",
                "compute_url": "http://127.0.0.1:9/api/v1/",
                "compute_user": "u",
                "compute_password": "p",
            },
            headers=admin,
        ),
        201,
    )
    for desc in (FS_DESCRIPTOR, DS_DESCRIPTOR):
        body = await ok(
            await api.post(
                "/chris-admin/api/v1/",
                json={"descriptor": desc, "compute_names": "site"},
                headers=admin,
            ),
            201,
        )
        world.ids[desc["type"]] = body["id"]
    up = await upload(api, world.alice, "home/alice/uploads/in.txt", b"hello")
    world.ids["userfile"] = up["id"]
    fs = await ok(
        await api.post(
            f"/api/v1/plugins/{world.ids['fs']}/instances/",
            json={"dir": "home/alice/uploads", "title": "alice's run"},
            headers=world.alice,
        ),
        201,
    )
    world.ids["fs_inst"] = fs["id"]
    world.ids["feed"] = fs["feed_id"]
    world.ids["out"] = await add_output(api, fs, "out.txt", b"output!")
    world.ids["link"] = await add_output(api, fs, "up.chrislink", b"home/alice/uploads\n")
    group = await ok(await api.post("/api/v1/groups/", json={"name": "lab"}, headers=admin), 201)
    world.ids["group"] = group["id"]
    member = await ok(
        await api.post(
            f"/api/v1/groups/{group['id']}/users/", json={"username": "bobby"}, headers=admin
        ),
        201,
    )
    world.ids["member"] = member["id"]
    return world
