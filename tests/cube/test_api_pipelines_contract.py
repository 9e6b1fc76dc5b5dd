"""Contract tests of pipelines, pipeline source files and workflows in both media types.

As :mod:`tests.cube.test_api_contract`: every GET is fetched in
``application/json`` and in Collection+JSON, and the two must carry the same
resources; lists offer their search queries, writable resources their
templates, and Collection+JSON templates create and change them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from cube.api.common import STORAGE
from tests.cube.apiworld import CJ, JSON, World, build_world, local, ok
from tests.cube.test_api_contract import assert_same

pytestmark = pytest.mark.asyncio

#: One ds node; every parameter of pl-dsthing has a default.
SOURCE = """
name: alice's pipeline
authors: Alice <alice@x.org>
category: test
description: one ds node
locked: false
plugin_tree:
  - title: only
    plugin: pl-dsthing v2.0
    previous: null
    plugin_parameter_defaults: {prefix: "p_", count: 2}
"""


def cj_template(**fields: Any) -> dict[str, Any]:
    """A Collection+JSON write body."""
    return {"template": {"data": [{"name": k, "value": v} for k, v in fields.items()]}}


def cj_data(doc: dict[str, Any]) -> dict[str, Any]:
    """The data of the first item of a Collection+JSON document."""
    return {d["name"]: d["value"] for d in doc["collection"]["items"][0]["data"]}


def cj_links(doc: dict[str, Any]) -> dict[str, str]:
    """The links of the first item of a Collection+JSON document."""
    return {link["rel"]: link["href"] for link in doc["collection"]["items"][0]["links"]}


@pytest.fixture
async def world(api: TestClient) -> World:
    """The API world, plus alice's pipeline (from a YAML source file) and a workflow of it."""
    world = await build_world(api)
    form = FormData()
    form.add_field("type", "yaml")
    form.add_field("fname", SOURCE.encode(), filename="mine.yml")
    source = await ok(
        await api.post(
            "/api/v1/pipelines/sourcefiles/", data=form, headers={**world.alice, **JSON}
        ),
        201,
    )
    world.ids["source"] = source["id"]
    world.ids["pipeline"] = source["pipeline_id"]
    pid = source["pipeline_id"]
    pipings = await ok(
        await api.get(f"/api/v1/pipelines/{pid}/pipings/", headers={**world.alice, **JSON})
    )
    world.ids["piping"] = pipings["results"][0]["id"]
    defaults = await ok(
        await api.get(f"/api/v1/pipelines/{pid}/parameters/", headers={**world.alice, **JSON})
    )
    world.ids["default"] = defaults["results"][0]["id"]
    world.ids["default_type"] = defaults["results"][0]["type"]  # type: ignore[assignment]
    workflow = await ok(
        await api.post(
            f"/api/v1/pipelines/{pid}/workflows/",
            json={"previous_plugin_inst_id": world.ids["fs_inst"], "title": "run"},
            headers={**world.alice, **JSON},
        ),
        201,
    )
    world.ids["workflow"] = workflow["id"]
    return world


GETS: list[tuple[str, bool]] = [
    # (path template, is a list); all as alice
    ("/api/v1/pipelines/", True),
    ("/api/v1/pipelines/search/?name=ALICE&owner_username=alice", True),
    ("/api/v1/pipelines/{pipeline}/", False),
    ("/api/v1/pipelines/{pipeline}/json/", False),
    ("/api/v1/pipelines/{pipeline}/plugins/", True),
    ("/api/v1/pipelines/{pipeline}/pipings/", True),
    ("/api/v1/pipelines/{pipeline}/parameters/", True),
    ("/api/v1/pipelines/{pipeline}/defaultparameters/", True),
    ("/api/v1/pipelines/{pipeline}/workflows/", True),
    ("/api/v1/pipelines/pipings/{piping}/", False),
    ("/api/v1/pipelines/{default_type}-parameter/{default}/", False),
    ("/api/v1/pipelines/sourcefiles/", True),
    ("/api/v1/pipelines/sourcefiles/search/?type=yaml&pipeline_id={pipeline}", True),
    ("/api/v1/pipelines/sourcefiles/{source}/", False),
    ("/api/v1/pipelines/workflows/", True),
    ("/api/v1/pipelines/workflows/search/?title=RU&pipeline_name=alice", True),
    ("/api/v1/pipelines/workflows/{workflow}/", False),
    ("/api/v1/pipelines/workflows/{workflow}/plugininstances/", True),
    ("/api/v1/plugins/instances/search/?workflow_id={workflow}", True),
]


