"""CUBE's API without a compute site: auth, plugins, files, instances."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from yarl import URL

from tests.cube.conftest import DS_DESCRIPTOR, FS_DESCRIPTOR, token_for


async def upload(api: TestClient, headers: dict[str, str], path: str, data: bytes) -> Any:
    form = FormData()
    form.add_field("upload_path", path)
    form.add_field("fname", data, filename=path.rsplit("/", 1)[-1])
    return await api.post("/api/v1/userfiles/", data=form, headers=headers)


async def test_an_unknown_user_costs_a_password_check_too(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrong password and unknown user: the same answer after the same scrypt
    work (the timing does not tell who has an account), off the event loop."""
    from cube.services import users

    checked: list[str] = []
    real = users.verify_password

    def recording(password: str, stored: str) -> bool:
        checked.append(threading.current_thread().name)
        return real(password, stored)

    monkeypatch.setattr(users, "verify_password", recording)
    answers = []
    for username in ("chris", "nobody-here"):
        resp = await api.post(
            "/api/v1/auth-token/", json={"username": username, "password": "wrong-password"}
        )
        answers.append((resp.status, await resp.json()))
    assert answers[0] == answers[1] and answers[0][0] == 400
    assert len(checked) == 2
    assert threading.main_thread().name not in checked


async def test_auth_token_and_missing_token(api: TestClient) -> None:
    bad = await api.post("/api/v1/auth-token/", json={"username": "chris", "password": "nope"})
    assert bad.status == 400
    assert "Unable to log in" in json.dumps(await bad.json())
    anon = await api.get("/api/v1/")
    assert anon.status == 401
    assert "credentials" in (await anon.json())["detail"]
    wrong = await api.get("/api/v1/", headers={"Authorization": "Token deadbeef"})
    assert wrong.status == 401
    good = await token_for(api, "chris", "chris1234")
    feeds = await api.get("/api/v1/", headers=good)
    assert feeds.status == 200
    body = await feeds.json()
    assert "plugins" in body.pop("collection_links")
    assert body == {"count": 0, "next": None, "previous": None, "results": []}


async def test_basic_auth_is_accepted(api: TestClient) -> None:
    import base64

    header = {"Authorization": "Basic " + base64.b64encode(b"chris:chris1234").decode()}
    assert (await api.get("/api/v1/plugins/", headers=header)).status == 200


