"""Several scheduler workers on one database, and sites that fail.

Two :class:`Scheduler` objects, each with its own engine (as two processes
have), drive many instances on a real PostgreSQL server through one fake
compute site that records who submitted what: every job is submitted once,
both workers take part, and each instance passes each status once. A lost
lease stops a worker's task without touching the site. An unreachable or
hanging site delays only its own instances.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, update
from sqlmodel import col, select

from cube.api.common import SESSIONS
from cube.app import create_app
from cube.db.engine import make_engine, make_sessionmaker
from cube.db.models import ComputeResource, PluginInstance, StatusChange
from cube.scheduler import Scheduler, StatusHub
from cube.settings import CubeSettings
from cube.storage import FilesystemStorage
from pfcon.errors import PfconUnavailable
from pfcon.schema import JobDescriptor, JobInfo, JobSubmitted
from tests.cube.conftest import ADMIN, DS_DESCRIPTOR, FS_DESCRIPTOR, JSON_ACCEPT, token_for
from tests.cube.test_api import upload
from tests.cube.test_placement import FakeSite, add_resource, register


class CountingSite(FakeSite):
    """A fake site whose jobs end by themselves shortly after submission, and
    which records every submission with the worker that made it."""

    def __init__(self, name: str, run_seconds: float = 0.02) -> None:
        super().__init__(name)
        self.submitted: dict[str, list[str]] = defaultdict(list)
        self.run_seconds = run_seconds
        self._enders: set[asyncio.Task[None]] = set()

    async def submit_as(
        self, worker: str, job: JobDescriptor, data: AsyncIterable[bytes]
    ) -> JobSubmitted:
        self.submitted[job.jid].append(worker)
        out = await self.submit(job, data)
        task = asyncio.create_task(self._end_later(job.jid))
        self._enders.add(task)
        task.add_done_callback(self._enders.discard)
        return out

    async def _end_later(self, jid: str) -> None:
        await asyncio.sleep(self.run_seconds)
        if jid in self.jobs:
            await self.finish(jid)


class WorkerView:
    """One worker's client of a shared :class:`CountingSite` (the site sees who calls)."""

    def __init__(self, site: CountingSite, worker: str) -> None:
        self._site = site
        self._worker = worker

    async def submit(self, job: JobDescriptor, data: AsyncIterable[bytes]) -> JobSubmitted:
        return await self._site.submit_as(self._worker, job, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._site, name)


def worker_settings(base: CubeSettings, worker_id: str, **overrides: Any) -> CubeSettings:
    return base.model_copy(update={"worker_id": worker_id, **overrides})


@contextlib.asynccontextmanager
async def running_worker(
    settings: CubeSettings, factory: Callable[[ComputeResource], Any]
) -> AsyncIterator[Scheduler]:
    """A scheduler with its own engine, running until the block ends."""
    engine = make_engine(settings.resolved_database_url())
    scheduler = Scheduler(
        settings,
        make_sessionmaker(engine),
        FilesystemStorage(settings.resolved_storage_dir()),
        StatusHub(),
        client_factory=factory,
    )
    task = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.dispose()


async def _api(aiohttp_client: Callable[..., Any], settings: CubeSettings) -> TestClient:
    return await aiohttp_client(create_app(settings), headers=JSON_ACCEPT)  # type: ignore[no-any-return]


async def _statuses(settings: CubeSettings) -> Counter[str]:
    engine = make_engine(settings.resolved_database_url())
    try:
        async with make_sessionmaker(engine)() as s:
            rows = await s.exec(select(PluginInstance.status))
            return Counter(rows.all())
    finally:
        await engine.dispose()


async def _wait_all_done(settings: CubeSettings, total: int, timeout: float) -> None:
    async def done() -> None:
        while (await _statuses(settings))["finishedSuccessfully"] < total:
            await asyncio.sleep(0.2)

    try:
        await asyncio.wait_for(done(), timeout)
    except TimeoutError:
        raise AssertionError(f"not all done: {await _statuses(settings)}") from None