async def test_every_pipeline_resource_in_both_media_types(api: TestClient, world: World) -> None:
    for template, many in GETS:
        path = template.format(**world.ids)
        js = await ok(await api.get(path, headers={**world.alice, **JSON}))
        resp = await api.get(path, headers={**world.alice, **CJ})
        assert resp.content_type == "application/vnd.collection+json", path
        cj = await ok(resp)
        if many:
            # every list above has something in it, so the comparison is not vacuous
            assert js["count"] >= 1 and cj["collection"]["items"], path
        try:
            assert_same(cj, js, many)
        except AssertionError as exc:
            raise AssertionError(f"{path}: {exc}") from exc


async def test_links_of_pipeline_resources(api: TestClient, world: World) -> None:
    """Hyperlinked fields are Collection+JSON links, and they lead somewhere."""
    ids = world.ids
    cases = {
        f"/api/v1/pipelines/{ids['pipeline']}/": {
            "plugins",
            "plugin_pipings",
            "default_parameters",
            "workflows",
            "json_repr",
        },
        f"/api/v1/pipelines/pipings/{ids['piping']}/": {"plugin", "pipeline"},
        f"/api/v1/pipelines/{ids['default_type']}-parameter/{ids['default']}/": {
            "plugin_piping",
            "plugin_param",
        },
        f"/api/v1/pipelines/sourcefiles/{ids['source']}/": {"file_resource", "pipeline"},
        f"/api/v1/pipelines/workflows/{ids['workflow']}/": {"pipeline", "plugin_instances"},
    }
    for path, rels in cases.items():
        doc = await ok(await api.get(path, headers={**world.alice, **CJ}))
        links = cj_links(doc)
        assert set(links) == rels, path
        assert not rels & set(cj_data(doc)), path
        for href in links.values():
            resp = await api.get(local(href), headers={**world.alice, **JSON})
            assert resp.status == 200, (path, href, resp.status)
    # a workflow's instance links back to its workflow, in both media types
    listed = await ok(
        await api.get(
            f"/api/v1/pipelines/workflows/{ids['workflow']}/plugininstances/",
            headers={**world.alice, **JSON},
        )
    )
    (inst,) = listed["results"]
    assert inst["workflow_id"] == ids["workflow"] and inst["pipeline_id"] == ids["pipeline"]
    assert local(inst["workflow"]) == f"/api/v1/pipelines/workflows/{ids['workflow']}/"
    doc = await ok(await api.get(local(inst["url"]), headers={**world.alice, **CJ}))
    assert cj_links(doc)["workflow"] == inst["workflow"]
    # an instance outside any workflow has no workflow link
    doc = await ok(
        await api.get(f"/api/v1/plugins/instances/{ids['fs_inst']}/", headers={**world.alice, **CJ})
    )
    assert "workflow" not in cj_links(doc) and cj_data(doc)["workflow_id"] is None


async def test_pipeline_queries_and_templates(api: TestClient, world: World) -> None:
    async def collection(path: str) -> dict[str, Any]:
        doc = await ok(await api.get(path, headers={**world.alice, **CJ}))
        return doc["collection"]  # type: ignore[no-any-return]

    def query_names(coll: dict[str, Any], suffix: str) -> set[str]:
        (query,) = coll["queries"]
        assert query["rel"] == "search" and query["href"].endswith(suffix)
        return {d["name"] for d in query["data"]}

    def template_names(coll: dict[str, Any]) -> set[str]:
        return {d["name"] for d in coll["template"]["data"]}

    pipelines = await collection("/api/v1/pipelines/")
    assert query_names(pipelines, "/api/v1/pipelines/search/") == {
        "id",
        "name",
        "name_exact",
        "category",
        "owner_username",
    }
    assert template_names(pipelines) == {
        "name",
        "authors",
        "category",
        "description",
        "locked",
        "plugin_tree",
        "plugin_inst_id",
    }
    pid = world.ids["pipeline"]
    assert template_names(await collection(f"/api/v1/pipelines/{pid}/")) == {
        "name",
        "authors",
        "category",
        "description",
        "locked",
    }
    sources = await collection("/api/v1/pipelines/sourcefiles/")
    assert query_names(sources, "/api/v1/pipelines/sourcefiles/search/") == {
        "id",
        "fname",
        "type",
        "pipeline_id",
    }
    assert template_names(sources) == {"fname", "type"}
    workflows = await collection("/api/v1/pipelines/workflows/")
    assert query_names(workflows, "/api/v1/pipelines/workflows/search/") == {
        "id",
        "title",
        "pipeline_id",
        "pipeline_name",
        "owner_username",
    }
    assert template_names(await collection(f"/api/v1/pipelines/{pid}/workflows/")) == {
        "previous_plugin_inst_id",
        "title",
        "nodes_info",
    }
    wid = world.ids["workflow"]
    assert template_names(await collection(f"/api/v1/pipelines/workflows/{wid}/")) == {"title"}
    # a search list offers no further search, and filters really filter
    found = await collection("/api/v1/pipelines/search/?name_exact=nothing")
    assert "queries" not in found and found["total"] == 0
    found = await collection(f"/api/v1/pipelines/workflows/search/?pipeline_id={pid + 1}")
    assert found["total"] == 0
    resp = await api.get(
        "/api/v1/pipelines/sourcefiles/search/?pipeline_id=x", headers={**world.alice, **CJ}
    )
    assert resp.status == 400
    assert "pipeline_id" in (await resp.json(content_type=None))["collection"]["error"]["message"]