async def test_register_plugins_and_read_them(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    resp = await api.get(f"/api/v1/plugins/{registered['ds']}/", headers=admin)
    body = await resp.json()
    assert body["name"] == "pl-dsthing" and body["type"] == "ds"
    assert body["max_cpu_limit"] == 4000 and body["max_memory_limit"] == 1024
    assert body["min_cpu_limit"] == 1000 and body["min_memory_limit"] == 200
    resp = await api.get(f"/api/v1/plugins/{registered['ds']}/parameters/", headers=admin)
    params = (await resp.json())["results"]
    assert [(p["name"], p["type"], p["action"]) for p in params] == [
        ("prefix", "string", "store"),
        ("count", "integer", "store"),
        ("verbose", "boolean", "store_true"),
    ]
    paged = await (
        await api.get(
            f"/api/v1/plugins/{registered['ds']}/parameters/?limit=1&offset=1", headers=admin
        )
    ).json()
    assert paged["count"] == 3 and [p["name"] for p in paged["results"]] == ["count"]
    assert "offset=2" in paged["next"] and "offset=0" in paged["previous"]
    missing = await api.get("/api/v1/plugins/parameters/99999/", headers=admin)
    assert missing.status == 404
    search = await api.get("/api/v1/plugins/search/?name_exact=pl-fscopy", headers=admin)
    assert [p["id"] for p in (await search.json())["results"]] == [registered["fs"]]
    # registering the same descriptor again is idempotent
    again = await api.post(
        "/chris-admin/api/v1/",
        json={"descriptor": DS_DESCRIPTOR, "compute_names": "site"},
        headers=admin,
    )
    assert again.status == 201 and (await again.json())["id"] == registered["ds"]


async def test_register_plugin_multipart_fname(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    desc = dict(FS_DESCRIPTOR, name="pl-other", dock_image="test/other:1")
    form = FormData()
    form.add_field(
        "fname", json.dumps(desc).encode(), filename="d.json", content_type="application/json"
    )
    form.add_field("compute_names", "site")
    resp = await api.post("/chris-admin/api/v1/", data=form, headers=admin)
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["name"] == "pl-other"


async def test_malformed_descriptors_are_refused_and_nothing_written(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    before = (await (await api.get("/api/v1/plugins/", headers=admin)).json())["count"]
    bad_cases = [
        {"descriptor": "{not json", "compute_names": "site"},
        {"descriptor": dict(DS_DESCRIPTOR, name="x", version="one"), "compute_names": "site"},
        {"descriptor": dict(DS_DESCRIPTOR, name="x", type="zz"), "compute_names": "site"},
        {
            "descriptor": dict(
                FS_DESCRIPTOR,
                name="x",
                parameters=[
                    {"name": "p", "type": "path", "optional": True, "default": "a", "flag": "--p"}
                ],
            ),
            "compute_names": "site",
        },
        {
            "descriptor": dict(
                DS_DESCRIPTOR, name="x", min_cpu_limit="5000m", max_cpu_limit="1000m"
            ),
            "compute_names": "site",
        },
        {"descriptor": dict(DS_DESCRIPTOR, name="x"), "compute_names": "nosuchsite"},
        {"descriptor": dict(DS_DESCRIPTOR, name="x")},
    ]
    for case in bad_cases:
        resp = await api.post("/chris-admin/api/v1/", json=case, headers=admin)
        assert resp.status == 400, (case, await resp.text())
        assert await resp.json()  # a body that says why
    after = (await (await api.get("/api/v1/plugins/", headers=admin)).json())["count"]
    assert after == before
    # same name+version, different image → conflict
    clash = await api.post(
        "/chris-admin/api/v1/",
        json={"descriptor": dict(DS_DESCRIPTOR, dock_image="other/img:1"), "compute_names": "site"},
        headers=admin,
    )
    assert clash.status == 409


async def test_non_admin_cannot_register(api: TestClient, registered: dict[str, int]) -> None:
    resp = await api.post(
        "/api/v1/users/", json={"username": "alice", "password": "alice-pass-1", "email": "a@x"}
    )
    assert resp.status == 201
    alice = await token_for(api, "alice", "alice-pass-1")
    resp = await api.post(
        "/chris-admin/api/v1/",
        json={"descriptor": DS_DESCRIPTOR, "compute_names": "site"},
        headers=alice,
    )
    assert resp.status == 403


async def test_upload_list_download(api: TestClient, admin: dict[str, str]) -> None:
    data = bytes(range(256)) * 5000
    resp = await upload(api, admin, "home/chris/uploads/sub/ünï code.bin", data)
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["fname"] == "home/chris/uploads/sub/ünï code.bin" and body["fsize"] == len(data)
    dl = await api.get(URL(body["file_resource"], encoded=True).raw_path, headers=admin)
    assert dl.status == 200
    assert await dl.read() == data
    listing = await (await api.get("/api/v1/userfiles/", headers=admin)).json()
    assert listing["count"] == 1
    dup = await upload(api, admin, "home/chris/uploads/sub/ünï code.bin", b"x")
    assert dup.status == 400


async def test_upload_path_rules(api: TestClient, admin: dict[str, str]) -> None:
    for path in (
        "uploads/x.txt",
        "/home/chris/x.txt",
        "home/other/x.txt",
        "home/chris/../other/x.txt",
        "home/chris/feeds/x.txt",
        "home/chris",
    ):
        resp = await upload(api, admin, path, b"data")
        assert resp.status == 400, path
        assert "upload_path" in await resp.json()
    listing = await (await api.get("/api/v1/userfiles/", headers=admin)).json()
    assert listing["count"] == 0


async def _fs_instance(api: TestClient, admin: dict[str, str], fs_id: int) -> dict[str, Any]:
    assert (await upload(api, admin, "home/chris/uploads/in/a.txt", b"hello")).status == 201
    resp = await api.post(
        f"/api/v1/plugins/{fs_id}/instances/",
        json={"dir": "home/chris/uploads/in", "title": "root"},
        headers=admin,
    )
    assert resp.status == 201, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def test_instances_lifecycle_without_compute(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    fs = await _fs_instance(api, admin, registered["fs"])
    assert fs["status"] == "scheduled" and fs["plugin_type"] == "fs"
    assert [h["status"] for h in fs["status_history"]] == ["created", "scheduled"]
    assert fs["start_date"] is None  # not started yet: queue time is not run time
    assert fs["output_path"] == f"home/chris/feeds/feed_{fs['feed_id']}/pl-fscopy_{fs['id']}/data"
    assert fs["cpu_limit"] == 1000 and fs["memory_limit"] == 200
    feed = await (await api.get(f"/api/v1/{fs['feed_id']}/", headers=admin)).json()
    assert feed["name"] == "root" and feed["scheduled_jobs"] == 1

    ds = await api.post(
        f"/api/v1/plugins/{registered['ds']}/instances/",
        json={
            "previous_id": fs["id"],
            "prefix": "p_",
            "count": "7",
            "verbose": True,
            "cpu_limit": "2000m",
        },
        headers=admin,
    )
    assert ds.status == 201, await ds.text()
    ds_body = await ds.json()
    assert ds_body["status"] == "waiting" and ds_body["feed_id"] == fs["feed_id"]
    assert ds_body["cpu_limit"] == 2000
    assert ds_body["output_path"].startswith(
        fs["output_path"].removesuffix("/data") + "/pl-dsthing_"
    )
    params = (
        await (
            await api.get(f"/api/v1/plugins/instances/{ds_body['id']}/parameters/", headers=admin)
        ).json()
    )["results"]
    assert {p["param_name"]: p["value"] for p in params} == {
        "prefix": "p_",
        "count": 7,
        "verbose": True,
    }

    # cancelling the parent cascades to the waiting child
    resp = await api.put(
        f"/api/v1/plugins/instances/{fs['id']}/", json={"status": "cancelled"}, headers=admin
    )
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    child = await (
        await api.get(f"/api/v1/plugins/instances/{ds_body['id']}/", headers=admin)
    ).json()
    assert child["status"] == "cancelled" and child["end_date"] is not None
    # a finished instance cannot be changed; only 'cancelled' may be set
    again = await api.put(
        f"/api/v1/plugins/instances/{fs['id']}/", json={"status": "cancelled"}, headers=admin
    )
    assert again.status == 200
    bad = await api.put(
        f"/api/v1/plugins/instances/{fs['id']}/", json={"status": "started"}, headers=admin
    )
    assert bad.status == 400
    # a child of a cancelled parent is cancelled at once
    late = await api.post(
        f"/api/v1/plugins/{registered['ds']}/instances/",
        json={"previous_id": fs["id"]},
        headers=admin,
    )
    assert (await late.json())["status"] == "cancelled"


async def test_bad_instance_requests(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    fs = await _fs_instance(api, admin, registered["fs"])
    ds_url = f"/api/v1/plugins/{registered['ds']}/instances/"
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        (ds_url, {"previous_id": fs["id"], "count": "seven"}, 400, "count"),
        (ds_url, {"previous_id": fs["id"], "count": True}, 400, "count"),
        (ds_url, {"previous_id": fs["id"], "nosuch": 1}, 400, "nosuch"),
        (ds_url, {}, 400, "previous_id"),
        (ds_url, {"previous_id": 9999}, 400, "previous_id"),
        (ds_url, {"previous_id": fs["id"], "cpu_limit": "9000m"}, 400, "cpu_limit"),
        (ds_url, {"previous_id": fs["id"], "memory_limit": "lots"}, 400, "memory_limit"),
        (ds_url, {"previous_id": fs["id"], "cpu_limit": "500m"}, 400, "cpu_limit"),  # < min
        (ds_url, {"previous_id": fs["id"], "memory_limit": "2Gi"}, 400, "memory_limit"),
        (ds_url, {"previous_id": fs["id"], "number_of_workers": 2}, 400, "number_of_workers"),
        (ds_url, {"previous_id": fs["id"], "number_of_workers": "x"}, 400, "number_of_workers"),
        (ds_url, {"previous_id": fs["id"], "gpu_limit": 1}, 400, "gpu_limit"),
        (
            ds_url,
            {"previous_id": fs["id"], "compute_resource_name": "elsewhere"},
            400,
            "compute_resource_name",
        ),
        (f"/api/v1/plugins/{registered['fs']}/instances/", {}, 400, "dir"),
        (
            f"/api/v1/plugins/{registered['fs']}/instances/",
            {"dir": "home/chris/nothing"},
            400,
            "dir",
        ),
        (f"/api/v1/plugins/{registered['fs']}/instances/", {"dir": "home/../etc"}, 400, "dir"),
        ("/api/v1/plugins/4242/instances/", {}, 404, "detail"),
    ]
    before = (await (await api.get("/api/v1/plugins/instances/", headers=admin)).json())["count"]
    for url, body, status, key in cases:
        resp = await api.post(url, json=body, headers=admin)
        assert resp.status == status, (body, await resp.text())
        assert key in await resp.json(), (body, await resp.json())
    after = (await (await api.get("/api/v1/plugins/instances/", headers=admin)).json())["count"]
    assert after == before
    assert (await api.post(ds_url, json={"previous_id": fs["id"]})).status == 401


async def test_other_users_cannot_see_or_use_files(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    fs = await _fs_instance(api, admin, registered["fs"])
    await api.post(
        "/api/v1/users/", json={"username": "mallory", "password": "mallory-pw", "email": ""}
    )
    mallory = await token_for(api, "mallory", "mallory-pw")
    assert (await api.get(f"/api/v1/plugins/instances/{fs['id']}/", headers=mallory)).status == 404
    assert (await api.get(f"/api/v1/{fs['feed_id']}/", headers=mallory)).status == 404
    resp = await api.post(
        f"/api/v1/plugins/{registered['fs']}/instances/",
        json={"dir": "home/chris/uploads/in"},
        headers=mallory,
    )
    assert resp.status == 400 and "dir" in await resp.json()
    files = await (await api.get("/api/v1/userfiles/", headers=admin)).json()
    fid = files["results"][0]["id"]
    assert (await api.get(f"/api/v1/userfiles/{fid}/a.txt", headers=mallory)).status == 404


async def test_instance_long_poll_times_out_with_same_status(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    fs = await _fs_instance(api, admin, registered["fs"])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await api.get(
        f"/api/v1/plugins/instances/{fs['id']}/?wait=0.5&status=scheduled", headers=admin
    )
    assert resp.status == 200 and (await resp.json())["status"] == "scheduled"
    assert loop.time() - t0 >= 0.5
    # a different known status answers at once
    resp = await api.get(
        f"/api/v1/plugins/instances/{fs['id']}/?wait=30&status=started", headers=admin
    )
    assert (await resp.json())["status"] == "scheduled"
