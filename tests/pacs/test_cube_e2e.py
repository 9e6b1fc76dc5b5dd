"""storescu → our receiver → CUBE's ``pacsfiles`` through the real CUBE app (in process).

CUBE's PACS endpoints (bulk ``POST /api/v1/pacs/files/``, ``pacs/series/``,
``pacsfiles/``) come from the CUBE API work; on a tree without them this test
skips and says so. Once they are merged it runs against them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import BasicAuth, web
from aiohttp.test_utils import TestClient, TestServer
from pacs_bridge.receiver import Receiver
from pacs_bridge.registrar import CubeRegistrar
from pacs_bridge.settings import BridgeSettings

from cube.app import create_app
from cube.settings import CubeSettings
from tests.support.dicom import write_ct_series
from tests.support.pacs import storescu

#: CUBE's default superuser (cube/settings.py).
ADMIN = ("chris", "chris1234")


def _has_pacs_registration(app: object) -> bool:
    resources = app.router.resources()  # type: ignore[attr-defined]
    return any(r.canonical == "/api/v1/pacs/files/" for r in resources)


@pytest.mark.usefixtures("dcmtk")
async def test_storescu_to_cube_pacsfiles(tmp_path: Path) -> None:
    cube_settings = CubeSettings(home=tmp_path / "cube", run_scheduler=False)
    app = create_app(cube_settings)
    if not _has_pacs_registration(app):
        pytest.skip("this tree's CUBE has no PACS endpoints (POST /api/v1/pacs/files/) yet")
    async with TestClient(TestServer(app, host="127.0.0.1")) as api:
        settings = BridgeSettings(
            dicom_host="127.0.0.1",
            dicom_port=0,
            accept_any_aet=True,
            storage_root=cube_settings.resolved_storage_dir(),
            reserve_bytes=0,
            quiet_seconds=0.2,
        )
        series = write_ct_series(tmp_path / "in", 10)
        user, password = ADMIN
        async with (
            CubeRegistrar(str(api.make_url("/api/v1/")), username=user, password=password) as reg,
            Receiver(settings, reg) as rx,
        ):
            proc = await asyncio.to_thread(
                storescu, "127.0.0.1", rx.port, series.files, aet="SCANNER"
            )
            assert proc.returncode == 0, proc.stderr
            [done] = await rx.assembler.wait_for(10, timeout=15)
            assert not rx.assembler.failed
        assert done.delay_seconds < 1.0
        headers = {"Accept": "application/json"}
        auth = {"auth": BasicAuth(user, password)}
        resp = await api.get("/api/v1/pacs/series/", headers=headers, **auth)
        body = await resp.json()
        assert resp.status == 200, body
        [row] = body["results"]
        assert row["SeriesInstanceUID"] == series.series_uid
        assert row["StudyInstanceUID"] == series.study_uid
        assert (row["PatientID"], row["PatientName"], row["Modality"]) == (
            "PAT001",
            "Doe^Jane",
            "CT",
        )
        assert row["pacs_identifier"] == "SCANNER"
        resp = await api.get("/api/v1/pacsfiles/", headers=headers, **auth)
        files = (await resp.json())["results"]
        assert sorted(f["fname"] for f in files) == sorted(done.files)


@pytest.mark.usefixtures("dcmtk")
async def test_series_split_over_two_associations_lands_in_cube_once(tmp_path: Path) -> None:
    """Two storescu associations within the quiet period: one POST, one series, every file.

    The registrar logs in once with the password (``auth-token/``) and sends the
    token afterwards: CUBE never runs its password hash on a registration.
    """
    cube_settings = CubeSettings(home=tmp_path / "cube", run_scheduler=False)
    app = create_app(cube_settings)
    if not _has_pacs_registration(app):
        pytest.skip("this tree's CUBE has no PACS endpoints (POST /api/v1/pacs/files/) yet")
    requests: list[tuple[str, str]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        scheme = request.headers.get("Authorization", "").partition(" ")[0]
        requests.append((f"{request.method} {request.path}", scheme))
        return await handler(request)

    app.middlewares.insert(0, record)
    async with TestClient(TestServer(app, host="127.0.0.1")) as api:
        settings = BridgeSettings(
            dicom_host="127.0.0.1",
            dicom_port=0,
            accept_any_aet=True,
            storage_root=cube_settings.resolved_storage_dir(),
            reserve_bytes=0,
            quiet_seconds=1.5,
        )
        series = write_ct_series(tmp_path / "in", 8)
        user, password = ADMIN
        async with (
            CubeRegistrar(str(api.make_url("/api/v1/")), username=user, password=password) as reg,
            Receiver(settings, reg) as rx,
        ):
            for part in (series.files[:5], series.files[5:]):
                proc = await asyncio.to_thread(storescu, "127.0.0.1", rx.port, part, aet="SCANNER")
                assert proc.returncode == 0, proc.stderr
            regs = await rx.assembler.wait_for(8, timeout=15)
            assert not rx.assembler.failed
        assert [len(r.files) for r in regs] == [8]
        assert requests == [("POST /api/v1/auth-token/", ""), ("POST /api/v1/pacs/files/", "Token")]
        headers = {"Accept": "application/json", "Authorization": f"Token {await _token(api)}"}
        body = await (await api.get("/api/v1/pacs/series/", headers=headers)).json()
        assert [r["SeriesInstanceUID"] for r in body["results"]] == [series.series_uid]
        files = (await (await api.get("/api/v1/pacsfiles/", headers=headers)).json())["results"]
        assert sorted(f["fname"] for f in files) == sorted(regs[0].files)


async def _token(api: TestClient[Any, Any]) -> str:
    user, password = ADMIN
    resp = await api.post("/api/v1/auth-token/", json={"username": user, "password": password})
    return str((await resp.json())["token"])
