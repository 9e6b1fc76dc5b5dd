"""Contract tests: every resource in application/json and Collection+JSON, the API root.

Each GET below is fetched in both media types; the Collection+JSON document
must carry the same resources as the JSON one (``url`` as ``href``, links as
``links``, the rest as ``data``, ``count`` as ``total``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cube import schema
from tests.cube.apiworld import CJ, JSON, World, basic, build_world, local, ok

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def world(api: TestClient) -> World:
    return await build_world(api)


def assert_same(cj: dict[str, Any], js: dict[str, Any], many: bool) -> None:
    """The Collection+JSON document ``cj`` renders the JSON body ``js``."""
    coll = cj["collection"]
    assert coll["version"] == "1.0"
    assert coll["href"].startswith("http://")
    objs = js["results"] if many else [js]
    if many:
        assert coll["total"] == js["count"]
        rels = {link["rel"]: link["href"] for link in coll["links"]}
        assert rels.get("next") == js["next"]
        assert rels.get("previous") == js["previous"]
        for rel, href in js.get("collection_links", {}).items():
            assert rels[rel] == href
    assert [item["href"] for item in coll["items"]] == [o["url"] for o in objs]
    for item, obj in zip(coll["items"], objs, strict=True):
        data = {d["name"]: d["value"] for d in item["data"]}
        links = {link["rel"]: link["href"] for link in item["links"]}
        assert not set(data) & set(links)
        for key, value in data.items():
            assert obj[key] == value, key
        for key, href in links.items():
            assert obj[key] == href, key
            assert href.startswith("http://")
        missing = set(obj) - {"url"} - set(data) - set(links)
        # only empty links are left out of an item
        assert all(not obj[k] for k in missing), missing


GETS: list[tuple[str, str, bool]] = [
    # (who, path template, is a list)
    ("alice", "/api/v1/", True),
    ("alice", "/api/v1/search/?name=alice", True),
    ("alice", "/api/v1/{feed}/", False),
    ("alice", "/api/v1/{feed}/plugininstances/", True),
    ("alice", "/api/v1/{feed}/files/", True),
    ("alice", "/api/v1/note{feed}/", False),
    ("alice", "/api/v1/{feed}/comments/", True),
    ("alice", "/api/v1/{feed}/tags/", True),
    ("alice", "/api/v1/{feed}/taggings/", True),
    ("alice", "/api/v1/{feed}/userpermissions/", True),
    ("alice", "/api/v1/{feed}/grouppermissions/", True),
    ("alice", "/api/v1/publicfeeds/", True),
    ("alice", "/api/v1/chrisinstance/1/", False),
    ("alice", "/api/v1/computeresources/", True),
    ("alice", "/api/v1/computeresources/search/?name=site", True),
    ("alice", "/api/v1/computeresources/1/", False),
    ("alice", "/api/v1/plugins/", True),
    ("alice", "/api/v1/plugins/search/?name_exact=pl-fscopy", True),
    ("alice", "/api/v1/plugins/{fs}/", False),
    ("alice", "/api/v1/plugins/{fs}/parameters/", True),
    ("alice", "/api/v1/plugins/{fs}/computeresources/", True),
    ("alice", "/api/v1/plugins/{fs}/instances/", True),
    ("alice", "/api/v1/plugins/metas/", True),
    ("alice", "/api/v1/plugins/metas/search/?type=ds", True),
    ("alice", "/api/v1/plugins/metas/1/", False),
    ("alice", "/api/v1/plugins/metas/1/plugins/", True),
    ("alice", "/api/v1/plugins/instances/", True),
    ("alice", "/api/v1/plugins/instances/search/?status=scheduled&plugin_name=fscopy", True),
    ("alice", "/api/v1/plugins/instances/{fs_inst}/", False),
    ("alice", "/api/v1/plugins/instances/{fs_inst}/descendants/", True),
    ("alice", "/api/v1/plugins/instances/{fs_inst}/parameters/", True),
    ("alice", "/api/v1/plugins/instances/{fs_inst}/files/", True),
    ("alice", "/api/v1/groups/", True),
    ("alice", "/api/v1/groups/search/?name=lab", True),
    ("alice", "/api/v1/groups/{group}/", False),
    ("alice", "/api/v1/groups/{group}/users/", True),
    ("alice", "/api/v1/groups/users/{member}/", False),
    ("alice", "/api/v1/userfiles/", True),
    ("alice", "/api/v1/userfiles/search/?fname=home/alice/", True),
    ("alice", "/api/v1/userfiles/{userfile}/", False),
    ("alice", "/api/v1/files/", True),
    ("alice", "/api/v1/files/{out}/", False),
    ("alice", "/api/v1/filebrowser/", True),
    ("alice", "/api/v1/filebrowser/search/?path=home/alice", True),
    ("alice", "/api/v1/downloadtokens/", True),
    ("alice", "/api/v1/tags/", True),
    ("alice", "/api/v1/servicefiles/", True),
    ("admin", "/chris-admin/api/v1/", True),
    ("admin", "/chris-admin/api/v1/{fs}/", False),
    ("admin", "/chris-admin/api/v1/computeresources/", True),
    ("admin", "/chris-admin/api/v1/computeresources/1/", False),
    ("alice", "/api/v1/users/", True),
    ("admin", "/api/v1/pacs/", True),
    ("admin", "/api/v1/pacs/queries/", True),
    ("admin", "/api/v1/pacs/series/", True),
    ("admin", "/api/v1/pacs/files/", True),
    ("admin", "/api/v1/pacsfiles/", True),
]


async def test_every_resource_in_both_media_types(api: TestClient, world: World) -> None:
    for who, template, many in GETS:
        path = template.format(**world.ids)
        auth = getattr(world, who)
        js = await ok(await api.get(path, headers={**auth, **JSON}))
        resp = await api.get(path, headers={**auth, **CJ})
        assert resp.content_type == "application/vnd.collection+json", path
        cj = await ok(resp)
        if many:
            assert set(js) >= {"count", "next", "previous", "results"}, path
        else:
            assert "url" in js or "id" in js, path
        try:
            assert_same(cj, js, many)
        except AssertionError as exc:
            raise AssertionError(f"{path}: {exc}") from exc


async def test_no_accept_header_gets_collection_json(api: TestClient, world: World) -> None:
    """ChRIS's first renderer: ``*/*`` (python-chrisclient with a token) gets Collection+JSON."""
    resp = await api.get("/api/v1/plugins/", headers={**world.alice, "Accept": "*/*"})
    assert resp.content_type == "application/vnd.collection+json"
    weighted = await api.get(
        "/api/v1/plugins/",
        headers={
            **world.alice,
            "Accept": "application/vnd.collection+json;q=0.5, application/json",
        },
    )
    assert weighted.content_type == "application/json"