async def test_pipeline_template_bodies_create_and_change(api: TestClient, world: World) -> None:
    cj_post = {**world.alice, **CJ, "Content-Type": "application/vnd.collection+json"}
    tree = [
        {
            "title": "node",
            "plugin_id": world.ids["ds"],
            "previous": None,
            "plugin_parameter_defaults": [{"name": "prefix", "default": "t_"}],
        }
    ]
    doc = await ok(
        await api.post(
            "/api/v1/pipelines/",
            json=cj_template(
                name="from a template",
                authors="Alice",
                category="test",
                description="made through Collection+JSON",
                locked=False,
                plugin_tree=json.dumps(tree),  # a JSON string, as python-chrisclient sends it
            ),
            headers=cj_post,
        ),
        201,
    )
    made = cj_data(doc)
    assert made["name"] == "from a template" and made["owner_username"] == "alice"
    href = doc["collection"]["items"][0]["href"]
    doc = await ok(await api.put(local(href), json=cj_template(locked=True), headers=cj_post))
    assert cj_data(doc)["locked"] is True
    # a workflow of it through a template, then renamed through one
    doc = await ok(
        await api.post(
            local(cj_links(doc)["workflows"]),
            json=cj_template(previous_plugin_inst_id=world.ids["fs_inst"], title="templated"),
            headers=cj_post,
        ),
        201,
    )
    workflow = cj_data(doc)
    assert workflow["title"] == "templated" and workflow["waiting_jobs"] == 1
    doc = await ok(
        await api.put(
            local(doc["collection"]["items"][0]["href"]),
            json=cj_template(title="renamed"),
            headers=cj_post,
        )
    )
    assert cj_data(doc)["title"] == "renamed"
    # a source file upload answers in Collection+JSON too
    form = FormData()
    form.add_field("type", "yaml")
    form.add_field("fname", SOURCE.replace("alice's", "other").encode(), filename="other.yml")
    resp = await api.post(
        "/api/v1/pipelines/sourcefiles/", data=form, headers={**world.alice, **CJ}
    )
    doc = await ok(resp, 201)
    assert resp.content_type == "application/vnd.collection+json"
    assert cj_data(doc)["fname"] == "PIPELINES/alice/other.yml"
    # bad input is a Collection+JSON error naming the field
    resp = await api.post("/api/v1/pipelines/", json=cj_template(name="no tree"), headers=cj_post)
    assert resp.status == 400
    assert "plugin_tree" in (await resp.json(content_type=None))["collection"]["error"]["message"]


async def test_pipeline_root_links_resolve_in_both_media_types(
    api: TestClient, world: World
) -> None:
    root = await ok(await api.get("/api/v1/", headers={**world.alice, **JSON}))
    links = root["collection_links"]
    expected = {
        "pipelines": "/api/v1/pipelines/",
        "pipelinesourcefiles": "/api/v1/pipelines/sourcefiles/",
        "workflows": "/api/v1/pipelines/workflows/",
        "pipeline_instances": "/api/v1/pipelines/workflows/",
    }
    assert {rel: local(links[rel]) for rel in expected} == expected
    cj = await ok(await api.get("/api/v1/", headers={**world.alice, **CJ}))
    cj_rels = {link["rel"]: link["href"] for link in cj["collection"]["links"]}
    for rel in expected:
        assert cj_rels[rel] == links[rel]
        listed = await ok(await api.get(local(links[rel]), headers={**world.alice, **CJ}))
        assert listed["collection"]["total"] >= 1, rel


