"""ts plugin instances without a compute site: creation rules, waiting for every
parent, cancellation by a failed parent, and CUBE's join of the parents' outputs."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from chris_sdk.topology import join_plan, parse_filters, parse_instance_ids
from sqlalchemy import update
from sqlmodel import col

from cube.api.common import SESSIONS, STORAGE
from cube.db.models import PluginInstance, StoredFile
from cube.schema import InstanceStatus
from cube.services import instances as isvc
from cube.services import topology
from tests.cube.test_api import upload

S = InstanceStatus

TS_DESCRIPTOR: dict[str, Any] = {
    "name": "pl-tsjoin",
    "dock_image": "test/pl-tsjoin:1.0",
    "type": "ts",
    "version": "1.0",
    "selfexec": "tsjoin",
    "parameters": [
        {"name": "plugininstances", "type": "str", "default": "", "flag": "--plugininstances"},
        {"name": "filter", "type": "str", "default": "", "flag": "--filter", "short_flag": "-f"},
        {
            "name": "groupByInstance",
            "type": "bool",
            "default": False,
            "flag": "--groupByInstance",
            "short_flag": "-g",
        },
    ],
}


async def register_ts(api: TestClient, admin: dict[str, str]) -> int:
    resp = await api.post(
        "/chris-admin/api/v1/",
        json={"descriptor": TS_DESCRIPTOR, "compute_names": "site"},
        headers=admin,
    )
    assert resp.status == 201, await resp.text()
    return int((await resp.json())["id"])


async def post_instance(
    api: TestClient, admin: dict[str, str], plugin_id: int, body: dict[str, Any]
) -> Any:
    return await api.post(f"/api/v1/plugins/{plugin_id}/instances/", json=body, headers=admin)


async def feed_with_two_branches(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> tuple[int, int, int]:
    """fs root → ds a, ds b; returns (root, a, b) ids."""
    folder = f"home/chris/uploads/{uuid.uuid4().hex}"
    assert (await upload(api, admin, f"{folder}/x.txt", b"x")).status == 201
    root = await (await post_instance(api, admin, registered["fs"], {"dir": folder})).json()
    a = await (
        await post_instance(api, admin, registered["ds"], {"previous_id": root["id"]})
    ).json()
    b = await (
        await post_instance(api, admin, registered["ds"], {"previous_id": root["id"]})
    ).json()
    return root["id"], a["id"], b["id"]


async def status(api: TestClient, admin: dict[str, str], inst_id: int) -> dict[str, Any]:
    resp = await api.get(f"/api/v1/plugins/instances/{inst_id}/", headers=admin)
    return await resp.json()  # type: ignore[no-any-return]


async def end(api: TestClient, inst_id: int, to: InstanceStatus) -> list[int]:
    """End an instance as the scheduler would (children are settled)."""
    async with api.app[SESSIONS]() as s:
        scheduled = await isvc.finish(s, inst_id, [x for x in S if x.is_active], to)
        await s.commit()
    return scheduled


async def test_ts_waits_for_all_parents(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    ts_id = await register_ts(api, admin)
    root, a, b = await feed_with_two_branches(api, admin, registered)
    resp = await post_instance(
        api, admin, ts_id, {"previous_id": a, "plugininstances": f"{a}, {b}", "filter": "x,"}
    )
    assert resp.status == 201, await resp.text()
    ts = await resp.json()
    assert ts["status"] == "waiting" and ts["previous_id"] == a and ts["plugin_type"] == "ts"
    params = await (
        await api.get(f"/api/v1/plugins/instances/{ts['id']}/parameters/", headers=admin)
    ).json()
    values = {p["param_name"]: p["value"] for p in params["results"]}
    assert values["plugininstances"] == f"{a},{b}"  # normalised for the job's command line

    assert set(await end(api, root, S.FINISHED_SUCCESSFULLY)) == {a, b}
    assert await end(api, a, S.FINISHED_SUCCESSFULLY) == []
    assert (await status(api, admin, ts["id"]))["status"] == "waiting"  # b is still running
    assert await end(api, b, S.FINISHED_SUCCESSFULLY) == [ts["id"]]
    assert (await status(api, admin, ts["id"]))["status"] == "scheduled"


async def test_ts_is_cancelled_by_a_failed_parent_with_the_reason(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    ts_id = await register_ts(api, admin)
    root, a, b = await feed_with_two_branches(api, admin, registered)
    ts = await (
        await post_instance(api, admin, ts_id, {"previous_id": b, "plugininstances": f"{a},{b}"})
    ).json()
    await end(api, root, S.FINISHED_SUCCESSFULLY)
    await end(api, a, S.FINISHED_WITH_ERROR)
    body = await status(api, admin, ts["id"])
    assert body["status"] == "cancelled"
    assert body["error_message"] == f"parent {a} is finishedWithError"
    # a ts instance created on a failed parent is cancelled at once, saying why
    late = await (await post_instance(api, admin, ts_id, {"plugininstances": f"{b},{a}"})).json()
    assert late["status"] == "cancelled" and late["previous_id"] == b
    assert late["error_message"] == f"parent {a} is finishedWithError"


async def test_ts_creation_rules(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    ts_id = await register_ts(api, admin)
    _root, a, b = await feed_with_two_branches(api, admin, registered)
    other_root, _x, _y = await feed_with_two_branches(api, admin, registered)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({}, "previous_id", "need a previous_id or plugininstances"),
        ({"plugininstances": "a,b"}, "plugininstances", "is not a plugin instance id"),
        ({"plugininstances": f"{a},{a}"}, "plugininstances", "listed twice"),
        ({"plugininstances": f"{a},999"}, "plugininstances", "no plugin instance 999"),
        ({"previous_id": b, "plugininstances": f"{a}"}, "plugininstances", "must include"),
        ({"plugininstances": f"{a},{b}", "filter": "x"}, "filter", "1 regular expression(s)"),
        ({"plugininstances": f"{a},{b}", "filter": "x,("}, "filter", "not a regular expression"),
        ({"plugininstances": f"{a},{other_root}"}, "plugininstances", "are not in feed"),
    ]
    for body, field, message in cases:
        resp = await post_instance(api, admin, ts_id, body)
        assert resp.status == 400, (body, await resp.text())
        errors = await resp.json()
        assert message in " ".join(errors.get(field, [])), (body, errors)


async def test_join_outputs_filters_groups_and_links(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    ts_id = await register_ts(api, admin)
    _root, a, b = await feed_with_two_branches(api, admin, registered)
    storage = api.app[STORAGE]
    outputs = {a: {"x.dcm": b"a-dcm", "sub/y.txt": b"a-txt"}, b: {"x.dcm": b"b-dcm", "z.txt": b"b"}}
    async with api.app[SESSIONS]() as s:
        for inst_id, files in outputs.items():
            inst = await s.get(PluginInstance, inst_id)
            assert inst is not None
            for rel, data in files.items():
                fname = f"{inst.output_path}/{rel}"
                storage.local_path(fname).parent.mkdir(parents=True, exist_ok=True)
                storage.local_path(fname).write_bytes(data)
                s.add(StoredFile(fname=fname, fsize=len(data), owner_id=1, plugin_inst_id=inst_id))
        await s.commit()

    async def joined(body: dict[str, Any]) -> dict[str, bytes]:
        ts = await (await post_instance(api, admin, ts_id, body)).json()
        async with api.app[SESSIONS]() as s:
            inst = await s.get(PluginInstance, ts["id"])
            assert inst is not None
            files = await topology.join_outputs(s, storage, inst)
            # redone after a crash: the same files, replaced in place
            assert await topology.join_outputs(s, storage, inst) == files
        got = {}
        for fname, size in files:
            path = storage.local_path(fname)
            assert path.stat().st_size == size
            got[fname.removeprefix(inst.output_path + "/")] = path.read_bytes()
        return got

    # merged: the later parent's x.dcm wins; the filters keep .dcm of a and all of b
    assert await joined({"plugininstances": f"{a},{b}", "filter": r"\.dcm$,"}) == {
        "x.dcm": b"b-dcm",
        "z.txt": b"b",
    }
    grouped = await joined({"plugininstances": f"{b},{a}", "groupByInstance": True})
    assert grouped == {
        f"{a}/x.dcm": b"a-dcm",
        f"{a}/sub/y.txt": b"a-txt",
        f"{b}/x.dcm": b"b-dcm",
        f"{b}/z.txt": b"b",
    }
    # hard links: no byte was copied (same inode as the parent's file)
    async with api.app[SESSIONS]() as s:
        parent = await s.get(PluginInstance, a)
        assert parent is not None
    source = storage.local_path(f"{parent.output_path}/x.dcm")
    assert source.stat().st_nlink >= 2


async def test_sweep_finds_waiting_instances_whose_parents_ended(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    """Two parents ending in two workers at once may each miss the other: the
    scheduler's sweep settles what they left waiting."""
    ts_id = await register_ts(api, admin)
    root, a, b = await feed_with_two_branches(api, admin, registered)
    ts = await (await post_instance(api, admin, ts_id, {"plugininstances": f"{a},{b}"})).json()
    await end(api, root, S.FINISHED_SUCCESSFULLY)
    async with api.app[SESSIONS]() as s:
        assert await topology.waiting_with_parents_done(s) == []
        # both parents end without settling their children (the race)
        await s.exec(
            update(PluginInstance)  # type: ignore[call-overload]
            .where(col(PluginInstance.id).in_([a, b]))
            .values(status=S.FINISHED_SUCCESSFULLY.value)
        )
        assert await topology.waiting_with_parents_done(s) == [ts["id"]]
        assert await isvc.settle_waiting(s, ts["id"]) == [ts["id"]]
        await s.commit()
    assert (await status(api, admin, ts["id"]))["status"] == "scheduled"


def test_join_rules() -> None:
    assert parse_instance_ids(" 3, 5") == [3, 5]
    for bad in ("", "3,x", "0", "3,3"):
        with pytest.raises(ValueError):
            parse_instance_ids(bad)
    assert parse_filters("", 2) == [None, None]
    filters = parse_filters(r"\.dcm$,", 2)
    assert isinstance(filters[0], re.Pattern) and filters[1] is None
    plan = join_plan([(3, ["a.dcm", "b.txt"]), (5, ["a.dcm"])], filters, False)
    assert plan == {"a.dcm": (5, "a.dcm")}
    plan = join_plan([(3, ["a.dcm", "b.txt"]), (5, ["a.dcm"])], filters, True)
    assert plan == {"3/a.dcm": (3, "a.dcm"), "5/a.dcm": (5, "a.dcm")}
