"""Permission tests: private feeds stay private; sharing grants exactly read access.

alice owns the feed; bobby is in group ``lab``; carol is no one to it.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cube.api.common import STORAGE
from cube.app import create_app
from cube.settings import CubeSettings
from tests.cube.apiworld import CJ, JSON, World, build_world, ok
from tests.cube.conftest import ADMIN, token_for

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def world(api: TestClient) -> World:
    return await build_world(api)


def feed_paths(world: World) -> list[str]:
    feed, inst, out = world.ids["feed"], world.ids["fs_inst"], world.ids["out"]
    return [
        f"/api/v1/{feed}/",
        f"/api/v1/{feed}/plugininstances/",
        f"/api/v1/{feed}/files/",
        f"/api/v1/note{feed}/",
        f"/api/v1/{feed}/comments/",
        f"/api/v1/{feed}/taggings/",
        f"/api/v1/plugins/instances/{inst}/",
        f"/api/v1/plugins/instances/{inst}/parameters/",
        f"/api/v1/plugins/instances/{inst}/files/",
        f"/api/v1/files/{out}/",
        f"/api/v1/files/{out}/out.txt",
    ]


async def assert_cannot_read(api: TestClient, world: World, who: dict[str, str]) -> None:
    for path in feed_paths(world):
        resp = await api.get(path, headers={**who, **JSON})
        assert resp.status == 404, (path, resp.status)
    listing = await ok(await api.get("/api/v1/search/", headers={**who, **JSON}))
    assert world.ids["feed"] not in [f["id"] for f in listing["results"]]
    found = await ok(
        await api.get(
            f"/api/v1/plugins/instances/search/?feed_id={world.ids['feed']}",
            headers={**who, **JSON},
        )
    )
    assert found["count"] == 0


async def assert_can_read_only(api: TestClient, world: World, who: dict[str, str]) -> None:
    for path in feed_paths(world):
        resp = await api.get(path, headers={**who, **JSON})
        assert resp.status == 200, (path, resp.status)
    feed, inst = world.ids["feed"], world.ids["fs_inst"]
    before = await ok(await api.get(f"/api/v1/{feed}/", headers={**world.alice, **JSON}))
    # reading is all: no rename, no publishing, no note edit, no cancel, no delete, no re-share
    changes = [
        ("PUT", f"/api/v1/{feed}/", {"name": "mine now"}),
        ("PUT", f"/api/v1/{feed}/", {"public": not before["public"]}),
        ("PUT", f"/api/v1/note{feed}/", {"content": "x"}),
        ("PUT", f"/api/v1/plugins/instances/{inst}/", {"status": "cancelled"}),
        ("PUT", f"/api/v1/plugins/instances/{inst}/", {"title": "x"}),
        ("POST", f"/api/v1/{feed}/userpermissions/", {"username": "carol"}),
        ("DELETE", f"/api/v1/{feed}/", None),
    ]
    for method, path, body in changes:
        resp = await api.request(method, path, json=body, headers={**who, **JSON})
        assert resp.status == 403, (method, path, resp.status, await resp.text())
    # nor add an instance to the feed
    resp = await api.post(
        f"/api/v1/plugins/{world.ids['ds']}/instances/",
        json={"previous_id": inst},
        headers={**who, **JSON},
    )
    assert resp.status == 403
    feed_row = await ok(await api.get(f"/api/v1/{feed}/", headers={**world.alice, **JSON}))
    assert (feed_row["name"], feed_row["public"]) == (before["name"], before["public"])
    inst_row = await ok(
        await api.get(f"/api/v1/plugins/instances/{inst}/", headers={**world.alice, **JSON})
    )
    assert inst_row["status"] == "scheduled"


async def test_private_feed_is_invisible_to_others(api: TestClient, world: World) -> None:
    await assert_cannot_read(api, world, world.bob)
    await assert_cannot_read(api, world, world.carol)
    feed = world.ids["feed"]
    for method, body in (("PUT", {"name": "x"}), ("DELETE", None)):
        resp = await api.request(method, f"/api/v1/{feed}/", json=body, headers=world.carol)
        assert resp.status == 404
    # staff sees it
    assert (await api.get(f"/api/v1/{feed}/", headers=world.admin)).status == 200


async def test_sharing_with_a_user_grants_exactly_read(api: TestClient, world: World) -> None:
    feed = world.ids["feed"]
    perm = await ok(
        await api.post(
            f"/api/v1/{feed}/userpermissions/", json={"username": "carol"}, headers=world.alice
        ),
        201,
    )
    await assert_can_read_only(api, world, world.carol)
    await assert_cannot_read(api, world, world.bob)
    # the sharer sees the share; the reader may not see or revoke it
    listing = await ok(await api.get(f"/api/v1/{feed}/userpermissions/", headers=world.alice))
    assert [p["user_username"] for p in listing["results"]] == ["carol"]
    resp = await api.delete(f"/api/v1/userpermissions/{perm['id']}/", headers=world.carol)
    assert resp.status == 403
    # a reader may comment
    await ok(
        await api.post(f"/api/v1/{feed}/comments/", json={"content": "nice"}, headers=world.carol),
        201,
    )
    # sharing twice conflicts; revoking takes the access away
    again = await api.post(
        f"/api/v1/{feed}/userpermissions/", json={"username": "carol"}, headers=world.alice
    )
    assert again.status == 409
    resp = await api.delete(f"/api/v1/userpermissions/{perm['id']}/", headers=world.alice)
    assert resp.status == 204
    await assert_cannot_read(api, world, world.carol)


async def test_sharing_with_a_group_reaches_its_members_only(api: TestClient, world: World) -> None:
    feed = world.ids["feed"]
    perm = await ok(
        await api.post(
            f"/api/v1/{feed}/grouppermissions/", json={"grp_name": "lab"}, headers=world.alice
        ),
        201,
    )
    await assert_can_read_only(api, world, world.bob)
    await assert_cannot_read(api, world, world.carol)
    # leaving the group ends the access
    resp = await api.delete(f"/api/v1/groups/users/{world.ids['member']}/", headers=world.admin)
    assert resp.status == 204
    await assert_cannot_read(api, world, world.bob)
    resp = await api.delete(f"/api/v1/grouppermissions/{perm['id']}/", headers=world.alice)
    assert resp.status == 204


async def test_public_feed_is_readable_not_changeable(api: TestClient, world: World) -> None:
    feed = world.ids["feed"]
    await ok(await api.put(f"/api/v1/{feed}/", json={"public": True}, headers=world.alice))
    public = await ok(await api.get("/api/v1/publicfeeds/"))
    assert [f["id"] for f in public["results"]] == [feed]
    await assert_can_read_only(api, world, world.carol)
    # the root lists only one's own feeds
    root = await ok(await api.get("/api/v1/", headers=world.carol))
    assert root["count"] == 0


async def test_public_feed_is_readable_anonymously(api: TestClient, world: World) -> None:
    feed, inst = world.ids["feed"], world.ids["fs_inst"]
    anonymous_paths = [
        *feed_paths(world),
        f"/api/v1/{feed}/comments/search/?title=x",
        f"/api/v1/plugins/instances/{inst}/descendants/",
    ]
    # private: without credentials, every read asks for them (401), in both media types
    for path in anonymous_paths:
        resp = await api.get(path, headers=JSON)
        assert resp.status == 401, (path, resp.status)
        resp = await api.get(path, headers=CJ)
        assert resp.status == 401, (path, resp.status)
        assert (
            "credentials" in (await resp.json(content_type=None))["collection"]["error"]["message"]
        )
    await ok(await api.put(f"/api/v1/{feed}/", json={"public": True}, headers=world.alice))
    for path in anonymous_paths:
        resp = await api.get(path, headers=JSON)
        assert resp.status == 200, (path, resp.status)
    # the same resources as alice reads them, in both media types
    for path in (f"/api/v1/{feed}/", f"/api/v1/plugins/instances/{inst}/"):
        mine = await ok(await api.get(path, headers={**world.alice, **JSON}))
        assert await ok(await api.get(path, headers=JSON)) == mine
        cj = await ok(await api.get(path, headers=CJ))
        assert cj["collection"]["items"][0]["href"] == mine["url"]
    listed = await ok(await api.get(f"/api/v1/{feed}/plugininstances/", headers=CJ))
    assert [i["href"] for i in listed["collection"]["items"]] == [
        f"{origin_of(mine['url'])}/api/v1/plugins/instances/{inst}/"
    ]
    download = await api.get(f"/api/v1/files/{world.ids['out']}/out.txt")
    assert download.status == 200 and await download.read() == b"output!"
    # reading is all: anonymous changes ask for credentials
    changes = [
        ("PUT", f"/api/v1/{feed}/", {"name": "mine now"}),
        ("PUT", f"/api/v1/note{feed}/", {"content": "x"}),
        ("PUT", f"/api/v1/plugins/instances/{inst}/", {"status": "cancelled"}),
        ("POST", f"/api/v1/{feed}/comments/", {"content": "x"}),
        ("DELETE", f"/api/v1/plugins/instances/{inst}/", None),
        ("DELETE", f"/api/v1/{feed}/", None),
    ]
    for method, path, body in changes:
        resp = await api.request(method, path, json=body, headers=JSON)
        assert resp.status == 401, (method, path, resp.status)
    # bad credentials are refused, not taken for an anonymous caller
    resp = await api.get(f"/api/v1/{feed}/", headers={"Authorization": "Token nope", **JSON})
    assert resp.status == 401
    # other users' uploads and private feeds stay closed to anonymous callers
    resp = await api.get(f"/api/v1/userfiles/{world.ids['userfile']}/in.txt")
    assert resp.status == 401
    await ok(await api.put(f"/api/v1/{feed}/", json={"public": False}, headers=world.alice))
    resp = await api.get(f"/api/v1/files/{world.ids['out']}/out.txt")
    assert resp.status == 401


def origin_of(url: str) -> str:
    """``scheme://host`` of an absolute URL."""
    return "/".join(url.split("/")[:3])