async def test_openapi_describes_the_pipeline_routes(api: TestClient) -> None:
    doc = await ok(await api.get("/api/v1/schema/"))
    paths = doc["paths"]
    search = paths["/api/v1/pipelines/workflows/search/"]["get"]
    assert {"title", "pipeline_name", "limit"} <= {p["name"] for p in search["parameters"]}
    page = search["responses"]["200"]["content"]["application/json"]["schema"]
    assert page["properties"]["results"]["items"] == {"$ref": "#/components/schemas/Workflow"}
    post = paths["/api/v1/pipelines/{id}/workflows/"]["post"]
    props = post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert set(props) == {"previous_plugin_inst_id", "title", "nodes_info"}
    assert {"Pipeline", "PluginPiping", "PipingDefaultParameter", "PipelineSourceFile"} <= set(
        doc["components"]["schemas"]
    )
    assert set(paths["/api/v1/pipelines/{id}/"]) == {"get", "put", "delete"}


async def test_pipeline_delete_owner_only_and_not_while_a_workflow_runs(
    api: TestClient, world: World
) -> None:
    pid, wid = world.ids["pipeline"], world.ids["workflow"]
    path = f"/api/v1/pipelines/{pid}/"
    # bobby cannot see alice's unlocked pipeline; once locked he sees it but may not delete it
    resp = await api.delete(path, headers={**world.bob, **JSON})
    assert resp.status == 404
    await ok(await api.put(path, json={"locked": True}, headers={**world.alice, **JSON}))
    resp = await api.delete(path, headers={**world.bob, **CJ})
    assert resp.status == 403
    assert "owner" in (await resp.json(content_type=None))["collection"]["error"]["message"]
    # the workflow's instance waits on the fs instance: the delete is refused, saying why
    resp = await api.delete(path, headers={**world.alice, **JSON})
    assert resp.status == 409
    assert "running workflow" in (await resp.json())["detail"]
    resp = await api.delete(path, headers={**world.alice, **CJ})
    assert resp.status == 409
    assert (
        "running workflow" in (await resp.json(content_type=None))["collection"]["error"]["message"]
    )
    instances = await ok(
        await api.get(
            f"/api/v1/pipelines/workflows/{wid}/plugininstances/", headers={**world.alice, **JSON}
        )
    )
    (made,) = instances["results"]
    await ok(
        await api.put(
            f"/api/v1/plugins/instances/{made['id']}/",
            json={"status": "cancelled"},
            headers={**world.alice, **JSON},
        )
    )
    source = await ok(
        await api.get(
            f"/api/v1/pipelines/sourcefiles/{world.ids['source']}/", headers={**world.alice, **JSON}
        )
    )
    stored = api.server.app[STORAGE].local_path(source["fname"])
    assert stored.is_file()
    resp = await api.delete(path, headers={**world.alice, **JSON})
    assert resp.status == 204
    # the pipeline, its nodes, defaults, workflow and source file are gone; the instance stays
    for gone in (
        path,
        f"/api/v1/pipelines/pipings/{world.ids['piping']}/",
        f"/api/v1/pipelines/{world.ids['default_type']}-parameter/{world.ids['default']}/",
        f"/api/v1/pipelines/workflows/{wid}/",
        f"/api/v1/pipelines/sourcefiles/{world.ids['source']}/",
    ):
        resp = await api.get(gone, headers={**world.alice, **JSON})
        assert resp.status == 404, gone
    assert not stored.exists()
    kept = await ok(
        await api.get(f"/api/v1/plugins/instances/{made['id']}/", headers={**world.alice, **JSON})
    )
    assert kept["status"] == "cancelled" and kept["workflow_id"] is None
    resp = await api.delete(path, headers={**world.alice, **JSON})
    assert resp.status == 404


async def test_staff_may_delete_any_pipeline(api: TestClient, world: World) -> None:
    tree = [
        {
            "title": "node",
            "plugin_id": world.ids["ds"],
            "previous": None,
            "plugin_parameter_defaults": [{"name": "prefix", "default": "t_"}],
        }
    ]
    made = await ok(
        await api.post(
            "/api/v1/pipelines/",
            json={"name": "unused", "plugin_tree": tree, "locked": False},
            headers={**world.alice, **JSON},
        ),
        201,
    )
    resp = await api.delete(f"/api/v1/pipelines/{made['id']}/", headers={**world.admin, **CJ})
    assert resp.status == 204
    listed = await ok(
        await api.get("/api/v1/pipelines/search/?name=unused", headers={**world.alice, **JSON})
    )
    assert listed["count"] == 0