async def test_two_workers_on_postgres_never_dispatch_twice(
    aiohttp_client: Callable[..., Any], tmp_path: Path, postgres_url: str
) -> None:
    base = CubeSettings(
        home=tmp_path / "cube",
        database_url=postgres_url,
        run_scheduler=False,
        sweep_seconds=0.2,  # workers see each other's work only by sweeping
        lease_seconds=5,
        worker_max_instances=8,  # neither can take everything: they share
    )
    api = await _api(aiohttp_client, base)
    admin = await token_for(api, *ADMIN)
    assert (await add_resource(api, admin, "site")).status == 201
    fs = await register(api, admin, FS_DESCRIPTOR, "site")
    ds = await register(api, admin, DS_DESCRIPTOR, "site")
    assert (await upload(api, admin, "home/chris/uploads/in/a.txt", b"a")).status == 201
    roots = 30
    for _ in range(roots):
        resp = await api.post(
            f"/api/v1/plugins/{fs}/instances/", json={"dir": "home/chris/uploads/in"}, headers=admin
        )
        root = await resp.json()
        # a child each: scheduled by whichever worker ends its parent
        resp = await api.post(
            f"/api/v1/plugins/{ds}/instances/", json={"previous_id": root["id"]}, headers=admin
        )
        assert resp.status == 201, await resp.text()

    site = CountingSite("site")
    async with (
        running_worker(worker_settings(base, "w1"), lambda r: WorkerView(site, "w1")),
        running_worker(worker_settings(base, "w2"), lambda r: WorkerView(site, "w2")),
    ):
        await _wait_all_done(base, 2 * roots, timeout=90)

    assert len(site.submitted) == 2 * roots
    twice = {jid: who for jid, who in site.submitted.items() if len(who) != 1}
    assert twice == {}, f"submitted more than once: {twice}"
    by_worker = Counter(who[0] for who in site.submitted.values())
    assert set(by_worker) == {"w1", "w2"}, by_worker

    engine = make_engine(postgres_url)
    try:
        async with make_sessionmaker(engine)() as s:
            counts = (
                await s.exec(
                    select(StatusChange.plugin_inst_id, StatusChange.status, func.count())
                    .group_by(col(StatusChange.plugin_inst_id), col(StatusChange.status))
                    .having(func.count() > 1)
                )
            ).all()
            assert counts == [], f"a status entered twice: {counts}"
            leased = (
                await s.exec(
                    select(PluginInstance.id).where(col(PluginInstance.lease_owner).is_not(None))
                )
            ).all()
            assert leased == []  # every ended instance was let go
            dates = (await s.exec(select(PluginInstance.start_date, PluginInstance.end_date))).all()
            assert all(a is not None and b is not None and a <= b for a, b in dates)
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> CubeSettings:
    url = "" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    return CubeSettings(
        home=tmp_path / "cube",
        database_url=url,
        run_scheduler=False,
        sweep_seconds=0.2,
        lease_seconds=3,
        retry_min_seconds=0.2,
        retry_max_seconds=1,
    )


async def test_a_lost_lease_stops_the_task_without_touching_the_site(
    aiohttp_client: Callable[..., Any], db_settings: CubeSettings
) -> None:
    """Another worker took the instance over (this one stalled past its
    lease): this worker stops driving it and neither cancels nor deletes the job."""
    api = await _api(aiohttp_client, db_settings)
    admin = await token_for(api, *ADMIN)
    assert (await add_resource(api, admin, "site")).status == 201
    fs = await register(api, admin, FS_DESCRIPTOR, "site")
    assert (await upload(api, admin, "home/chris/uploads/in/a.txt", b"a")).status == 201
    resp = await api.post(
        f"/api/v1/plugins/{fs}/instances/", json={"dir": "home/chris/uploads/in"}, headers=admin
    )
    inst_id = (await resp.json())["id"]
    site = CountingSite("site", run_seconds=3600)  # runs until the test ends
    settings = worker_settings(db_settings, "w1")
    async with running_worker(settings, lambda r: WorkerView(site, "w1")) as w1:

        async def started() -> None:
            while (await _statuses(settings))["started"] != 1:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(started(), 20)
        engine = make_engine(settings.resolved_database_url())
        try:
            async with make_sessionmaker(engine)() as s:
                await s.exec(
                    update(PluginInstance)  # type: ignore[call-overload]
                    .where(col(PluginInstance.id) == inst_id)
                    .values(lease_owner="w2")
                )
                await s.commit()
        finally:
            await engine.dispose()
        await w1.renew()
        for _ in range(50):
            if inst_id not in w1._tasks:
                break
            await asyncio.sleep(0.02)
        assert inst_id not in w1._tasks
        assert site.running() == [f"chris-jid-{inst_id}"]  # the job was not stopped
    assert (await _statuses(settings))["started"] == 1


async def test_a_stopping_worker_lets_go_of_its_leases(
    aiohttp_client: Callable[..., Any], db_settings: CubeSettings
) -> None:
    """A worker shut down while it drives an instance releases the lease at
    once, so another worker takes the instance over without waiting for the
    lease to lapse; the job keeps running at its site."""
    api = await _api(aiohttp_client, db_settings)
    admin = await token_for(api, *ADMIN)
    assert (await add_resource(api, admin, "site")).status == 201
    fs = await register(api, admin, FS_DESCRIPTOR, "site")
    assert (await upload(api, admin, "home/chris/uploads/in/a.txt", b"a")).status == 201
    resp = await api.post(
        f"/api/v1/plugins/{fs}/instances/", json={"dir": "home/chris/uploads/in"}, headers=admin
    )
    inst_id = (await resp.json())["id"]
    site = CountingSite("site", run_seconds=3600)
    settings = worker_settings(db_settings, "w1", lease_seconds=3600)
    async with running_worker(settings, lambda r: WorkerView(site, "w1")):

        async def started() -> None:
            while (await _statuses(settings))["started"] != 1:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(started(), 20)
    engine = make_engine(settings.resolved_database_url())
    try:
        async with make_sessionmaker(engine)() as s:
            row = await s.get(PluginInstance, inst_id)
            assert row is not None
            assert (row.status, row.lease_owner, row.lease_expires) == ("started", None, None)
    finally:
        await engine.dispose()
    assert site.running() == [f"chris-jid-{inst_id}"]  # shutting down stops no job
    # another worker picks it up at once (the old lease had an hour to run)
    site.run_seconds = 0.02
    async with running_worker(worker_settings(db_settings, "w2"), lambda r: WorkerView(site, "w2")):
        await site.finish(f"chris-jid-{inst_id}")
        await _wait_all_done(settings, 1, timeout=20)