async def test_groups_are_staff_managed(api: TestClient, world: World) -> None:
    resp = await api.post("/api/v1/groups/", json={"name": "rogue"}, headers=world.alice)
    assert resp.status == 403
    resp = await api.post(
        f"/api/v1/groups/{world.ids['group']}/users/",
        json={"username": "alice"},
        headers=world.alice,
    )
    assert resp.status == 403
    resp = await api.delete(f"/api/v1/groups/{world.ids['group']}/", headers=world.alice)
    assert resp.status == 403
    members = await ok(
        await api.get(f"/api/v1/groups/{world.ids['group']}/users/", headers=world.alice)
    )
    assert [m["username"] for m in members["results"]] == ["bobby"]
    groups = await ok(await api.get("/api/v1/groups/", headers=world.carol))
    assert [g["name"] for g in groups["results"]] == ["lab"]


async def test_users_see_and_change_only_themselves(api: TestClient, world: World) -> None:
    root = await ok(await api.get("/api/v1/", headers=world.carol))
    me_path = "/" + root["collection_links"]["user"].split("/", 3)[3]
    me = await ok(await api.get(me_path, headers=world.carol))
    assert me["username"] == "carol"
    await ok(await api.put(me_path, json={"email": "new@x.org"}, headers=world.carol))
    assert (await ok(await api.get(me_path, headers=world.carol)))["email"] == "new@x.org"
    for who in (world.alice, world.bob):
        assert (await api.get(me_path, headers=who)).status == 404
        assert (await api.put(me_path, json={"email": "evil@x.org"}, headers=who)).status == 404
    resp = await api.put(me_path, json={"password": "short"}, headers=world.carol)
    assert resp.status == 400
    groups = await ok(await api.get(me_path + "groups/", headers=world.carol))
    assert groups["count"] == 0


