"""Routing rules: which series match, the settings' errors, and the calls made to CUBE.

The CUBE side is an aiohttp server answering the four calls routing makes
(plugin and pipeline search, instance and workflow creation) as CUBE does,
with DRF JSON pages, and recording what it was sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pacs_bridge.receiver import SeriesAssembler
from pacs_bridge.registrar import Registrar
from pacs_bridge.routing import CubeFeedClient, Router, RouteState, feed_title
from pacs_bridge.schema import SeriesMeta, SeriesRegistration, StoragePath
from pacs_bridge.settings import TITLE_FIELDS, BridgeSettings, RoutingRule
from pydantic import ValidationError

from tests.support.components import free_port

FOLDER = "SERVICES/PACS/SCANNER/PAT1-Doe-19700101/Head-A1-20240101/00003-AXIAL_CT-abcdef0"


def rule(**fields: Any) -> RoutingRule:
    return RoutingRule.model_validate({"pipeline": "p", **fields})


@pytest.mark.parametrize(
    ("fields", "calling", "modality", "description", "expected"),
    [
        ({}, "ANY", "MR", "", True),
        ({"calling_aet": "SCANNER"}, "SCANNER", "CT", "x", True),
        ({"calling_aet": "SCANNER"}, "OTHER", "CT", "x", False),
        ({"modality": "CT"}, "A", "ct", "x", True),
        ({"modality": "CT"}, "A", "MR", "x", False),
        ({"modality": "*"}, "A", "", "x", True),
        ({"series_description": "^AXIAL"}, "A", "CT", "AXIAL 2mm", True),
        ({"series_description": "^AXIAL"}, "A", "CT", "CORONAL AXIAL", False),
        ({"series_description": "(?i)t1"}, "A", "MR", "sag T1 mprage", True),
        ({"series_description": "T1$"}, "A", "MR", "", False),
        (
            {"calling_aet": "SCANNER", "modality": "CT", "series_description": "AX"},
            "SCANNER",
            "MR",
            "AX",
            False,
        ),
    ],
)
def test_rule_matching(
    fields: dict[str, Any], calling: str, modality: str, description: str, expected: bool
) -> None:
    assert rule(**fields).matches(calling, modality, description) is expected


def test_first_matching_rule_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PACS_BRIDGE_RULES",
        '[{"modality": "CT", "series_description": "^AX", "pipeline": "ct axial"},'
        ' {"modality": "CT", "pipeline": "ct other"}]',
    )
    settings = BridgeSettings(cube_url="http://cube/api/v1/")
    assert [r.pipeline for r in settings.rules] == ["ct axial", "ct other"]
    found = settings.rule_for("X", "CT", "AXIAL")
    assert found is not None and found.pipeline == "ct axial"
    found = settings.rule_for("X", "CT", "CORONAL")
    assert found is not None and found.pipeline == "ct other"
    assert settings.rule_for("X", "MR", "AXIAL") is None


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ('[{"series_description": "(", "pipeline": "p"}]', "is not a regular expression"),
        ('[{"modality": "CT"}]', "pipeline"),
        ('[{"pipeline": ""}]', "pipeline"),
        ('[{"pipeline": "p", "feed_title": "{Nope}"}]', "names ['Nope']"),
        ('[{"pipeline": "p", "feed_title": "{PatientID"}]', "not a format string"),
        ('[{"pipeline": "p", "calling_aet": "MUCH_TOO_LONG_AE_TITLE"}]', "AE title"),
        ('[{"pipeline": "p", "modality_typo": "CT"}]', "modality_typo"),
        ('{"pipeline": "p"}', "list"),
    ],
)
def test_bad_rules_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, rules: str, message: str
) -> None:
    monkeypatch.setenv("PACS_BRIDGE_RULES", rules)
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        BridgeSettings(cube_url="http://cube/api/v1/")


def test_rules_need_cube() -> None:
    with pytest.raises(ValidationError, match="PACS_BRIDGE_CUBE_URL"):
        BridgeSettings(rules=[rule()])


def registration(description: str = "AXIAL CT", folder: str = FOLDER) -> SeriesRegistration:
    return SeriesRegistration(
        pacs_identifier="SCANNER",
        meta=SeriesMeta(
            PatientID="PAT1",
            StudyInstanceUID="1.2.3",
            SeriesInstanceUID=f"1.2.3.{abs(hash(description)) % 10**6}",
            SeriesDescription=description,
            Modality="CT",
        ),
        files=[StoragePath(f"{folder}/0001-a.dcm"), StoragePath(f"{folder}/0002-b.dcm")],
        registered_at=datetime.now(UTC),
    )


def test_title_fields_are_the_registered_keywords() -> None:
    # settings.py cannot import schema.py (schema imports settings): keep the two in step
    assert TITLE_FIELDS == set(SeriesMeta.model_fields) | {"pacs", "calling_aet"}


def test_feed_title_template() -> None:
    r = rule(feed_title="{calling_aet}: {PatientID}  {SeriesDescription} ({pacs})")
    assert feed_title(r, "CT1", registration()) == "CT1: PAT1 AXIAL CT (SCANNER)"
    assert feed_title(rule(feed_title="{ProtocolName}"), "A", registration()).startswith("1.2.3.")


class FakeCube:
    """CUBE's plugin and pipeline search, instance and workflow creation."""

    def __init__(self) -> None:
        self.pipelines = {"seg": 7}
        self.instances: list[dict[str, Any]] = []
        self.workflows: list[tuple[int, dict[str, Any]]] = []
        self.fail_workflow = 0
        self.accept: set[str] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/plugins/search/", self.plugins)
        app.router.add_get("/api/v1/pipelines/search/", self.search_pipelines)
        app.router.add_post("/api/v1/plugins/{id}/instances/", self.create_instance)
        app.router.add_post("/api/v1/pipelines/{id}/workflows/", self.create_workflow)
        return app

    def page(self, request: web.Request, results: list[dict[str, Any]]) -> web.Response:
        self.accept.add(request.headers.get("Accept", ""))
        return web.json_response({"count": len(results), "next": None, "results": results})

    async def plugins(self, request: web.Request) -> web.Response:
        name = request.query["name_exact"]
        found = [
            {"id": 3, "name": "pl-dircopy", "version": "1.0.0", "type": "fs"},
            {"id": 9, "name": "pl-dircopy", "version": "1.10.0", "type": "fs"},
            {"id": 5, "name": "pl-dircopy", "version": "1.2.0", "type": "fs"},
        ]
        return self.page(request, [p for p in found if p["name"] == name])

    async def search_pipelines(self, request: web.Request) -> web.Response:
        name = request.query["name_exact"]
        found = [{"id": i, "name": n} for n, i in self.pipelines.items() if n == name]
        return self.page(request, found)

    async def create_instance(self, request: web.Request) -> web.Response:
        body = await request.json()
        ident = 100 + len(self.instances)
        self.instances.append({"plugin": int(request.match_info["id"]), **body})
        return web.json_response(
            {"id": ident, "feed_id": ident - 99, "output_path": f"x/{ident}"}, status=201
        )

    async def create_workflow(self, request: web.Request) -> web.Response:
        if self.fail_workflow:
            self.fail_workflow -= 1
            return web.json_response({"detail": "database locked"}, status=503)
        body = await request.json()
        self.workflows.append((int(request.match_info["id"]), body))
        return web.json_response({"id": len(self.workflows)}, status=201)


