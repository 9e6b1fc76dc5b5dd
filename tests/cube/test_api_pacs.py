"""PACS resources: bulk file registration, reads, and who may read them."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cube.api.common import STORAGE
from cube.app import create_app
from cube.client import CubeClient
from cube.schema import PacsFileIn
from cube.settings import CubeSettings
from tests.cube.apiworld import JSON, World, build_world, local, ok

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def world(api: TestClient) -> World:
    return await build_world(api)


def store(api: TestClient, path: str, data: bytes) -> None:
    local_path = api.server.app[STORAGE].local_path(path)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    local_path.write_bytes(data)


def series_files(n: int, uid: str, folder: str) -> list[dict[str, Any]]:
    return [
        {
            "path": f"{folder}/{i:04d}.dcm",
            "PatientID": "P1",
            "PatientName": "Doe^John",
            "StudyInstanceUID": "1.2.3",
            "SeriesInstanceUID": uid,
            "SeriesDescription": "T1 MPRAGE",
            "Modality": "MR",
        }
        for i in range(n)
    ]


async def test_bulk_registration_and_reads(api: TestClient, world: World) -> None:
    folder_a = "SERVICES/PACS/orthanc/P1/S1"
    folder_b = "SERVICES/PACS/orthanc/P1/S2"
    files = series_files(30, "1.2.3.1", folder_a) + series_files(5, "1.2.3.2", folder_b)
    for f in files:
        store(api, f["path"], b"DICM" + f["path"].encode())
    body = {"pacs_name": "orthanc", "files": files}
    # staff only
    resp = await api.post("/api/v1/pacs/files/", json=body, headers=world.alice)
    assert resp.status == 403
    done = await ok(await api.post("/api/v1/pacs/files/", json=body, headers=world.admin), 201)
    assert done == {"registered": 35, "series": 2}
    # registering again is refused, and nothing half-done
    resp = await api.post("/api/v1/pacs/files/", json=body, headers=world.admin)
    assert resp.status == 400 and "already registered" in await resp.text()
    pacs = await ok(await api.get("/api/v1/pacs/", headers=world.admin))
    assert [p["identifier"] for p in pacs["results"]] == ["orthanc"]
    series = await ok(
        await api.get("/api/v1/pacs/series/search/?SeriesInstanceUID=1.2.3.1", headers=world.admin)
    )
    (one,) = series["results"]
    assert one["folder_path"] == folder_a and one["SeriesDescription"] == "T1 MPRAGE"
    in_series = await ok(await api.get(local(one["files"]) + "&limit=100", headers=world.admin))
    assert in_series["count"] == 30
    v5 = await ok(await api.get("/api/v1/pacsfiles/search/?PatientID=P1", headers=world.admin))
    assert v5["count"] == 35
    first = in_series["results"][0]
    data = await api.get(local(first["file_resource"]), headers=world.admin)
    assert await data.read() == b"DICM" + first["fname"].encode()
    # the files appear in the file browser under SERVICES/PACS
    found = await ok(
        await api.get(f"/api/v1/filebrowser/search/?path={folder_a}", headers=world.admin)
    )
    files_there = await ok(
        await api.get(local(found["results"][0]["files"]) + "?limit=50", headers=world.admin)
    )
    assert files_there["count"] == 30


async def test_pacs_reads_need_pacs_users(api: TestClient, world: World) -> None:
    path = "SERVICES/PACS/orthanc/P9/S9/0000.dcm"
    store(api, path, b"DICM")
    files = series_files(1, "9.9", "SERVICES/PACS/orthanc/P9/S9")
    await ok(
        await api.post(
            "/api/v1/pacs/files/",
            json={"pacs_name": "orthanc", "files": files},
            headers=world.admin,
        ),
        201,
    )
    for url in ("/api/v1/pacs/", "/api/v1/pacs/series/", "/api/v1/pacs/files/"):
        assert (await api.get(url, headers=world.carol)).status == 403
    pacs_users = await ok(
        await api.post("/api/v1/groups/", json={"name": "pacs_users"}, headers=world.admin), 201
    )
    await ok(
        await api.post(
            f"/api/v1/groups/{pacs_users['id']}/users/",
            json={"username": "carol"},
            headers=world.admin,
        ),
        201,
    )
    listing = await ok(await api.get("/api/v1/pacs/files/", headers=world.carol))
    assert listing["count"] == 1
    assert (
        await api.get(local(listing["results"][0]["file_resource"]), headers=world.carol)
    ).status == 200
    # and a query can be recorded for the bridge
    pacs_id = (await ok(await api.get("/api/v1/pacs/", headers=world.carol)))["results"][0]["id"]
    query = await ok(
        await api.post(
            f"/api/v1/pacs/{pacs_id}/queries/",
            json={"title": "john", "query": {"PatientID": "P9"}},
            headers=world.carol,
        ),
        201,
    )
    assert query["status"] == "created" and query["owner_username"] == "carol"
    mine = await ok(await api.get("/api/v1/pacs/queries/", headers=world.carol))
    assert [q["id"] for q in mine["results"]] == [query["id"]]
    bad = await api.post(
        f"/api/v1/pacs/{pacs_id}/queries/", json={"title": "x", "query": {}}, headers=world.carol
    )
    assert bad.status == 400


async def test_bad_registrations_register_nothing(api: TestClient, world: World) -> None:
    store(api, "SERVICES/PACS/orthanc/a.dcm", b"x")
    cases = [
        {
            "pacs_name": "orthanc",
            "files": [{"path": "home/alice/uploads/in.txt", "SeriesInstanceUID": "1"}],
        },
        {
            "pacs_name": "orthanc",
            "files": [{"path": "SERVICES/PACS/orthanc/missing.dcm", "SeriesInstanceUID": "1"}],
        },
        {
            "pacs_name": "orthanc",
            "files": [{"path": "SERVICES/PACS/orthanc/../../x", "SeriesInstanceUID": "1"}],
        },
        {"pacs_name": "orthanc", "files": [{"path": "SERVICES/PACS/orthanc/a.dcm"}]},
        {"pacs_name": "", "files": []},
        {
            "pacs_name": "orthanc",
            "files": [
                {"path": "SERVICES/PACS/orthanc/a.dcm", "SeriesInstanceUID": "1"},
                {"path": "SERVICES/PACS/orthanc/a.dcm", "SeriesInstanceUID": "1"},
            ],
        },
    ]
    for body in cases:
        resp = await api.post("/api/v1/pacs/files/", json=body, headers={**world.admin, **JSON})
        assert resp.status == 400, (body, resp.status, await resp.text())
    listing = await ok(await api.get("/api/v1/pacs/files/", headers=world.admin))
    assert listing["count"] == 0


async def test_typed_client_registers_pacs_files(
    aiohttp_server: Any, cube_settings: CubeSettings
) -> None:
    """The DICOM bridge's path: CubeClient.register_pacs_files over a real socket."""
    server = await aiohttp_server(create_app(cube_settings))
    storage = server.app[STORAGE]
    paths = [f"SERVICES/PACS/orthanc/P1/S1/{i}.dcm" for i in range(3)]
    for p in paths:
        target = storage.local_path(p)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"DICM")
    client = await CubeClient.from_login(str(server.make_url("/")), "chris", "chris1234")
    async with client:
        done = await client.register_pacs_files(
            "orthanc", [PacsFileIn(path=p, SeriesInstanceUID="1.2", PatientID="P1") for p in paths]
        )
        assert (done.registered, done.series) == (3, 1)
        listed = await client.pacs_files(SeriesInstanceUID="1.2")
        assert sorted(f.fname for f in listed) == paths
        assert all(f.fsize == 4 and f.pacs_identifier == "orthanc" for f in listed)