async def test_collection_json_queries_and_templates(api: TestClient, world: World) -> None:
    cj = await ok(await api.get("/api/v1/plugins/", headers={**world.alice, **CJ}))
    (query,) = cj["collection"]["queries"]
    assert query["rel"] == "search" and query["href"].endswith("/api/v1/plugins/search/")
    assert {"name", "name_exact", "version", "type"} <= {d["name"] for d in query["data"]}
    fs = world.ids["fs"]
    cj = await ok(await api.get(f"/api/v1/plugins/{fs}/instances/", headers={**world.alice, **CJ}))
    names = {d["name"] for d in cj["collection"]["template"]["data"]}
    assert {"title", "previous_id", "compute_resource_name", "cpu_limit"} <= names
    feed = world.ids["feed"]
    cj = await ok(await api.get(f"/api/v1/{feed}/", headers={**world.alice, **CJ}))
    assert {d["name"] for d in cj["collection"]["template"]["data"]} == {"name", "public"}
    # a search list offers no further search
    cj = await ok(await api.get("/api/v1/plugins/search/?name=x", headers={**world.alice, **CJ}))
    assert "queries" not in cj["collection"]
    assert cj["collection"]["total"] == 0


async def test_template_bodies_create_and_change(api: TestClient, world: World) -> None:
    def template(**fields: Any) -> dict[str, Any]:
        return {"template": {"data": [{"name": k, "value": v} for k, v in fields.items()]}}

    cj_post = {**world.alice, **CJ, "Content-Type": "application/vnd.collection+json"}
    feed = world.ids["feed"]
    doc = await ok(
        await api.put(f"/api/v1/{feed}/", json=template(name="renamed"), headers=cj_post)
    )
    data = {d["name"]: d["value"] for d in doc["collection"]["items"][0]["data"]}
    assert data["name"] == "renamed"
    doc = await ok(
        await api.post(
            "/api/v1/tags/", json=template(name="brain", color="#ff0000"), headers=cj_post
        ),
        201,
    )
    tag_href = doc["collection"]["items"][0]["href"]
    assert tag_href.endswith("/")
    inst = world.ids["fs_inst"]
    doc = await ok(
        await api.put(
            f"/api/v1/plugins/instances/{inst}/", json=template(title="t2"), headers=cj_post
        )
    )
    data = {d["name"]: d["value"] for d in doc["collection"]["items"][0]["data"]}
    assert data["title"] == "t2"
    # an empty PUT returns the instance unchanged
    empty = await ok(
        await api.put(f"/api/v1/plugins/instances/{inst}/", headers={**world.alice, **JSON})
    )
    assert empty["title"] == "t2" and empty["status"] == "scheduled"
    # sign-up through a template, no credentials
    doc = await ok(
        await api.post(
            "/api/v1/users/",
            json=template(username="david", password="david-password", email="d@x.org"),
            headers={**CJ, "Content-Type": "application/vnd.collection+json"},
        ),
        201,
    )
    data = {d["name"]: d["value"] for d in doc["collection"]["items"][0]["data"]}
    assert data["username"] == "david" and "password" not in data


