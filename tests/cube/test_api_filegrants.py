"""File browser permissions (ChRIS v6): folders, files and link files shared
with users and groups grant exactly read access to what they name.

alice owns the uploads; bobby is in group ``lab``; carol is no one to them.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.cube.apiworld import JSON, World, build_world, local, ok, upload

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def world(api: TestClient) -> World:
    return await build_world(api)


async def folder_of(api: TestClient, who: dict[str, str], path: str) -> dict[str, Any] | None:
    found = await ok(
        await api.get(f"/api/v1/filebrowser/search/?path={path}", headers={**who, **JSON})
    )
    return found["results"][0] if found["results"] else None


async def test_folder_shared_with_a_user_reads_below_and_revoke_ends_it(
    api: TestClient, world: World
) -> None:
    deep = await upload(api, world.alice, "home/alice/study/t1/scan.dcm", b"DICM")
    top = await upload(api, world.alice, "home/alice/study/notes.txt", b"notes")
    study = await folder_of(api, world.alice, "home/alice/study")
    assert study is not None
    assert study["user_permissions"].endswith(f"/filebrowser/{study['id']}/userpermissions/")
    # before: bobby sees nothing
    assert await folder_of(api, world.bob, "home/alice/study") is None
    assert (await api.get(local(deep["file_resource"]), headers=world.bob)).status == 404

    grant = await ok(
        await api.post(
            local(study["user_permissions"]),
            json={"username": "bobby", "permission": "r"},
            headers=world.alice,
        ),
        201,
    )
    assert grant["folder_id"] == study["id"] and grant["folder_path"] == "home/alice/study"
    assert grant["user_username"] == "bobby" and grant["permission"] == "r"
    assert "/filebrowser/userpermissions/" in grant["url"]

    # bobby opens the folder, its sub-folder and files, and downloads them
    seen = await folder_of(api, world.bob, "home/alice/study")
    assert seen is not None and seen["id"] == study["id"]
    files = await ok(await api.get(local(seen["files"]), headers=world.bob))
    assert [f["fname"] for f in files["results"]] == ["home/alice/study/notes.txt"]
    kids = await ok(await api.get(local(seen["children"]), headers=world.bob))
    assert [k["path"] for k in kids["results"]] == ["home/alice/study/t1"]
    sub_files = await ok(await api.get(local(kids["results"][0]["files"]), headers=world.bob))
    (scan,) = sub_files["results"]
    got = await api.get(local(scan["file_resource"]), headers=world.bob)
    assert got.status == 200 and await got.read() == b"DICM"
    assert (await api.get(local(top["file_resource"]), headers=world.bob)).status == 200
    # ... and sees the grants, but may neither grant nor revoke
    listed = await ok(await api.get(local(study["user_permissions"]), headers=world.bob))
    assert [g["id"] for g in listed["results"]] == [grant["id"]]
    resp = await api.post(
        local(study["user_permissions"]), json={"username": "carol"}, headers=world.bob
    )
    assert resp.status == 403
    assert (await api.delete(local(grant["url"]), headers=world.bob)).status == 403
    # the rest of alice's home stays closed to him
    assert await folder_of(api, world.bob, "home/alice/uploads") is None
    uploads = await ok(await api.get("/api/v1/userfiles/", headers=world.alice))
    inside = [f for f in uploads["results"] if f["fname"] == "home/alice/uploads/in.txt"]
    assert (await api.get(local(inside[0]["file_resource"]), headers=world.bob)).status == 404

    # carol sees neither the folder nor its grants
    assert await folder_of(api, world.carol, "home/alice/study") is None
    assert (await api.get(local(study["url"]), headers=world.carol)).status == 404
    assert (await api.get(local(study["user_permissions"]), headers=world.carol)).status == 404
    assert (await api.get(local(grant["url"]), headers=world.carol)).status == 404
    assert (await api.get(local(deep["file_resource"]), headers=world.carol)).status == 404

    # revoked: 404 again
    assert (await api.delete(local(grant["url"]), headers=world.alice)).status == 204
    assert (await api.get(local(study["url"]), headers=world.bob)).status == 404
    assert (await api.get(local(deep["file_resource"]), headers=world.bob)).status == 404
    assert (await api.get(local(grant["url"]), headers=world.alice)).status == 404


async def test_file_shared_with_a_group_is_readable_alone(api: TestClient, world: World) -> None:
    shared = await upload(api, world.alice, "home/alice/share/a.txt", b"a")
    other = await upload(api, world.alice, "home/alice/share/b.txt", b"b")
    share = await folder_of(api, world.alice, "home/alice/share")
    assert share is not None
    files = await ok(await api.get(local(share["files"]), headers=world.alice))
    a = next(f for f in files["results"] if f["id"] == shared["id"])
    assert a["group_permissions"].endswith(f"/filebrowser/files/{a['id']}/grouppermissions/")
    grant = await ok(
        await api.post(local(a["group_permissions"]), json={"grpname": "lab"}, headers=world.alice),
        201,
    )
    assert grant["file_id"] == a["id"] and grant["file_fname"] == "home/alice/share/a.txt"
    assert grant["group_name"] == "lab" and grant["permission"] == "r"
    # bobby (in lab) reads a.txt, not b.txt nor the folder; carol reads nothing
    assert (await ok(await api.get(local(a["url"]), headers=world.bob)))["id"] == a["id"]
    got = await api.get(local(a["file_resource"]), headers=world.bob)
    assert got.status == 200 and await got.read() == b"a"
    assert (await api.get(local(other["file_resource"]), headers=world.bob)).status == 404
    assert (await api.get(local(share["url"]), headers=world.bob)).status == 404
    assert (await api.get(local(a["url"]), headers=world.carol)).status == 404
    assert (await api.get(local(a["group_permissions"]), headers=world.carol)).status == 404
    found = await ok(
        await api.get(local(a["group_permissions"]) + "search/?group_name=lab", headers=world.alice)
    )
    assert [g["id"] for g in found["results"]] == [grant["id"]]
    # a permission change, then leaving the group ends the access
    changed = await ok(
        await api.put(local(grant["url"]), json={"permission": "w"}, headers=world.alice)
    )
    assert changed["permission"] == "w"
    resp = await api.delete(f"/api/v1/groups/users/{world.ids['member']}/", headers=world.admin)
    assert resp.status == 204
    assert (await api.get(local(a["file_resource"]), headers=world.bob)).status == 404


async def test_link_file_grants(api: TestClient, world: World) -> None:
    link = f"/api/v1/filebrowser/linkfiles/{world.ids['link']}/"
    detail = await ok(await api.get(link, headers=world.alice))
    assert detail["user_permissions"].endswith(f"{link}userpermissions/")
    assert (await api.get(link, headers=world.carol)).status == 404
    grant = await ok(
        await api.post(
            local(detail["user_permissions"]), json={"username": "carol"}, headers=world.alice
        ),
        201,
    )
    assert grant["link_file_id"] == world.ids["link"]
    assert grant["link_file_fname"].endswith("up.chrislink")
    assert "/filebrowser/linkfiles/userpermissions/" in grant["url"]
    assert (await ok(await api.get(link, headers=world.carol)))["path"] == "home/alice/uploads"
    # a link file's grant is not reachable as a file's, nor the reverse
    other = grant["url"].replace("/linkfiles/", "/files/")
    assert (await api.get(local(other), headers=world.alice)).status == 404
    out = world.ids["out"]
    resp = await api.get(
        f"/api/v1/filebrowser/linkfiles/{out}/userpermissions/", headers=world.alice
    )
    assert resp.status == 404


async def test_bad_grants_are_clear_400s(api: TestClient, world: World) -> None:
    await upload(api, world.alice, "home/alice/box/x.txt", b"x")
    box = await folder_of(api, world.alice, "home/alice/box")
    assert box is not None
    users, groups = local(box["user_permissions"]), local(box["group_permissions"])
    for body, field in (
        ({"username": "alice"}, "username"),
        ({"username": "nobody"}, "username"),
        ({"username": "bobby", "permission": "x"}, "permission"),
    ):
        resp = await api.post(users, json=body, headers=world.alice)
        assert resp.status == 400, body
        assert field in await resp.json(), body
    resp = await api.post(groups, json={"grpname": "nosuch"}, headers=world.alice)
    assert resp.status == 400 and "grpname" in await resp.json()
    # staff may grant on alice's folder, but not to alice herself
    resp = await api.post(users, json={"username": "alice"}, headers=world.admin)
    assert resp.status == 400
    await ok(await api.post(users, json={"username": "bobby"}, headers=world.admin), 201)
    resp = await api.post(users, json={"username": "bobby"}, headers=world.alice)
    assert resp.status == 400
    # someone else's folder: not even there
    resp = await api.post(users, json={"username": "carol"}, headers=world.carol)
    assert resp.status == 404
