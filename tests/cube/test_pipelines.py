"""Pipelines, pipeline source files and workflows through CUBE's API (no compute site)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import yaml
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from cube.api.common import SESSIONS
from cube.schema import InstanceStatus
from cube.services import workflows
from tests.cube.conftest import token_for
from tests.cube.test_api import upload
from tests.cube.test_ts import end, register_ts

S = InstanceStatus

NEEDS_DESCRIPTOR: dict[str, Any] = {
    "name": "pl-needs",
    "dock_image": "test/pl-needs:1.0",
    "type": "ds",
    "version": "1.0",
    "selfexec": "needs",
    "parameters": [
        {"name": "level", "type": "int", "optional": False, "flag": "--level"},
    ],
}

YAML_PIPELINE = """
name: join pipeline
authors: A Author <a@example.org>
category: test
description: two branches joined by a ts node
locked: false
plugin_tree:
  - title: first
    plugin: pl-dsthing v2.0
    previous: null
    plugin_parameter_defaults: {prefix: "f_"}
  - title: left
    plugin: pl-dsthing v2.0
    previous: first
    plugin_parameter_defaults: {prefix: "l_", count: 3}
    cpu_limit: 2000m
    memory_limit: 1Gi
  - title: right
    plugin: pl-needs v1.0
    previous: first
    plugin_parameter_defaults: {level: 2}
  - title: join
    plugin: pl-tsjoin v1.0
    previous: left
    plugin_parameter_defaults: {plugininstances: "left,right", groupByInstance: true}
