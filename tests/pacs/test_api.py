"""The REST API over a real Orthanc: services, echo, query, retrieve and its events, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pacs_bridge.api import BRIDGE, create_app
from pacs_bridge.registrar import JsonlRegistry
from pacs_bridge.settings import BridgeSettings

from tests.pacs.conftest import Pacs


@pytest.fixture
async def api(pacs: Pacs, settings: BridgeSettings, tmp_path: Path) -> Any:
    settings.dicom_port = pacs.receiver_port
    settings.services_file = tmp_path / "services.json"
    async with TestClient(TestServer(create_app(settings))) as client:
        yield client


async def _put_orthanc(api: TestClient, pacs: Pacs) -> None:
    body = {"aet": "ORTHANC", "host": "127.0.0.1", "port": pacs.orthanc.dicom_port}
    resp = await api.put("/api/v1/services/orthanc/", json=body)
    assert resp.status == 200, await resp.text()


async def test_services_crud_and_errors(api: TestClient, pacs: Pacs, tmp_path: Path) -> None:
    assert await (await api.get("/api/v1/services/")).json() == []
    await _put_orthanc(api, pacs)
    [svc] = await (await api.get("/api/v1/services/")).json()
    assert svc["name"] == "orthanc" and svc["aet"] == "ORTHANC"
    saved = json.loads((tmp_path / "services.json").read_text())
    assert saved["orthanc"]["port"] == pacs.orthanc.dicom_port
    resp = await api.get("/api/v1/services/nope/")
    assert resp.status == 404
    assert (await resp.json())["code"] == "not_found"
    resp = await api.put("/api/v1/services/bad/", json={"aet": "A" * 17, "host": "h", "port": 1})
    assert resp.status == 400
    assert "AE title" in (await resp.json())["message"]
    resp = await api.put("/api/v1/services/bad/", data=b"{", headers={"Content-Type": "a/b"})
    assert resp.status == 400
    assert (await api.post("/api/v1/services/orthanc/echo/")).status == 200
    assert (await api.delete("/api/v1/services/orthanc/")).status == 204
    assert (await api.post("/api/v1/services/orthanc/echo/")).status == 404


async def test_query_retrieve_events_status_export(
    api: TestClient, pacs: Pacs, settings: BridgeSettings
) -> None:
    await _put_orthanc(api, pacs)
    resp = await api.post(
        "/api/v1/services/orthanc/query/",
        json={"level": "SERIES", "query": {"StudyInstanceUID": pacs.series[0].study_uid}},
    )
    assert resp.status == 200, await resp.text()
    results = (await resp.json())["results"]
    assert {r["SeriesInstanceUID"] for r in results} == {
        pacs.series[0].series_uid,
        pacs.series[1].series_uid,
    }
    resp = await api.post(
        "/api/v1/services/orthanc/query/", json={"level": "STUDY", "query": {"Bogus": "1"}}
    )
    assert resp.status == 400

    b1 = pacs.series[2]
    resp = await api.post(
        "/api/v1/services/orthanc/retrieve/",
        json={"StudyInstanceUID": b1.study_uid, "SeriesInstanceUID": b1.series_uid},
    )
    assert resp.status == 202, await resp.text()
    location = resp.headers["Location"]
    events = await (await api.get(location + "events/")).text()
    last = [line for line in events.splitlines() if line.startswith("data: ")][-1]
    final = json.loads(last[len("data: ") :])
    assert final["state"] == "done" and final["completed"] == 2, events
    assert (await (await api.get(location)).json())["state"] == "done"

    # the registration follows the association's quiet period
    rx = api.server.app[BRIDGE].receiver
    [reg] = await rx.assembler.wait_for(2, timeout=10)
    status = await (await api.get("/api/v1/status/")).json()
    assert status["instances"]["stored"] == 2
    assert status["series_registered"] == 1

    # export the retrieved files back (as a new series would be) and the errors of paths
    resp = await api.post("/api/v1/services/orthanc/export/", json={"files": reg.files})
    assert resp.status == 200, await resp.text()
    assert len((await resp.json())["stored"]) == 2
    resp = await api.post("/api/v1/services/orthanc/export/", json={"files": ["../etc/passwd"]})
    assert resp.status == 400
    assert registry_lines(settings) == 1


def registry_lines(settings: BridgeSettings) -> int:
    return len(JsonlRegistry(settings.resolved_registry_file()).registrations())
