"""Registration: CUBE's bulk ``POST pacs/files/`` (one call per series) and the JSON-lines registry.

The CUBE side here is an aiohttp server that checks requests against CUBE's
contract for the endpoint (staff token or HTTP Basic, JSON body of
``pacs_name`` and ``files`` with DICOM keywords, every path under
``SERVICES/PACS/<pacs_name>/`` and present in storage, nothing registered
twice) and answers as CUBE does, with ``auth-token/`` (a username and
password for the token) where the test wants it.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pacs_bridge.errors import RegistrationError, RegistrationUnavailable
from pacs_bridge.receiver import Receiver
from pacs_bridge.registrar import CubeRegistrar, JsonlRegistry, make_registrar
from pacs_bridge.schema import PacsFilesIn, SeriesMeta, SeriesRegistration, StoragePath
from pacs_bridge.settings import BridgeSettings
from pydantic import SecretStr

from tests.support.dicom import write_ct_series
from tests.support.pacs import storescu

TOKEN = "staff-token"
STAFF = ("staff", "secret-password")


class CubeContract:
    """CUBE's ``POST /api/v1/pacs/files/`` as its contract states."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.bodies: list[dict[str, Any]] = []
        self.registered: set[str] = set()
        self.fail_next = 0
        #: The staff user's current token (a test may revoke it).
        self.token = TOKEN
        self.logins = 0
        #: The Authorization scheme of each registration request.
        self.schemes: list[str] = []

    async def auth_token(self, request: web.Request) -> web.Response:
        body = await request.json()
        if (body.get("username"), body.get("password")) != STAFF:
            return web.json_response({"non_field_errors": ["Unable to log in."]}, status=400)
        self.logins += 1
        return web.json_response({"token": self.token})

    async def handle(self, request: web.Request) -> web.Response:
        basic = "Basic " + base64.b64encode(":".join(STAFF).encode()).decode()
        authorization = request.headers.get("Authorization", "")
        if authorization not in (f"Token {self.token}", basic):
            return web.json_response({"detail": "Invalid token."}, status=401)
        self.schemes.append(authorization.partition(" ")[0])
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"detail": "database locked"}, status=503)
        if request.content_type != "application/json":
            return web.json_response({"detail": "unsupported media type"}, status=415)
        body = await request.json()
        self.bodies.append(body)
        prefix = f"SERVICES/PACS/{body['pacs_name']}/"
        series = set()
        for f in body["files"]:
            if not f["path"].startswith(prefix) or not (self.storage / f["path"]).is_file():
                return web.json_response({"files": [f"bad path {f['path']}"]}, status=400)
            if f["path"] in self.registered:
                return web.json_response({"files": ["already registered"]}, status=400)
            series.add(f["SeriesInstanceUID"])
        self.registered.update(f["path"] for f in body["files"])
        return web.json_response(
            {"registered": len(body["files"]), "series": len(series)}, status=201
        )


@pytest.fixture
async def cube(tmp_path: Path) -> Any:
    contract = CubeContract(tmp_path / "storage")
    app = web.Application()
    app.router.add_post("/api/v1/pacs/files/", contract.handle)
    app.router.add_post("/api/v1/auth-token/", contract.auth_token)
    async with TestServer(app, host="127.0.0.1") as server:
        contract.url = str(server.make_url("/api/v1/"))  # type: ignore[attr-defined]
        yield contract


@pytest.mark.usefixtures("dcmtk")
async def test_storescu_series_registered_in_cube_in_one_call(
    cube: Any, settings: BridgeSettings, tmp_path: Path
) -> None:
    settings.cube_url = cube.url
    settings.cube_token = SecretStr(TOKEN)
    registrar = make_registrar(settings)
    assert isinstance(registrar, CubeRegistrar)
    series = write_ct_series(tmp_path / "in", 12)
    async with registrar, Receiver(settings, registrar) as rx:
        proc = await asyncio.to_thread(storescu, "127.0.0.1", rx.port, series.files)
        assert proc.returncode == 0, proc.stderr
        [reg] = await rx.assembler.wait_for(12, timeout=10)
    assert len(cube.bodies) == 1
    body = PacsFilesIn.model_validate(cube.bodies[0])
    assert body.pacs_name == "STORESCU"
    assert len(body.files) == 12
    f = body.files[0]
    assert (f.PatientID, f.PatientName, f.PatientBirthDate, f.PatientSex) == (
        "PAT001",
        "Doe^Jane",
        "19700101",
        "O",
    )
    assert (f.StudyInstanceUID, f.StudyDate, f.StudyDescription, f.AccessionNumber) == (
        series.study_uid,
        "20240102",
        "Head^Routine",
        "ACC0001",
    )
    assert (f.SeriesInstanceUID, f.SeriesDescription, f.Modality) == (
        series.series_uid,
        "AXIAL CT",
        "CT",
    )
    assert sorted(x.path for x in body.files) == sorted(reg.files)