async def test_tags_and_comments_belong_to_their_owner(api: TestClient, world: World) -> None:
    feed = world.ids["feed"]
    tag = await ok(
        await api.post("/api/v1/tags/", json={"name": "mri", "color": "blue"}, headers=world.alice),
        201,
    )
    tagging = await ok(
        await api.post(
            f"/api/v1/{feed}/taggings/", json={"tag_id": tag["id"]}, headers=world.alice
        ),
        201,
    )
    tags = await ok(await api.get(f"/api/v1/{feed}/tags/", headers=world.alice))
    assert [t["name"] for t in tags["results"]] == ["mri"]
    tagged = await ok(await api.get(f"/api/v1/tags/{tag['id']}/feeds/", headers=world.alice))
    assert [f["id"] for f in tagged["results"]] == [feed]
    assert (await api.get(f"/api/v1/tags/{tag['id']}/", headers=world.carol)).status == 404
    assert (await api.get(f"/api/v1/taggings/{tagging['id']}/", headers=world.carol)).status == 404
    comment = await ok(
        await api.post(
            f"/api/v1/{feed}/comments/", json={"title": "t", "content": "c"}, headers=world.alice
        ),
        201,
    )
    assert (await api.get(f"/api/v1/comments/{comment['id']}/", headers=world.carol)).status == 404
    note = await ok(
        await api.put(f"/api/v1/note{feed}/", json={"content": "about"}, headers=world.alice)
    )
    assert note["content"] == "about"
    assert (
        await api.delete(f"/api/v1/taggings/{tagging['id']}/", headers=world.alice)
    ).status == 204
    assert (await api.delete(f"/api/v1/tags/{tag['id']}/", headers=world.alice)).status == 204