"""


@pytest.fixture
async def plugins(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> dict[str, int]:
    """The fs, ds and ts test plugins and pl-needs (a parameter without a default)."""
    resp = await api.post(
        "/chris-admin/api/v1/",
        json={"descriptor": NEEDS_DESCRIPTOR, "compute_names": "site"},
        headers=admin,
    )
    assert resp.status == 201, await resp.text()
    return {**registered, "ts": await register_ts(api, admin), "needs": (await resp.json())["id"]}


def spec() -> dict[str, Any]:
    """The YAML pipeline as a dict (the JSON form of the same definition)."""
    return yaml.safe_load(YAML_PIPELINE)  # type: ignore[no-any-return]


async def create(api: TestClient, headers: dict[str, str], body: dict[str, Any]) -> Any:
    return await api.post("/api/v1/pipelines/", json=body, headers=headers)


async def export(api: TestClient, headers: dict[str, str], pipeline_id: int) -> dict[str, Any]:
    resp = await api.get(f"/api/v1/pipelines/{pipeline_id}/json/", headers=headers)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    body["plugin_tree"] = json.loads(body["plugin_tree"])
    return body  # type: ignore[no-any-return]


def path_of(url: str) -> str:
    """The path of an absolute hyperlink (the test client takes paths)."""
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def without(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in keys}


async def upload_source(
    api: TestClient, headers: dict[str, str], name: str, text: str, kind: str | None
) -> Any:
    form = FormData()
    if kind is not None:
        form.add_field("type", kind)
    form.add_field("fname", text.encode(), filename=name)
    return await api.post("/api/v1/pipelines/sourcefiles/", data=form, headers=headers)


async def test_yaml_source_file_becomes_a_pipeline_and_round_trips(
    api: TestClient, admin: dict[str, str], plugins: dict[str, int]
) -> None:
    resp = await upload_source(api, admin, "join.yml", YAML_PIPELINE, "yaml")
    assert resp.status == 201, await resp.text()
    source = await resp.json()
    assert source["fname"] == "PIPELINES/chris/join.yml" and source["type"] == "yaml"
    assert source["pipeline_name"] == "join pipeline"
    download = await api.get(path_of(source["file_resource"]), headers=admin)
    assert await download.text() == YAML_PIPELINE
    listed = await (await api.get("/api/v1/pipelines/sourcefiles/", headers=admin)).json()
    assert [f["id"] for f in listed["results"]] == [source["id"]]

    pid = source["pipeline_id"]
    pipeline = await (await api.get(f"/api/v1/pipelines/{pid}/", headers=admin)).json()
    assert pipeline["locked"] is False and pipeline["owner_username"] == "chris"
    assert pipeline["authors"] == "A Author <a@example.org>"
    pipings = (await (await api.get(f"/api/v1/pipelines/{pid}/pipings/", headers=admin)).json())[
        "results"
    ]
    by_title = {p["title"]: p for p in pipings}
    assert [p["title"] for p in pipings] == ["first", "left", "right", "join"]
    assert by_title["first"]["previous_id"] is None
    assert by_title["join"]["previous_id"] == by_title["left"]["id"]
    assert by_title["left"]["cpu_limit"] == 2000 and by_title["left"]["memory_limit"] == 1024
    assert by_title["right"]["cpu_limit"] == 1000  # the plugin's minimum
    defaults = (
        await (await api.get(f"/api/v1/pipelines/{pid}/defaultparameters/", headers=admin)).json()
    )["results"]
    assert {(d["plugin_piping_title"], d["param_name"]): d["value"] for d in defaults} == {
        ("first", "prefix"): "f_",
        ("first", "count"): 1,  # the plugin's default
        ("first", "verbose"): False,
        ("left", "prefix"): "l_",
        ("left", "count"): 3,
        ("left", "verbose"): False,
        ("right", "level"): 2,
        ("join", "plugininstances"): "left,right",
        ("join", "filter"): "",
        ("join", "groupByInstance"): True,
    }
    one = next(d for d in defaults if d["param_name"] == "level")
    assert "/api/v1/pipelines/integer-parameter/" in one["url"]
    got = await (await api.get(path_of(one["url"]), headers=admin)).json()
    assert got == one
    node = await (await api.get(path_of(one["plugin_piping"]), headers=admin)).json()
    assert node == by_title["right"]
    plugins_used = (
        await (await api.get(f"/api/v1/pipelines/{pid}/plugins/", headers=admin)).json()
    )["results"]
    assert sorted(p["name"] for p in plugins_used) == ["pl-dsthing", "pl-needs", "pl-tsjoin"]

    # export → create again → export: the same pipeline
    first = await export(api, admin, pid)
    again = dict(first, name="join pipeline (copy)", plugin_tree=json.dumps(first["plugin_tree"]))
    resp = await create(api, admin, again)
    assert resp.status == 201, await resp.text()
    second = await export(api, admin, (await resp.json())["id"])
    assert without(second, "name", "url") == without(first, "name", "url")
    assert second["name"] == "join pipeline (copy)"


async def test_json_definition_round_trips(
    api: TestClient, admin: dict[str, str], plugins: dict[str, int]
) -> None:
    body = spec()
    for node in body["plugin_tree"]:  # the JSON spelling: name, version, list of defaults
        name, version = node.pop("plugin").split(" v")
        node["plugin_name"], node["plugin_version"] = name, version
        node["plugin_parameter_defaults"] = [
            {"name": k, "default": v} for k, v in node["plugin_parameter_defaults"].items()
        ]
    body["plugin_tree"] = json.dumps(body["plugin_tree"])  # as ChRIS clients send it
    resp = await create(api, admin, body)
    assert resp.status == 201, await resp.text()
    first = await export(api, admin, (await resp.json())["id"])
    # a JSON source file of the export makes the same pipeline too
    text = json.dumps(dict(first, name="from a json file"))
    resp = await upload_source(api, admin, "exported.json", text, None)
    assert resp.status == 201, await resp.text()
    second = await export(api, admin, (await resp.json())["pipeline_id"])
    assert without(second, "name", "url") == without(first, "name", "url")
    yaml_made = await upload_source(
        api, admin, "same.yaml", YAML_PIPELINE.replace("join pipeline", "y"), None
    )
    assert yaml_made.status == 201
    third = await export(api, admin, (await yaml_made.json())["pipeline_id"])
    assert without(third, "name", "url") == without(first, "name", "url")


def _node(tree: list[dict[str, Any]], title: str) -> dict[str, Any]:
    return next(n for n in tree if n["title"] == title)


def _two_roots(tree: list[dict[str, Any]]) -> None:
    _node(tree, "right")["previous"] = None


def _no_root(tree: list[dict[str, Any]]) -> None:
    _node(tree, "first")["previous"] = "join"


def _fs_plugin(tree: list[dict[str, Any]]) -> None:
    _node(tree, "left").update(plugin="pl-fscopy v1.0", plugin_parameter_defaults={"dir": "x"})


def _missing_default(tree: list[dict[str, Any]]) -> None:
    _node(tree, "right")["plugin_parameter_defaults"] = {}


def _ts_unknown_title(tree: list[dict[str, Any]]) -> None:
    _node(tree, "join")["plugin_parameter_defaults"]["plugininstances"] = "left,nowhere"


def _ts_without_previous(tree: list[dict[str, Any]]) -> None:
    _node(tree, "join")["plugin_parameter_defaults"]["plugininstances"] = "first,right"


def _cycle(tree: list[dict[str, Any]]) -> None:
    # right waits for join (ts parent), join waits for right: a cycle
    tree.append(
        {
            "title": "loop",
            "plugin": "pl-tsjoin v1.0",
            "previous": "left",
            "plugin_parameter_defaults": {"plugininstances": "left,after"},
        }
    )
    tree.append({"title": "after", "plugin": "pl-dsthing v2.0", "previous": "loop"})


def _unknown_plugin(tree: list[dict[str, Any]]) -> None:
    _node(tree, "left")["plugin"] = "pl-dsthing v9.9"


def _unknown_previous(tree: list[dict[str, Any]]) -> None:
    _node(tree, "left")["previous"] = "nobody"


def _duplicate_title(tree: list[dict[str, Any]]) -> None:
    _node(tree, "right")["title"] = "left"


def _unknown_parameter(tree: list[dict[str, Any]]) -> None:
    _node(tree, "left")["plugin_parameter_defaults"]["colour"] = "red"


def _wrong_type(tree: list[dict[str, Any]]) -> None:
    _node(tree, "left")["plugin_parameter_defaults"]["count"] = "many"


def _limit_out_of_range(tree: list[dict[str, Any]]) -> None:
    _node(tree, "left")["cpu_limit"] = "9000m"


def _filter_count(tree: list[dict[str, Any]]) -> None:
    _node(tree, "join")["plugin_parameter_defaults"]["filter"] = r"\.dcm$"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_two_roots, "exactly one root (a node whose previous is null); found 'first', 'right'"),
        (_no_root, "exactly one root (a node whose previous is null); found none"),
        (_fs_plugin, "node 'left': pl-fscopy is an fs plugin; pipelines take none"),
        (_missing_default, "node 'right': parameter 'level' of pl-needs has no default"),
        (_ts_unknown_title, "node 'join': plugininstances names unknown node(s) 'nowhere'"),
        (_ts_without_previous, "node 'join': plugininstances must list its previous 'left'"),
        (_cycle, "the links of plugin_tree form a cycle through 'loop', 'after'"),
        (_unknown_plugin, "node 'left': no plugin pl-dsthing version 9.9 is registered"),
        (_unknown_previous, "node 'left': previous 'nobody' is not a node title"),
        (_duplicate_title, "node titles must be unique; repeated: left"),
        (_unknown_parameter, "node 'left': pl-dsthing has no parameter 'colour'"),
        (_wrong_type, "node 'left': parameter 'count': expected an integer"),
        (_limit_out_of_range, "node 'left': cpu_limit must be between 1000 and 4000, got 9000"),
        (_filter_count, "node 'join': filter has 1 regular expression(s) for 2 parent"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else "",
)
async def test_invalid_pipelines_are_refused_with_a_clear_error(
    api: TestClient,
    admin: dict[str, str],
    plugins: dict[str, int],
    mutate: Any,
    message: str,
) -> None:
    body = spec()
    mutate(body["plugin_tree"])
    resp = await create(api, admin, body)
    assert resp.status == 400, await resp.text()
    errors = await resp.json()
    assert any(message in m for m in errors["plugin_tree"]), errors
    listed = await (await api.get("/api/v1/pipelines/", headers=admin)).json()
    assert listed["count"] == 0  # nothing was stored


async def test_malformed_definitions_and_names(
    api: TestClient, admin: dict[str, str], plugins: dict[str, int]
) -> None:
    resp = await create(api, admin, {"name": "x", "plugin_tree": "[not json"})
    assert resp.status == 400 and "not valid JSON" in json.dumps(await resp.json())
    resp = await create(api, admin, {"plugin_tree": []})
    assert resp.status == 400 and "name" in await resp.json()
    resp = await create(api, admin, dict(spec(), plugin_tree=[]))
    assert resp.status == 400 and "plugin_tree has no node" in json.dumps(await resp.json())
    assert (await create(api, admin, spec())).status == 201
    taken = await create(api, admin, spec())
    assert taken.status == 409 and await taken.json() == {"name": ["already exists"]}
    bad_yaml = await upload_source(api, admin, "bad.yml", "name: [unclosed", "yaml")
    assert bad_yaml.status == 400 and "not a valid yaml file" in json.dumps(await bad_yaml.json())
    bad_type = await upload_source(api, admin, "p.txt", YAML_PIPELINE, None)
    assert bad_type.status == 400 and "type" in await bad_type.json()


async def test_unlocked_pipelines_are_private(
    api: TestClient, admin: dict[str, str], plugins: dict[str, int]
) -> None:
    resp = await api.post(
        "/api/v1/users/",
        json={"username": "alice", "password": "alice-pass-1", "email": "a@x.org"},
    )
    assert resp.status == 201
    alice = await token_for(api, "alice", "alice-pass-1")
    private = await (await create(api, admin, spec())).json()
    public = await (await create(api, admin, dict(spec(), name="public", locked=True))).json()
    seen = await (await api.get("/api/v1/pipelines/", headers=alice)).json()
    assert [p["id"] for p in seen["results"]] == [public["id"]]
    assert (await api.get(f"/api/v1/pipelines/{private['id']}/", headers=alice)).status == 404
    change = await api.put(f"/api/v1/pipelines/{public['id']}/", json={"name": "x"}, headers=alice)
    assert change.status == 403
    change = await api.put(
        f"/api/v1/pipelines/{public['id']}/", json={"description": "new"}, headers=admin
    )
    assert change.status == 200 and (await change.json())["description"] == "new"
    found = await (
        await api.get("/api/v1/pipelines/search/?name_exact=public", headers=alice)
    ).json()
    assert [p["id"] for p in found["results"]] == [public["id"]]


async def test_workflow_creates_the_instances_in_order(
    api: TestClient, admin: dict[str, str], plugins: dict[str, int]
) -> None:
    pipeline = await (await create(api, admin, spec())).json()
    folder = f"home/chris/uploads/{uuid.uuid4().hex}"
    assert (await upload(api, admin, f"{folder}/a.txt", b"a")).status == 201
    root = await (
        await api.post(
            f"/api/v1/plugins/{plugins['fs']}/instances/", json={"dir": folder}, headers=admin
        )
    ).json()
    pipings = (
        await (await api.get(f"/api/v1/pipelines/{pipeline['id']}/pipings/", headers=admin)).json()
    )["results"]
    piping = {p["title"]: p["id"] for p in pipings}

    url = f"/api/v1/pipelines/{pipeline['id']}/workflows/"
    missing = await api.post(url, json={}, headers=admin)
    assert missing.status == 400 and "previous_plugin_inst_id" in await missing.json()
    too_big = await api.post(
        url,
        json={
            "previous_plugin_inst_id": root["id"],
            "nodes_info": json.dumps([{"piping_id": piping["left"], "cpu_limit": 99999}]),
        },
        headers=admin,
    )
    assert too_big.status == 400
    assert (await too_big.json())["left.cpu_limit"] == ["must be between 1000 and 4000, got 99999"]
    assert (await (await api.get("/api/v1/pipelines/workflows/", headers=admin)).json())[
        "count"
    ] == 0  # nothing was kept of the failed workflow

    resp = await api.post(
        url,
        json={
            "previous_plugin_inst_id": root["id"],
            "title": "run 1",
            "nodes_info": [
                {
                    "piping_id": piping["left"],
                    "title": "left side",
                    "plugin_parameter_defaults": [{"name": "prefix", "default": "L_"}],
                }
            ],
        },
        headers=admin,
    )
    assert resp.status == 201, await resp.text()
    workflow = await resp.json()
    assert workflow["title"] == "run 1" and workflow["pipeline_name"] == "join pipeline"
    assert workflow["waiting_jobs"] == 4

    wurl = f"/api/v1/pipelines/workflows/{workflow['id']}/plugininstances/"
    instances = (await (await api.get(wurl, headers=admin)).json())["results"]
    by_title = {i["title"]: i for i in instances}
    assert set(by_title) == {"first", "left side", "right", "join"}
    assert by_title["first"]["previous_id"] == root["id"]
    assert by_title["left side"]["previous_id"] == by_title["first"]["id"]
    assert by_title["right"]["previous_id"] == by_title["first"]["id"]
    assert by_title["join"]["previous_id"] == by_title["left side"]["id"]
    assert by_title["left side"]["cpu_limit"] == 2000
    for inst in instances:
        assert inst["workflow_id"] == workflow["id"]
        assert inst["pipeline_id"] == pipeline["id"]
        assert inst["feed_id"] == root["feed_id"]

    async def values(inst_id: int) -> dict[str, Any]:
        r = await api.get(f"/api/v1/plugins/instances/{inst_id}/parameters/", headers=admin)
        return {p["param_name"]: p["value"] for p in (await r.json())["results"]}

    left, right, join = by_title["left side"]["id"], by_title["right"]["id"], by_title["join"]["id"]
    assert (await values(left))["prefix"] == "L_"
    assert (await values(right)) == {"level": 2}
    assert (await values(join)) == {
        "plugininstances": f"{left},{right}",
        "filter": "",
        "groupByInstance": True,
    }

    listed = await (await api.get(url, headers=admin)).json()
    assert [w["id"] for w in listed["results"]] == [workflow["id"]]
    found = await (
        await api.get("/api/v1/pipelines/workflows/search/?title=run", headers=admin)
    ).json()
    assert [w["id"] for w in found["results"]] == [workflow["id"]]

    # the jobs get ChRIS's workflow environment
    async with api.app[SESSIONS]() as s:
        env = await workflows.job_env(s, join)
        assert await workflows.job_env(s, root["id"]) == []
    first_id = by_title["first"]["id"]
    assert env == [
        f"CHRIS_WORKFLOW_ID={workflow['id']}",
        f"CHRIS_PIPELINE_ID={pipeline['id']}",
        f"CHRIS_WORKFLOW_PLG_INSTANCES=first:{first_id},left side:{left},right:{right},join:{join}",
    ]

    # the scheduler's rules apply: the ts node waits for both of its parents
    await end(api, root["id"], S.FINISHED_SUCCESSFULLY)
    await end(api, by_title["first"]["id"], S.FINISHED_SUCCESSFULLY)
    await end(api, left, S.FINISHED_SUCCESSFULLY)
    wf = await (
        await api.get(f"/api/v1/pipelines/workflows/{workflow['id']}/", headers=admin)
    ).json()
    assert wf["finished_jobs"] == 2 and wf["scheduled_jobs"] == 1 and wf["waiting_jobs"] == 1
    assert await end(api, right, S.FINISHED_SUCCESSFULLY) == [join]


async def test_a_workflow_needs_access_to_the_previous_instance(
    api: TestClient, admin: dict[str, str], plugins: dict[str, int]
) -> None:
    pipeline = await (await create(api, admin, dict(spec(), locked=True))).json()
    folder = f"home/chris/uploads/{uuid.uuid4().hex}"
    assert (await upload(api, admin, f"{folder}/a.txt", b"a")).status == 201
    root = await (
        await api.post(
            f"/api/v1/plugins/{plugins['fs']}/instances/", json={"dir": folder}, headers=admin
        )
    ).json()
    await api.post(
        "/api/v1/users/", json={"username": "mallory", "password": "mallory-pass", "email": ""}
    )
    mallory = await token_for(api, "mallory", "mallory-pass")
    resp = await api.post(
        f"/api/v1/pipelines/{pipeline['id']}/workflows/",
        json={"previous_plugin_inst_id": root["id"]},
        headers=mallory,
    )
    assert resp.status == 400
    assert "no plugin instance" in json.dumps(await resp.json())


async def test_legacy_previous_index_nodes(
    api: TestClient, admin: dict[str, str], plugins: dict[str, int]
) -> None:
    """ChRIS's tree format before May 2023: parents by position (``previous_index``)."""
    tree = [
        {
            "title": "a",
            "plugin_name": "pl-dsthing",
            "plugin_version": "2.0",
            "previous_index": None,
        },
        {"title": "b", "plugin_name": "pl-dsthing", "plugin_version": "2.0", "previous_index": 0},
        {"title": "c", "plugin_name": "pl-dsthing", "plugin_version": "2.0", "previous_index": 1},
    ]
    resp = await create(api, admin, {"name": "legacy", "plugin_tree": json.dumps(tree)})
    assert resp.status == 201, await resp.text()
    exported = await export(api, admin, (await resp.json())["id"])
    assert [(n["title"], n["previous"]) for n in exported["plugin_tree"]] == [
        ("a", None),
        ("b", "a"),
        ("c", "b"),
    ]
    tree[2]["previous_index"] = 7
    resp = await create(api, admin, {"name": "legacy 2", "plugin_tree": tree})
    assert resp.status == 400
    assert "previous_index 7 is not the index of a node" in json.dumps(await resp.json())