async def test_errors_in_both_media_types(api: TestClient, world: World) -> None:
    resp = await api.get("/api/v1/plugins/", headers=CJ)
    assert resp.status == 401
    doc = await resp.json(content_type=None)
    assert "credentials" in doc["collection"]["error"]["message"]
    resp = await api.get("/api/v1/plugins/", headers=JSON)
    assert resp.status == 401 and "credentials" in (await resp.json())["detail"]
    resp = await api.get("/api/v1/plugins/search/?id=abc", headers={**world.alice, **CJ})
    assert resp.status == 400
    assert "id" in (await resp.json(content_type=None))["collection"]["error"]["message"]


async def test_basic_auth_and_auth_token(api: TestClient, world: World) -> None:
    resp = await api.get("/api/v1/", headers={**basic("alice", "alice-password"), **JSON})
    assert resp.status == 200
    resp = await api.get("/api/v1/", headers={**basic("alice", "wrong-password"), **JSON})
    assert resp.status == 401
    body = await ok(
        await api.post(
            "/api/v1/auth-token/", json={"username": "bobby", "password": "bobby-password"}
        )
    )
    assert body["token"] == world.bob["Authorization"].removeprefix("Token ")


ROOT_RELS = {
    "chrisinstance",
    "compute_resources",
    "plugin_metas",
    "plugins",
    "plugin_instances",
    "tags",
    "userfiles",
    "filebrowser",
    "pacs",
    "pacsqueries",
    "pacsseries",
    "pacsfiles",
    "download_tokens",
    "groups",
    "user",
    "files",
    "public_feeds",
    "servicefiles",
    "pipelines",
    "pipelinesourcefiles",
    "workflows",
    "pipeline_instances",
}


async def test_root_links_all_resolve(api: TestClient, world: World) -> None:
    for who, expect_admin in (("admin", True), ("alice", False)):
        auth = getattr(world, who)
        root = await ok(await api.get("/api/v1/", headers={**auth, **JSON}))
        links = root["collection_links"]
        assert ROOT_RELS <= set(links)
        assert ("admin" in links) is expect_admin
        for rel, href in links.items():
            resp = await api.get(local(href), headers={**auth, **JSON})
            # PACS links answer 403 to non-members, never 404
            allowed = {200} if who == "admin" or not rel.startswith("pacs") else {403}
            assert resp.status in allowed, (who, rel, href, resp.status)
        me = await ok(await api.get(local(links["user"]), headers={**auth, **JSON}))
        assert me["username"] == ("chris" if who == "admin" else "alice")


async def test_auth_token_is_always_json(api: TestClient, world: World) -> None:
    """As DRF's ``obtain_auth_token``: one renderer, JSON, whatever is accepted."""
    creds = {"username": "alice", "password": "alice-password"}
    resp = await api.post("/api/v1/auth-token/", json=creds, headers=CJ)
    assert resp.content_type == "application/json"
    assert (await resp.json())["token"] == world.alice["Authorization"].removeprefix("Token ")