def _registration(storage: Path, n: int = 2) -> SeriesRegistration:
    files = []
    for i in range(n):
        p = f"SERVICES/PACS/PX/p/s/x/{i:04d}-1.2.{i}.dcm"
        (storage / p).parent.mkdir(parents=True, exist_ok=True)
        (storage / p).write_bytes(b"x")
        files.append(StoragePath(p))
    return SeriesRegistration(
        pacs_identifier="PX",
        meta=SeriesMeta(StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3"),
        files=files,
        registered_at="2024-01-01T00:00:00Z",  # type: ignore[arg-type]
    )


async def test_cube_refusal_and_unavailability_are_told_apart(cube: Any, tmp_path: Path) -> None:
    reg = _registration(tmp_path / "storage")
    async with CubeRegistrar(cube.url, token=TOKEN) as registrar:
        cube.fail_next = 1
        with pytest.raises(RegistrationUnavailable, match="503"):
            await registrar.register(reg)
        await registrar.register(reg)
        with pytest.raises(RegistrationError, match="already registered"):
            await registrar.register(reg)
    async with CubeRegistrar(cube.url, token="wrong") as registrar:
        with pytest.raises(RegistrationError, match="401"):
            await registrar.register(reg)
    async with CubeRegistrar("http://127.0.0.1:9/api/v1/", token=TOKEN) as registrar:
        with pytest.raises(RegistrationUnavailable, match="unreachable"):
            await registrar.register(reg)


async def test_password_is_exchanged_once_for_a_token(cube: Any, tmp_path: Path) -> None:
    # CUBE checks a password with scrypt on each request that carries one: the
    # registrar logs in once and sends the token with every registration
    user, password = STAFF
    async with CubeRegistrar(cube.url, username=user, password=password) as registrar:
        for n in range(3):
            reg = _registration(tmp_path / "storage", n + 1)
            await registrar.register(reg.model_copy(update={"files": reg.files[n:]}))
        assert (cube.logins, cube.schemes) == (1, ["Token"] * 3)
        cube.token = "rotated-token"  # the old token no longer works: log in again, once
        reg = _registration(tmp_path / "storage", 4)
        await registrar.register(reg.model_copy(update={"files": reg.files[3:]}))
    assert (cube.logins, cube.schemes) == (2, ["Token"] * 4)
    assert len(cube.registered) == 4
    async with CubeRegistrar(cube.url, username=user, password="wrong") as registrar:
        with pytest.raises(RegistrationError, match="refused the login"):
            await registrar.register(_registration(tmp_path / "storage", 5))


async def test_cube_without_auth_token_gets_basic_credentials(tmp_path: Path) -> None:
    contract = CubeContract(tmp_path / "storage")
    app = web.Application()
    app.router.add_post("/api/v1/pacs/files/", contract.handle)
    user, password = STAFF
    async with (
        TestServer(app, host="127.0.0.1") as server,
        CubeRegistrar(str(server.make_url("/api/v1/")), username=user, password=password) as reg,
    ):
        await reg.register(_registration(tmp_path / "storage", 1))
        more = _registration(tmp_path / "storage", 2)
        await reg.register(more.model_copy(update={"files": more.files[1:]}))
    assert contract.schemes == ["Basic", "Basic"]
    assert len(contract.registered) == 2


@pytest.mark.usefixtures("dcmtk")
async def test_unavailable_cube_is_retried(
    cube: Any, settings: BridgeSettings, tmp_path: Path
) -> None:
    settings.register_retry_seconds = 0.1
    cube.fail_next = 2
    series = write_ct_series(tmp_path / "in", 3)
    async with (
        CubeRegistrar(cube.url, token=TOKEN) as registrar,
        Receiver(settings, registrar) as rx,
    ):
        proc = await asyncio.to_thread(storescu, "127.0.0.1", rx.port, series.files)
        assert proc.returncode == 0
        [reg] = await rx.assembler.wait_for(3, timeout=10)
    assert len(reg.files) == 3
    assert not rx.assembler.failed
    assert len(cube.registered) == 3


async def test_jsonl_registry_round_trip(tmp_path: Path) -> None:
    registry = JsonlRegistry(tmp_path / "sub" / "r.jsonl")
    assert registry.registrations() == []
    reg = _registration(tmp_path / "storage")
    await registry.register(reg)
    await registry.register(reg.model_copy(update={"files": reg.files[:1]}))
    assert registry.registrations()[0] == reg
    assert registry.series() == {("PX", "1.2.3"): [*reg.files, reg.files[0]]}
    (tmp_path / "sub" / "r.jsonl").write_text("not json\n")
    with pytest.raises(RegistrationError, match=r"r\.jsonl:1"):
        registry.registrations()
