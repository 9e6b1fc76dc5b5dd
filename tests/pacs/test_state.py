"""The state database: retrieves and routed series kept across restarts, bounded, and checked."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pacs_bridge.api import BRIDGE, create_app
from pacs_bridge.bridge import Bridge
from pacs_bridge.errors import StateError
from pacs_bridge.registrar import JsonlRegistry
from pacs_bridge.routing import Router
from pacs_bridge.schema import (
    RetrieveMethod,
    RetrieveState,
    RetrieveStatus,
    RoutedSeries,
    RouteState,
    SeriesMeta,
    SeriesRegistration,
    StoragePath,
)
from pacs_bridge.settings import BridgeSettings, RoutingRule
from pacs_bridge.state import INTERRUPTED, StateStore


def retrieve(ident: int, state: RetrieveState = RetrieveState.DONE) -> RetrieveStatus:
    return RetrieveStatus(id=ident, service="pacs", method=RetrieveMethod.MOVE, state=state)


def routed(series: str, state: RouteState = RouteState.STARTED) -> RoutedSeries:
    return RoutedSeries(
        pacs="SCANNER",
        calling_aet="SCANNER",
        series=series,
        folder="SERVICES/PACS/SCANNER/x",
        pipeline="seg",
        title=series,
        state=state,
        at=datetime.now(UTC),
    )


def test_retrieves_are_updated_in_place_and_trimmed_oldest_ended_first(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite3", keep=3)
    store.save_retrieve(retrieve(1, RetrieveState.RUNNING))
    for ident in range(2, 7):
        store.save_retrieve(retrieve(ident))
    # the running one stays however old, and the keep newest ended ones
    assert [r.id for r in store.retrieves()] == [1, 4, 5, 6]
    updated = retrieve(5)
    updated.completed = 7
    store.save_retrieve(updated)
    # once it has ended, the oldest goes
    store.save_retrieve(retrieve(1))
    store.close()

    again = StateStore(tmp_path / "state.sqlite3", keep=3)
    assert [(r.id, r.completed) for r in again.retrieves()] == [(4, 0), (5, 7), (6, 0)]
    assert again.last_retrieve_id() == 6
    again.close()


def test_routed_series_are_kept_per_series_and_trimmed(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite3", keep=2)
    store.save_routed(routed("1.1", RouteState.RUNNING))
    store.save_routed(routed("1.2", RouteState.FAILED))
    store.save_routed(routed("1.3"))
    # kept past keep while it runs
    assert [r.series for r in store.routed()] == ["1.1", "1.2", "1.3"]
    store.save_routed(routed("1.2", RouteState.STARTED))  # the same series: updated in place
    assert [(r.series, r.state) for r in store.routed()] == [
        ("1.1", RouteState.RUNNING),
        ("1.2", RouteState.STARTED),
        ("1.3", RouteState.STARTED),
    ]
    # once it has ended, the oldest goes (a series keeps the place of its first routing)
    store.save_routed(routed("1.1", RouteState.STARTED))
    assert [r.series for r in store.routed()] == ["1.2", "1.3"]
    store.close()


def test_what_was_running_when_the_bridge_stopped_is_marked_interrupted(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite3")
    store.save_retrieve(retrieve(1, RetrieveState.RUNNING))
    store.save_retrieve(retrieve(2))
    store.save_routed(routed("1.1", RouteState.RUNNING))
    store.interrupt_running()
    first, second = store.retrieves()
    assert (first.state, first.error) == (RetrieveState.FAILED, INTERRUPTED)
    assert first.ended_at is not None
    assert (second.state, second.error) == (RetrieveState.DONE, None)
    [record] = store.routed()
    assert (record.state, record.error) == (RouteState.FAILED, INTERRUPTED)
    store.close()


def test_a_file_that_is_not_a_state_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StateError, match="state database"):
        StateStore(path)
    ok = tmp_path / "ok.sqlite3"
    StateStore(ok).close()
    with sqlite3.connect(ok) as db:
        db.execute('INSERT INTO retrieves (id, running, doc) VALUES (1, 0, \'{"id": "x"}\')')
    store = StateStore(ok)
    with pytest.raises(StateError, match="bad RetrieveStatus"):
        store.retrieves()
    store.close()


def registration(folders: int) -> SeriesRegistration:
    return SeriesRegistration(
        pacs_identifier="SCANNER",
        meta=SeriesMeta(StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3", Modality="CT"),
        files=[StoragePath(f"SERVICES/PACS/SCANNER/f{i}/a.dcm") for i in range(folders)],
        registered_at=datetime.now(UTC),
    )


async def test_the_routing_record_survives_a_restart(tmp_path: Path) -> None:
    settings = BridgeSettings(
        cube_url="http://127.0.0.1:9/api/v1/",
        rules=[RoutingRule(pipeline="seg")],
        storage_root=tmp_path / "storage",
        dicom_host="127.0.0.1",
        dicom_port=0,
        accept_any_aet=True,
        reserve_bytes=0,
    )
    store = StateStore(settings.resolved_state_file())
    router = Router(settings, state=store)
    # files in two folders: a routing failure found before any call to CUBE
    record = router.route("SCANNER", registration(2))
    assert record is not None and record.state is RouteState.FAILED
    await router.close()
    store.close()

    # a new bridge on the same state: the record is in its status, and the
    # series is not routed a second time
    app = create_app(settings, Bridge(settings, JsonlRegistry(tmp_path / "reg.jsonl")))
    async with TestClient(TestServer(app)) as api:
        status = await (await api.get("/api/v1/status/")).json()
        routing = status["routing"]
        assert routing["series_routed"] == 1
        [failure] = routing["failures"]
        assert failure["series"] == "1.2.3" and "2 folders" in failure["error"]
        router = api.server.app[BRIDGE].router
        assert router is not None
        assert router.route("SCANNER", registration(1)) is None