@pytest.fixture
async def cube() -> AsyncIterator[tuple[FakeCube, str]]:
    fake = FakeCube()
    server = TestServer(fake.app())
    await server.start_server()
    try:
        yield fake, str(server.make_url("/api/v1/"))
    finally:
        await server.close()


def router_for(url: str, *rules: RoutingRule) -> Router:
    settings = BridgeSettings(cube_url=url, rules=list(rules))
    return Router(settings, CubeFeedClient(url), attempts=3, retry_seconds=0.01)


async def test_router_makes_a_feed_and_starts_the_pipeline(cube: tuple[FakeCube, str]) -> None:
    fake, url = cube
    router = router_for(url, rule(pipeline="seg", series_description="^AXIAL"))
    try:
        reg = registration()
        record = router.route("SCANNER", reg)
        assert record is not None
        await router.wait(5)
        assert record.state is RouteState.STARTED, record.error
        assert (record.instance_id, record.feed_id, record.workflow_id) == (100, 1, 1)
        # the newest pl-dircopy (1.10.0 > 1.2.0), on the series' folder
        assert fake.instances == [{"plugin": 9, "dir": FOLDER, "title": "PAT1 AXIAL CT"}]
        assert fake.workflows == [(7, {"previous_plugin_inst_id": 100, "title": "PAT1 AXIAL CT"})]
        assert fake.accept == {"application/json"}
        # a later part of the same series is not routed again; a non-matching series not at all
        assert router.route("SCANNER", reg) is None
        assert router.route("SCANNER", registration("CORONAL")) is None
        assert len(fake.instances) == 1 and router.failures == []
    finally:
        await router.close()