async def test_feed_and_instance_deletion(api: TestClient, world: World) -> None:
    feed, inst = world.ids["feed"], world.ids["fs_inst"]
    ds = await ok(
        await api.post(
            f"/api/v1/plugins/{world.ids['ds']}/instances/",
            json={"previous_id": inst},
            headers=world.alice,
        ),
        201,
    )
    assert ds["status"] == "waiting"
    # an fs instance goes with its feed only (deleting an active feed cancels
    # its instances first: tests/cube/test_lifecycle.py)
    resp = await api.delete(f"/api/v1/plugins/instances/{inst}/", headers=world.alice)
    assert resp.status == 403
    await ok(
        await api.put(
            f"/api/v1/plugins/instances/{inst}/", json={"status": "cancelled"}, headers=world.alice
        )
    )
    cancelled = await ok(
        await api.get(f"/api/v1/plugins/instances/{ds['id']}/", headers=world.alice)
    )
    assert cancelled["status"] == "cancelled"
    resp = await api.delete(f"/api/v1/plugins/instances/{ds['id']}/", headers=world.alice)
    assert resp.status == 204
    assert (
        await api.get(f"/api/v1/plugins/instances/{ds['id']}/", headers=world.alice)
    ).status == 404
    # the output's bytes go with the feed
    out = await ok(await api.get(f"/api/v1/files/{world.ids['out']}/", headers=world.alice))
    out_path = api.server.app[STORAGE].local_path(out["fname"])
    assert out_path.is_file()
    assert (await api.delete(f"/api/v1/{feed}/", headers=world.alice)).status == 204
    assert (await api.get(f"/api/v1/{feed}/", headers=world.alice)).status == 404
    assert not out_path.exists()
    # uploads are not part of a feed
    assert (
        await api.get(f"/api/v1/userfiles/{world.ids['userfile']}/", headers=world.alice)
    ).status == 200


async def test_admin_api_is_staff_only(api: TestClient, world: World) -> None:
    fs = world.ids["fs"]
    for method, path, body in (
        ("GET", "/chris-admin/api/v1/", None),
        ("GET", f"/chris-admin/api/v1/{fs}/", None),
        ("PUT", f"/chris-admin/api/v1/{fs}/", {"compute_names": "site"}),
        ("GET", "/chris-admin/api/v1/computeresources/", None),
    ):
        resp = await api.request(method, path, json=body, headers=world.alice)
        assert resp.status == 403, (method, path, resp.status)
    await ok(
        await api.post(
            "/chris-admin/api/v1/computeresources/",
            json={
                "name": "second",
                "compute_url": "http://127.0.0.1:9/api/v1/",
                "compute_user": "u",
                "compute_password": "p",
            },
            headers=world.admin,
        ),
        201,
    )
    await ok(
        await api.put(
            f"/chris-admin/api/v1/{fs}/", json={"compute_names": "second"}, headers=world.admin
        )
    )
    sites = await ok(await api.get(f"/api/v1/plugins/{fs}/computeresources/", headers=world.alice))
    assert [r["name"] for r in sites["results"]] == ["site", "second"]
    bad = await api.put(
        f"/chris-admin/api/v1/{fs}/", json={"compute_names": "nowhere"}, headers=world.admin
    )
    assert bad.status == 400
    users = await ok(await api.get("/api/v1/users/", headers=world.alice))
    assert [u["username"] for u in users["results"]] == ["alice"]
    everyone = await ok(await api.get("/api/v1/users/", headers=world.admin))
    assert everyone["count"] == 4


async def test_sign_up_can_be_reserved_to_staff(
    aiohttp_client: Any, cube_settings: CubeSettings
) -> None:
    settings = cube_settings.model_copy(update={"disable_user_account_creation": True})
    api = await aiohttp_client(create_app(settings), headers=JSON)
    body = {"username": "eve-user", "password": "eve-password"}
    assert (await api.post("/api/v1/users/", json=body)).status == 401
    admin = await token_for(api, *ADMIN)
    await ok(await api.post("/api/v1/users/", json=body, headers=admin), 201)
    me = await token_for(api, "eve-user", "eve-password")
    other = {"username": "eve-friend", "password": "eve-password"}
    assert (await api.post("/api/v1/users/", json=other, headers=me)).status == 403
