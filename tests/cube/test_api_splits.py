"""Plugin instance splits (``plugins/instances/<id>/splits/``): one
``pl-topologicalcopy`` child per filter expression, in both media types,
for the feed's owner only."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.cube.apiworld import CJ, JSON, World, build_world, local, ok
from tests.cube.test_api_contract import assert_same
from tests.cube.test_ts import TS_DESCRIPTOR

pytestmark = pytest.mark.asyncio

TOPOLOGICALCOPY = {**TS_DESCRIPTOR, "name": "pl-topologicalcopy", "dock_image": "t/tc:1.0"}


@pytest.fixture
async def world(api: TestClient) -> World:
    return await build_world(api)


async def register_topologicalcopy(api: TestClient, world: World) -> int:
    body = await ok(
        await api.post(
            "/chris-admin/api/v1/",
            json={"descriptor": TOPOLOGICALCOPY, "compute_names": "site"},
            headers=world.admin,
        ),
        201,
    )
    return int(body["id"])


async def instance_count(api: TestClient, world: World) -> int:
    found = await ok(await api.get("/api/v1/plugins/instances/", headers={**world.admin, **JSON}))
    return int(found["count"])


async def params_of(api: TestClient, world: World, inst_id: int) -> dict[str, Any]:
    found = await ok(
        await api.get(
            f"/api/v1/plugins/instances/{inst_id}/parameters/", headers={**world.alice, **JSON}
        )
    )
    return {p["param_name"]: p["value"] for p in found["results"]}


async def test_split_makes_one_ts_child_per_filter(api: TestClient, world: World) -> None:
    inst = world.ids["fs_inst"]
    splits = f"/api/v1/plugins/instances/{inst}/splits/"
    # without pl-topologicalcopy the split says what is missing
    resp = await api.post(splits, json={"filter": "x"}, headers={**world.alice, **JSON})
    assert resp.status == 400
    assert "pl-topologicalcopy" in (await resp.json())["detail"]
    tc = await register_topologicalcopy(api, world)
    made = await ok(
        await api.post(splits, json={"filter": r"\.txt$, ^out"}, headers={**world.alice, **JSON}),
        201,
    )
    assert made["filter"] == r"\.txt$,^out" and made["plugin_inst_id"] == inst
    child_ids = [int(i) for i in made["created_plugin_inst_ids"].split(",")]
    assert len(child_ids) == 2
    for child_id, expression in zip(child_ids, (r"\.txt$", "^out"), strict=True):
        child = await ok(
            await api.get(f"/api/v1/plugins/instances/{child_id}/", headers={**world.alice, **JSON})
        )
        assert (child["plugin_id"], child["previous_id"], child["feed_id"]) == (
            tc,
            inst,
            world.ids["feed"],
        )
        assert child["plugin_type"] == "ts"
        assert child["status"] == "waiting"  # its parent is still scheduled
        values = await params_of(api, world, child_id)
        assert values["plugininstances"] == str(inst) and values["filter"] == expression
    # the instance links its splits; list and item in both media types
    detail = await ok(
        await api.get(f"/api/v1/plugins/instances/{inst}/", headers={**world.alice, **JSON})
    )
    assert local(detail["splits"]) == splits
    for path, many in ((splits, True), (local(made["url"]), False)):
        js = await ok(await api.get(path, headers={**world.alice, **JSON}))
        cj = await ok(await api.get(path, headers={**world.alice, **CJ}))
        assert_same(cj, js, many)
    listed = await ok(await api.get(splits, headers={**world.alice, **JSON}))
    assert [s["id"] for s in listed["results"]] == [made["id"]]
    # a Collection+JSON template: an empty filter makes one child that keeps every file
    cj_post = {**world.alice, **CJ, "Content-Type": "application/vnd.collection+json"}
    doc = await ok(
        await api.post(
            splits, json={"template": {"data": [{"name": "filter", "value": ""}]}}, headers=cj_post
        ),
        201,
    )
    data = {d["name"]: d["value"] for d in doc["collection"]["items"][0]["data"]}
    (only,) = data["created_plugin_inst_ids"].split(",")
    assert (await params_of(api, world, int(only)))["filter"] == ""
    # the list offers the POST template
    cj = await ok(await api.get(splits, headers={**world.alice, **CJ}))
    names = {d["name"] for d in cj["collection"]["template"]["data"]}
    assert names == {"filter", "compute_resource_name"}


async def test_bad_splits_are_refused_and_leave_nothing(api: TestClient, world: World) -> None:
    await register_topologicalcopy(api, world)
    splits = f"/api/v1/plugins/instances/{world.ids['fs_inst']}/splits/"
    before = await instance_count(api, world)
    for body, field, words in (
        ({"filter": "ok,("}, "filter", "not a regular expression"),
        ({"filter": 3}, "filter", "string"),
        ({"filter": ",".join(["a"] * 101)}, "filter", "at most 100"),
        ({"filter": "a", "compute_resource_name": "nowhere"}, None, "nowhere"),
    ):
        resp = await api.post(splits, json=body, headers={**world.alice, **JSON})
        assert resp.status == 400, (body, resp.status)
        text = await resp.text()
        assert words in text, (body, text)
        if field is not None:
            assert field in await resp.json()
        resp = await api.post(splits, json=body, headers={**world.alice, **CJ})
        assert resp.status == 400
        assert words in (await resp.json(content_type=None))["collection"]["error"]["message"]
    assert await instance_count(api, world) == before
    listed = await ok(await api.get(splits, headers={**world.alice, **JSON}))
    assert listed["count"] == 0


async def test_only_the_feed_owner_splits_and_others_see_nothing(
    api: TestClient, world: World
) -> None:
    await register_topologicalcopy(api, world)
    feed, inst = world.ids["feed"], world.ids["fs_inst"]
    splits = f"/api/v1/plugins/instances/{inst}/splits/"
    made = await ok(await api.post(splits, json={"filter": "a"}, headers=world.alice), 201)
    split = local(made["url"])
    # carol cannot see the private feed: 404 everywhere; anonymous: 401
    for method, path in (("GET", splits), ("GET", split), ("POST", splits)):
        resp = await api.request(
            method, path, json={"filter": "b"}, headers={**world.carol, **JSON}
        )
        assert resp.status == 404, (method, path, resp.status)
        resp = await api.request(method, path, json={"filter": "b"}, headers=JSON)
        assert resp.status == 401, (method, path, resp.status)
    # shared with carol: she reads the splits but may not add one
    await ok(
        await api.post(
            f"/api/v1/{feed}/userpermissions/", json={"username": "carol"}, headers=world.alice
        ),
        201,
    )
    await ok(await api.get(split, headers={**world.carol, **JSON}))
    resp = await api.post(splits, json={"filter": "b"}, headers={**world.carol, **JSON})
    assert resp.status == 403
    listed = await ok(await api.get(splits, headers={**world.carol, **JSON}))
    assert listed["count"] == 1
    # a public feed's splits are readable anonymously
    await ok(await api.put(f"/api/v1/{feed}/", json={"public": True}, headers=world.alice))
    await ok(await api.get(split, headers=JSON))
    # deleting the feed deletes its splits
    resp = await api.delete(f"/api/v1/{feed}/", headers=world.alice)
    assert resp.status == 204
    resp = await api.get(split, headers={**world.admin, **JSON})
    assert resp.status == 404


async def test_deleting_an_instance_deletes_its_splits(api: TestClient, world: World) -> None:
    await register_topologicalcopy(api, world)
    ds = await ok(
        await api.post(
            f"/api/v1/plugins/{world.ids['ds']}/instances/",
            json={"previous_id": world.ids["fs_inst"]},
            headers=world.alice,
        ),
        201,
    )
    made = await ok(
        await api.post(
            f"/api/v1/plugins/instances/{ds['id']}/splits/",
            json={"filter": "a,b"},
            headers=world.alice,
        ),
        201,
    )
    # the ds instance and its children wait on the fs one: cancel, then delete the subtree
    await ok(
        await api.put(
            f"/api/v1/plugins/instances/{ds['id']}/",
            json={"status": "cancelled"},
            headers=world.alice,
        )
    )
    resp = await api.delete(f"/api/v1/plugins/instances/{ds['id']}/", headers=world.alice)
    assert resp.status == 204, await resp.text()
    resp = await api.get(local(made["url"]), headers={**world.alice, **JSON})
    assert resp.status == 404
    for child in made["created_plugin_inst_ids"].split(","):
        resp = await api.get(f"/api/v1/plugins/instances/{child}/", headers=world.alice)
        assert resp.status == 404


async def test_openapi_describes_splits(api: TestClient) -> None:
    doc = await ok(await api.get("/api/v1/schema/"))
    paths = doc["paths"]
    assert set(paths["/api/v1/plugins/instances/{id}/splits/"]) == {"get", "post"}
    post = paths["/api/v1/plugins/instances/{id}/splits/"]["post"]
    props = post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert set(props) == {"filter", "compute_resource_name"}
    assert "get" in paths["/api/v1/plugins/instances/splits/{id}/"]
    assert "PluginInstanceSplit" in doc["components"]["schemas"]