async def test_missing_pipeline_fails_visibly_without_a_feed(cube: tuple[FakeCube, str]) -> None:
    fake, url = cube
    router = router_for(url, rule(pipeline="absent"))
    try:
        record = router.route("SCANNER", registration())
        await router.wait(5)
        assert record is not None and record.state is RouteState.FAILED
        assert "no pipeline named 'absent'" in record.error
        assert router.failures == [record] and fake.instances == []
    finally:
        await router.close()


async def test_cube_unavailable_is_retried_from_the_failed_step(
    cube: tuple[FakeCube, str],
) -> None:
    fake, url = cube
    fake.fail_workflow = 2
    router = router_for(url, rule(pipeline="seg"))
    try:
        record = router.route("SCANNER", registration())
        await router.wait(5)
        assert record is not None and record.state is RouteState.STARTED, record.error
        assert len(fake.instances) == 1 and len(fake.workflows) == 1
    finally:
        await router.close()


async def test_cube_down_fails_after_the_attempts() -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1/"
    router = router_for(url, rule(pipeline="seg"))
    try:
        record = router.route("SCANNER", registration())
        await router.wait(5)
        assert record is not None and record.state is RouteState.FAILED
        assert "unreachable" in record.error
    finally:
        await router.close()


async def test_files_in_several_folders_fail() -> None:
    router = Router(BridgeSettings(cube_url="http://cube/", rules=[rule()]))
    reg = registration()
    reg.files.append(StoragePath("SERVICES/PACS/SCANNER/elsewhere/x.dcm"))
    try:
        record = router.route("SCANNER", reg)
        assert record is not None and record.state is RouteState.FAILED
        assert "2 folders" in record.error
    finally:
        await router.close()


class _Recording(Registrar):
    def __init__(self) -> None:
        self.done: list[SeriesRegistration] = []

    async def register(self, registration: SeriesRegistration) -> None:
        self.done.append(registration)


async def test_assembler_routes_with_the_calling_aet_and_keeps_the_registration() -> None:
    calls: list[tuple[str, str]] = []

    def on_registered(calling: str, reg: SeriesRegistration) -> None:
        calls.append((calling, reg.meta.SeriesInstanceUID))
        raise RuntimeError("routing bug")

    registrar = _Recording()
    assembler = SeriesAssembler(registrar, quiet_seconds=0, on_registered=on_registered)
    reg = registration()
    assembler.stored(1, "RENAMED", reg.meta, reg.files[0], "SCANNER")
    assembler.ended(1)
    done = await assembler.wait_for(1, timeout=5)
    assert [r.meta.SeriesInstanceUID for r in done] == [reg.meta.SeriesInstanceUID]
    assert calls == [("SCANNER", reg.meta.SeriesInstanceUID)]
    assert assembler.files_failed == 0 and len(registrar.done) == 1