async def test_pipeline_from_an_existing_instance_subtree(
    api: TestClient, admin: dict[str, str], plugins: dict[str, int]
) -> None:
    """``plugin_inst_id`` snapshots an instance and its descendants, ts joins included."""
    folder = f"home/chris/uploads/{uuid.uuid4().hex}"
    assert (await upload(api, admin, f"{folder}/a.txt", b"a")).status == 201

    async def post(plugin: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = await api.post(
            f"/api/v1/plugins/{plugins[plugin]}/instances/", json=body, headers=admin
        )
        assert resp.status == 201, await resp.text()
        return await resp.json()  # type: ignore[no-any-return]

    root = await post("fs", {"dir": folder})
    top = await post("ds", {"previous_id": root["id"], "title": "top", "prefix": "t_"})
    low = await post("needs", {"previous_id": top["id"], "level": 5, "cpu_limit": "1500m"})
    await post(
        "ts",
        {"previous_id": low["id"], "plugininstances": f"{top['id']},{low['id']}", "title": "both"},
    )
    resp = await create(api, admin, {"name": "snapshot", "plugin_inst_id": top["id"]})
    assert resp.status == 201, await resp.text()
    tree = (await export(api, admin, (await resp.json())["id"]))["plugin_tree"]
    low_title = f"pl-needs_{low['id']}"
    assert [(n["title"], n["previous"]) for n in tree] == [
        ("top", None),
        (low_title, "top"),
        ("both", low_title),
    ]
    defaults = {
        n["title"]: {d["name"]: d["default"] for d in n["plugin_parameter_defaults"]} for n in tree
    }
    assert defaults["top"]["prefix"] == "t_" and defaults[low_title] == {"level": 5}
    assert defaults["both"]["plugininstances"] == f"top,{low_title}"
    assert tree[1]["cpu_limit"] == 1500
    # a root whose subtree joins an instance outside it cannot be a pipeline
    resp = await create(api, admin, {"name": "partial", "plugin_inst_id": low["id"]})
    assert resp.status == 400 and "outside the subtree" in json.dumps(await resp.json())