async def test_search_filters_by_kind(api: TestClient, world: World) -> None:
    """Dates, numbers, booleans and sub-trees filter; a bad value is a 400 naming the filter."""
    feed = world.ids["feed"]

    async def ids(path: str) -> list[int]:
        body = await ok(await api.get(path, headers={**world.alice, **JSON}))
        return [r["id"] for r in body["results"]]

    assert await ids("/api/v1/search/?min_creation_date=2000-01-01T00:00:00") == [feed]
    assert await ids("/api/v1/search/?min_creation_date=2000-01-01T00:00:00%2B00:00") == [feed]
    assert await ids("/api/v1/search/?max_creation_date=2000-01-01T00:00:00") == []
    assert await ids(f"/api/v1/search/?id={feed}&name=ALICE") == [feed]
    fs = world.ids["fs_inst"]
    ds = await ok(
        await api.post(
            f"/api/v1/plugins/{world.ids['ds']}/instances/",
            json={"previous_id": fs, "title": "child"},
            headers=world.alice,
        ),
        201,
    )
    base = "/api/v1/plugins/instances/search/"
    assert sorted(await ids(f"{base}?root_id={fs}")) == [fs, ds["id"]]
    assert await ids(f"{base}?root_id={ds['id']}") == [ds["id"]]
    assert sorted(await ids(f"{base}?active=true")) == [fs, ds["id"]]
    assert await ids(f"{base}?active=false") == []
    assert await ids(f"{base}?previous_id={fs}&plugin_type=ds") == [ds["id"]]
    assert await ids(f"{base}?owner_username=alice&title=chi") == [ds["id"]]
    assert await ids(f"{base}?plugin_name_exact=pl-dsthing&plugin_version=2.0") == [ds["id"]]
    # deletion is synchronous: what can be listed is never being deleted
    assert sorted(await ids(f"{base}?deletion_status=inactive")) == [fs, ds["id"]]
    assert await ids(f"{base}?deletion_status=pending") == []
    assert await ids(f"{base}?deletion_status=failed&feed_id={feed}") == []
    for bad in ("root_id=x", "active=maybe", "min_start_date=yesterday", "deletion_status=gone"):
        resp = await api.get(f"{base}?{bad}", headers={**world.alice, **JSON})
        assert resp.status == 400
        assert bad.split("=")[0] in await resp.json()


async def test_instance_summary_is_a_json_string_as_chris_serves_it(
    api: TestClient, world: World
) -> None:
    path = f"/api/v1/plugins/instances/{world.ids['fs_inst']}/"
    js = await ok(await api.get(path, headers={**world.alice, **JSON}))
    assert isinstance(js["summary"], str)
    summary = json.loads(js["summary"])
    assert summary["compute"]["return"]["status"] is False  # ChRIS's default shape
    cj = await ok(await api.get(path, headers={**world.alice, **CJ}))
    data = {d["name"]: d["value"] for d in cj["collection"]["items"][0]["data"]}
    assert data["summary"] == js["summary"]
    # CUBE's own client reads the string back as the dict
    assert schema.PluginInstance.model_validate(js).summary == summary
    listed = await ok(
        await api.get(
            f"/api/v1/{world.ids['feed']}/plugininstances/", headers={**world.alice, **JSON}
        )
    )
    assert all(isinstance(i["summary"], str) for i in listed["results"])
    doc = await ok(await api.get("/api/v1/schema/"))
    props = doc["components"]["schemas"]["PluginInstance"]["properties"]
    assert props["summary"]["type"] == "string"


async def test_instance_output_folder_links_its_file_browser_folder(
    api: TestClient, world: World
) -> None:
    path = f"/api/v1/plugins/instances/{world.ids['fs_inst']}/"
    js = await ok(await api.get(path, headers={**world.alice, **JSON}))
    folder = await ok(await api.get(local(js["output_folder"]), headers={**world.alice, **JSON}))
    assert folder["path"] == js["output_path"]
    files = await ok(await api.get(local(folder["files"]), headers={**world.alice, **JSON}))
    assert "out.txt" in [f["fname"].rsplit("/", 1)[-1] for f in files["results"]]
    cj = await ok(await api.get(path, headers={**world.alice, **CJ}))
    links = {link["rel"]: link["href"] for link in cj["collection"]["items"][0]["links"]}
    assert links["output_folder"] == js["output_folder"]
    # another user cannot open it
    resp = await api.get(local(js["output_folder"]), headers={**world.carol, **JSON})
    assert resp.status == 404


async def test_feed_folder_links_its_file_browser_folder(api: TestClient, world: World) -> None:
    path = f"/api/v1/{world.ids['feed']}/"
    js = await ok(await api.get(path, headers={**world.alice, **JSON}))
    folder = await ok(await api.get(local(js["folder"]), headers={**world.alice, **JSON}))
    assert folder["path"] == js["folder_path"] == f"home/alice/feeds/feed_{world.ids['feed']}"
    listed = await ok(await api.get("/api/v1/", headers={**world.alice, **JSON}))
    assert [f["folder"] for f in listed["results"]] == [js["folder"]]
    cj = await ok(await api.get(path, headers={**world.alice, **CJ}))
    links = {link["rel"]: link["href"] for link in cj["collection"]["items"][0]["links"]}
    assert links["folder"] == js["folder"]
    resp = await api.get(local(js["folder"]), headers={**world.carol, **JSON})
    assert resp.status == 404