class UnreachableSite(FakeSite):
    """Refuses every call, as a site whose pfcon is down."""

    async def status(self, jid: str, *, wait: float | None = None, known: Any = None) -> JobInfo:
        raise PfconUnavailable(f"{self.name}: connection refused")

    async def server_info(self) -> Any:
        raise PfconUnavailable(f"{self.name}: connection refused")

    async def submit_as(
        self, worker: str, job: JobDescriptor, data: AsyncIterable[bytes]
    ) -> JobSubmitted:
        raise PfconUnavailable(f"{self.name}: connection refused")


class HangingSite(FakeSite):
    """Accepts connections and never answers (a blackholed site)."""

    async def status(self, jid: str, *, wait: float | None = None, known: Any = None) -> JobInfo:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def submit_as(
        self, worker: str, job: JobDescriptor, data: AsyncIterable[bytes]
    ) -> JobSubmitted:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_an_unreachable_site_does_not_hold_up_other_sites(
    aiohttp_client: Callable[..., Any], db_settings: CubeSettings
) -> None:
    api = await _api(aiohttp_client, db_settings)
    admin = await token_for(api, *ADMIN)
    for name in ("good", "down", "hung"):
        assert (await add_resource(api, admin, name)).status == 201
    fs = await register(api, admin, FS_DESCRIPTOR, "good,down,hung")
    assert (await upload(api, admin, "home/chris/uploads/in/a.txt", b"a")).status == 201
    ids: dict[str, list[int]] = defaultdict(list)
    # the stuck ones first: FIFO would put every good instance behind them
    for name in ("down", "hung", "down", "hung", "good", "good", "good", "good"):
        resp = await api.post(
            f"/api/v1/plugins/{fs}/instances/",
            json={"dir": "home/chris/uploads/in", "compute_resource_name": name},
            headers=admin,
        )
        assert resp.status == 201, await resp.text()
        ids[name].append((await resp.json())["id"])
    sites = {
        "good": CountingSite("good"),
        "down": UnreachableSite("down"),
        "hung": HangingSite("hung"),
    }
    settings = worker_settings(db_settings, "w1")
    async with running_worker(settings, lambda r: WorkerView(sites[r.name], "w1")):  # type: ignore[arg-type]
        await _wait_all_done(settings, len(ids["good"]), timeout=20)
        await asyncio.sleep(0.5)  # a few retries of the refused site (backoff 0.2 s doubling)
        async with api.app[SESSIONS]() as s:
            rows = {
                i.id: i
                for i in (await s.exec(select(PluginInstance))).all()
                if i.id in ids["down"] + ids["hung"]
            }
    for inst_id in ids["down"]:
        assert rows[inst_id].status == "scheduled"
        assert "unreachable" in rows[inst_id].error_message
    for inst_id in ids["hung"]:
        assert rows[inst_id].status == "scheduled"
    assert sorted(site_jid.split("-")[-1] for site_jid in sites["good"].submitted) == sorted(
        str(i) for i in ids["good"]
    )


async def test_a_freed_slot_wakes_one_waiter_of_its_resource_else_a_movable_one(
    tmp_path: Path,
) -> None:
    """Not every waiter (each would ask the database again): one per freed slot."""
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    scheduler = Scheduler(
        CubeSettings(home=tmp_path),
        make_sessionmaker(engine),
        FilesystemStorage(tmp_path / "storage"),
        StatusHub(),
    )

    def resource(rid: int) -> ComputeResource:
        return ComputeResource(
            id=rid,
            name=f"r{rid}",
            compute_url="",
            compute_auth_url="",
            compute_user="",
            compute_password="",
        )

    a_pinned = scheduler._queue_for_slot(resource(1), pinned=True)
    a_movable = scheduler._queue_for_slot(resource(1), pinned=False)
    b_pinned = scheduler._queue_for_slot(resource(2), pinned=True)
    b_movable = scheduler._queue_for_slot(resource(2), pinned=False)

    def woken() -> list[bool]:
        return [w.woken.is_set() for w in (a_pinned, a_movable, b_pinned, b_movable)]

    scheduler._room_freed(1)
    assert woken() == [True, False, False, False]  # first come, first served
    scheduler._room_freed(1)
    assert woken() == [True, True, False, False]
    scheduler._room_freed(1)  # none left for r1: one that may move there
    assert woken() == [True, True, False, True]
    scheduler._room_freed(3)  # only a pinned one is left, for r2
    assert woken() == [True, True, False, True]
    scheduler._leave_slot_queue(a_pinned)
    assert scheduler._slot_queues[1] == [a_movable]
    await engine.dispose()
