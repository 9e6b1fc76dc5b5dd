"""User files, the file browser, per-instance files and download tokens."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.cube.apiworld import JSON, World, build_world, local, ok, upload

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def world(api: TestClient) -> World:
    return await build_world(api)


async def folder(api: TestClient, who: dict[str, str], path: str) -> dict[str, Any] | None:
    found = await ok(
        await api.get(f"/api/v1/filebrowser/search/?path={path}", headers={**who, **JSON})
    )
    return found["results"][0] if found["results"] else None


async def test_userfile_upload_search_download_delete(api: TestClient, world: World) -> None:
    made = await upload(api, world.alice, "home/alice/data/scan 1.dcm", b"DICM" * 100)
    assert made["fname"] == "home/alice/data/scan 1.dcm" and made["fsize"] == 400
    found = await ok(
        await api.get("/api/v1/userfiles/search/?fname_icontains=scan", headers=world.alice)
    )
    assert [f["id"] for f in found["results"]] == [made["id"]]
    got = await api.get(local(made["file_resource"]), headers=world.alice)
    assert got.status == 200 and await got.read() == b"DICM" * 100
    assert (await api.get(local(made["file_resource"]), headers=world.carol)).status == 404
    assert (await api.delete(f"/api/v1/userfiles/{made['id']}/", headers=world.carol)).status == 404
    assert (await api.delete(f"/api/v1/userfiles/{made['id']}/", headers=world.alice)).status == 204
    assert (await api.get(local(made["file_resource"]), headers=world.alice)).status == 404
    listing = await ok(await api.get("/api/v1/userfiles/", headers=world.alice))
    assert [f["fname"] for f in listing["results"]] == ["home/alice/uploads/in.txt"]
    # an instance's outputs are not uploads and are not deleted as such
    resp = await api.delete(f"/api/v1/userfiles/{world.ids['out']}/", headers=world.alice)
    assert resp.status == 404


async def test_file_browser_walks_folders_files_and_links(api: TestClient, world: World) -> None:
    root = await ok(await api.get("/api/v1/filebrowser/", headers=world.alice))
    (top,) = root["results"]
    assert top["path"] == "" and top["parent"] is None
    kids = await ok(await api.get(local(top["children"]), headers=world.alice))
    assert {"home"} <= {k["path"] for k in kids["results"]}
    home = await folder(api, world.alice, "home")
    assert home is not None
    homes = await ok(await api.get(local(home["children"]), headers=world.alice))
    # other users' homes are not shown
    assert [k["path"] for k in homes["results"]] == ["home/alice"]
    feed = world.ids["feed"]
    inst_folder = await folder(
        api, world.alice, f"home/alice/feeds/feed_{feed}/pl-fscopy_{world.ids['fs_inst']}/data"
    )
    assert inst_folder is not None
    parent = await ok(await api.get(local(inst_folder["parent"]), headers=world.alice))
    assert parent["path"] == f"home/alice/feeds/feed_{feed}/pl-fscopy_{world.ids['fs_inst']}"
    files = await ok(await api.get(local(inst_folder["files"]), headers=world.alice))
    assert [f["fname"].rsplit("/", 1)[1] for f in files["results"]] == ["out.txt"]
    body = await api.get(local(files["results"][0]["file_resource"]), headers=world.alice)
    assert await body.read() == b"output!"
    links = await ok(await api.get(local(inst_folder["link_files"]), headers=world.alice))
    (link,) = links["results"]
    assert link["path"] == "home/alice/uploads" and link["fname"].endswith("up.chrislink")
    detail = await ok(await api.get(local(link["url"]), headers=world.alice))
    assert detail["path"] == "home/alice/uploads"
    # a file is not a link file and the reverse
    assert (
        await api.get(f"/api/v1/filebrowser/linkfiles/{world.ids['out']}/", headers=world.alice)
    ).status == 404
    # carol sees neither alice's folders nor her files
    assert await folder(api, world.carol, "home/alice") is None
    assert (await api.get(local(inst_folder["url"]), headers=world.carol)).status == 404
    assert (await api.get(local(files["results"][0]["url"]), headers=world.carol)).status == 404
    # a path that holds nothing is no folder
    assert await folder(api, world.alice, "home/alice/nothing") is None


async def test_shared_feed_folder_is_browsable(api: TestClient, world: World) -> None:
    feed = world.ids["feed"]
    path = f"home/alice/feeds/feed_{feed}"
    assert await folder(api, world.carol, path) is None
    await ok(
        await api.post(
            f"/api/v1/{feed}/userpermissions/", json={"username": "carol"}, headers=world.alice
        ),
        201,
    )
    shared = await folder(api, world.carol, path)
    assert shared is not None
    # but not the rest of alice's home
    assert await folder(api, world.carol, "home/alice/uploads") is None


async def test_instance_files_and_download_tokens(api: TestClient, world: World) -> None:
    inst = world.ids["fs_inst"]
    files = await ok(await api.get(f"/api/v1/plugins/instances/{inst}/files/", headers=world.alice))
    assert {f["fname"].rsplit("/", 1)[1] for f in files["results"]} == {"out.txt", "up.chrislink"}
    target = next(f for f in files["results"] if f["fname"].endswith("out.txt"))
    url = local(target["file_resource"])
    assert (await api.get(url)).status == 401
    token = await ok(await api.post("/api/v1/downloadtokens/", headers=world.alice), 201)
    got = await api.get(f"{url}?download_token={token['token']}")
    assert got.status == 200 and await got.read() == b"output!"
    assert (await api.get(f"{url}?download_token=nope")).status == 401
    # the token is alice's: it reads only what alice may read
    theirs = await upload(api, world.carol, "home/carol/secret.txt", b"s")
    resp = await api.get(f"{local(theirs['file_resource'])}?download_token={token['token']}")
    assert resp.status == 404
    mine = await ok(await api.get("/api/v1/downloadtokens/", headers=world.alice))
    assert [t["id"] for t in mine["results"]] == [token["id"]]
    assert (
        await api.get(f"/api/v1/downloadtokens/{token['id']}/", headers=world.carol)
    ).status == 404


async def test_move_upload_and_create_folder(api: TestClient, world: World) -> None:
    made = await upload(api, world.alice, "home/alice/a/x.txt", b"x")
    moved = await ok(
        await api.put(
            f"/api/v1/userfiles/{made['id']}/",
            json={"upload_path": "home/alice/b/y.txt"},
            headers=world.alice,
        )
    )
    assert moved["fname"] == "home/alice/b/y.txt"
    got = await api.get(local(moved["file_resource"]), headers=world.alice)
    assert await got.read() == b"x"
    for body, who, status in (
        ({"upload_path": "home/carol/y.txt"}, world.alice, 400),
        ({"upload_path": "home/alice/uploads/in.txt"}, world.alice, 400),
        ({"upload_path": "home/carol/z.txt"}, world.carol, 404),
    ):
        resp = await api.put(f"/api/v1/userfiles/{made['id']}/", json=body, headers=who)
        assert resp.status == status, (body, resp.status)
    created = await ok(
        await api.post(
            "/api/v1/filebrowser/", json={"path": "home/alice/empty"}, headers=world.alice
        ),
        201,
    )
    assert created["path"] == "home/alice/empty"
    again = await api.post(
        "/api/v1/filebrowser/", json={"path": "home/alice/empty"}, headers=world.alice
    )
    assert again.status == 400
    elsewhere = await api.post(
        "/api/v1/filebrowser/", json={"path": "home/carol/x"}, headers=world.alice
    )
    assert elsewhere.status == 400
    home = await folder(api, world.alice, "home/alice")
    assert home is not None
    kids = await ok(await api.get(local(home["children"]), headers=world.alice))
    assert {"home/alice/empty", "home/alice/b", "home/alice/uploads"} <= {
        k["path"] for k in kids["results"]
    }
    assert "home/alice/a" not in {k["path"] for k in kids["results"]}