async def test_deleted_instances_and_feeds_leave_no_folders(api: TestClient, world: World) -> None:
    fs = await ok(
        await api.get(
            f"/api/v1/plugins/instances/{world.ids['fs_inst']}/", headers={**world.alice, **JSON}
        )
    )
    ds = await ok(
        await api.post(
            f"/api/v1/plugins/{world.ids['ds']}/instances/",
            json={"previous_id": fs["id"]},
            headers=world.alice,
        ),
        201,
    )
    await ok(await api.get(local(ds["output_folder"]), headers={**world.alice, **JSON}))
    await ok(await api.put(local(ds["url"]), json={"status": "cancelled"}, headers=world.alice))
    assert (await api.delete(local(ds["url"]), headers=world.alice)).status == 204
    resp = await api.get(local(ds["output_folder"]), headers={**world.alice, **JSON})
    assert resp.status == 404
    # the fs instance's folder no longer lists the deleted instance's directory
    fs_dir = fs["output_path"].removesuffix("/data")
    found = await ok(
        await api.get(f"/api/v1/filebrowser/search/?path={fs_dir}", headers={**world.alice, **JSON})
    )
    (folder,) = found["results"]
    children = await ok(await api.get(local(folder["children"]), headers={**world.alice, **JSON}))
    assert [c["path"] for c in children["results"]] == [fs["output_path"]]
    assert (await api.delete(f"/api/v1/{world.ids['feed']}/", headers=world.alice)).status == 204
    for gone in (fs["output_folder"], folder["url"]):
        resp = await api.get(local(gone), headers={**world.alice, **JSON})
        assert resp.status == 404, gone


async def test_file_browser_grants_in_both_media_types(api: TestClient, world: World) -> None:
    """Folder, file and link file grants, made through a Collection+JSON template
    and read back in both media types."""

    def template(**fields: Any) -> dict[str, Any]:
        return {"template": {"data": [{"name": k, "value": v} for k, v in fields.items()]}}

    cj_post = {**world.alice, **CJ, "Content-Type": "application/vnd.collection+json"}
    found = await ok(
        await api.get(
            "/api/v1/filebrowser/search/?path=home/alice/uploads", headers={**world.alice, **JSON}
        )
    )
    uploads = found["results"][0]["id"]
    made: list[str] = []
    for under, body in (
        (f"/api/v1/filebrowser/{uploads}/userpermissions/", {"username": "carol"}),
        (f"/api/v1/filebrowser/{uploads}/grouppermissions/", {"grpname": "lab"}),
        (
            f"/api/v1/filebrowser/files/{world.ids['userfile']}/userpermissions/",
            {"username": "carol"},
        ),
        (f"/api/v1/filebrowser/files/{world.ids['out']}/grouppermissions/", {"grpname": "lab"}),
        (
            f"/api/v1/filebrowser/linkfiles/{world.ids['link']}/userpermissions/",
            {"username": "carol"},
        ),
        (
            f"/api/v1/filebrowser/linkfiles/{world.ids['link']}/grouppermissions/",
            {"grpname": "lab"},
        ),
    ):
        doc = await ok(
            await api.post(under, json=template(**body, permission="r"), headers=cj_post), 201
        )
        (item,) = doc["collection"]["items"]
        data = {d["name"]: d["value"] for d in item["data"]}
        assert data["permission"] == "r"
        made.append(local(item["href"]))
        # the list offers the template to create one
        cj = await ok(await api.get(under, headers={**world.alice, **CJ}))
        names = {d["name"] for d in cj["collection"]["template"]["data"]}
        assert names == {next(iter(body)), "permission"}
        made.extend([under, under + "search/?permission=r"])
    for path in made:
        many = not path.rstrip("/").split("/")[-1].isdigit()
        js = await ok(await api.get(path, headers={**world.alice, **JSON}))
        cj = await ok(await api.get(path, headers={**world.alice, **CJ}))
        if many:
            assert js["count"] == 1, path
        try:
            assert_same(cj, js, many)
        except AssertionError as exc:
            raise AssertionError(f"{path}: {exc}") from exc
    # folders, files and link files link their grants in both media types
    for path in (
        f"/api/v1/filebrowser/{uploads}/",
        f"/api/v1/filebrowser/files/{world.ids['out']}/",
        f"/api/v1/filebrowser/linkfiles/{world.ids['link']}/",
    ):
        js = await ok(await api.get(path, headers={**world.alice, **JSON}))
        assert js["group_permissions"].endswith(f"{path}grouppermissions/")
        assert js["user_permissions"].endswith(f"{path}userpermissions/")
        cj = await ok(await api.get(path, headers={**world.alice, **CJ}))
        assert_same(cj, js, False)
