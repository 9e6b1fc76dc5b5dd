"""Output registration in bulk (ChRIS #521), on SQLite and PostgreSQL.

10,000 files of one instance are registered in a few statements, with
their sizes, and registering again replaces them (a registration redone
after a crash). The time bound here is loose, a guard against a return to
per-file ORM objects; ``bench/cube.py`` measures it (target ≤ 2 s).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from chris_sdk.descriptor import PluginType
from sqlmodel import col, func, select

from cube.db.engine import SessionMaker, create_schema, make_engine, make_sessionmaker
from cube.db.models import (
    ComputeResource,
    Feed,
    Plugin,
    PluginInstance,
    PluginMeta,
    StoredFile,
    User,
)
from cube.scheduler import Scheduler, StatusHub, register_files
from cube.schema import InstanceStatus
from cube.services.instances import transition
from cube.settings import CubeSettings
from cube.storage import FilesystemStorage


@pytest.fixture(params=["sqlite", "postgresql"])
async def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionMaker]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'cube.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    engine = make_engine(url)
    await create_schema(engine)
    yield make_sessionmaker(engine)
    await engine.dispose()


def registering_instance(
    plugin_id: int, feed_id: int, owner_id: int, resource_id: int, **fields: Any
) -> PluginInstance:
    """An instance whose output is being registered."""
    return PluginInstance(
        plugin_id=plugin_id,
        feed_id=feed_id,
        owner_id=owner_id,
        compute_resource_id=resource_id,
        cpu_limit=1000,
        memory_limit=200,
        number_of_workers=1,
        gpu_limit=0,
        status="registeringFiles",
        **fields,
    )


async def seed_instance(sessions: SessionMaker) -> tuple[int, int]:
    """One user, feed and instance; returns (instance id, owner id)."""
    async with sessions() as s:
        user = User(username="chris", password_hash="x")
        meta = PluginMeta(name="pl-a", type="fs")
        resource = ComputeResource(
            name="host",
            compute_url="u",
            compute_auth_url="u",
            compute_user="u",
            compute_password="p",
        )
        s.add_all([user, meta, resource])
        await s.flush()
        assert user.id and meta.id and resource.id
        plugin = Plugin(meta_id=meta.id, version="1", dock_image="i", selfexec="a")
        feed = Feed(owner_id=user.id)
        s.add_all([plugin, feed])
        await s.flush()
        assert plugin.id and feed.id
        inst = registering_instance(plugin.id, feed.id, user.id, resource.id)
        s.add(inst)
        await s.commit()
        assert inst.id
        return inst.id, user.id


async def test_ten_thousand_files_register_in_bulk(sessions: SessionMaker) -> None:
    inst_id, owner_id = await seed_instance(sessions)
    base = "home/chris/feeds/feed_1/pl-a_1/data"
    files = [(f"{base}/d{i % 100}/f{i}.dcm", i) for i in range(10_000)]
    started = time.perf_counter()
    async with sessions() as s:
        await register_files(s, inst_id, owner_id, files)
        await s.commit()
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"{elapsed:.2f}s for 10,000 files: per-file inserts again?"

    async with sessions() as s:
        count, total = (
            await s.exec(
                select(func.count(), func.sum(StoredFile.fsize)).where(
                    StoredFile.plugin_inst_id == inst_id
                )
            )
        ).one()
        assert (count, total) == (10_000, sum(range(10_000)))
        row = (
            await s.exec(select(StoredFile).where(col(StoredFile.fname) == f"{base}/d7/f107.dcm"))
        ).one()
        assert (row.fsize, row.owner_id, row.public) == (107, owner_id, False)
        assert row.creation_date is not None

    # redone after a crash: the same instance's files are replaced, not doubled
    async with sessions() as s:
        await register_files(s, inst_id, owner_id, files[:10])
        await s.commit()
    async with sessions() as s:
        count = (
            await s.exec(select(func.count()).where(StoredFile.plugin_inst_id == inst_id))
        ).one()
        assert count == 10


async def test_only_the_worker_that_ends_an_instance_registers_its_files(
    sessions: SessionMaker, tmp_path: Path
) -> None:
    """Two workers registering the same output (a lease taken over) leave one
    set of files; an instance cancelled meanwhile gets none."""
    scheduler = Scheduler(
        CubeSettings(home=tmp_path), sessions, FilesystemStorage(tmp_path / "s"), StatusHub()
    )
    files = [(f"home/chris/feeds/feed_1/pl-a_1/data/f{i}", i) for i in range(5)]

    inst_id, _ = await seed_instance(sessions)
    async with sessions() as s:
        inst = await s.get(PluginInstance, inst_id)
        assert inst is not None
        inst.job_status = "finishedSuccessfully"
        await s.commit()
    for _worker in range(2):
        await scheduler._record_files(inst, PluginType.FS, files)
    async with sessions() as s:
        ended = await s.get(PluginInstance, inst_id)
        assert ended is not None and ended.status == "finishedSuccessfully"
        assert ended.size == sum(range(5))
        count = (
            await s.exec(select(func.count()).where(StoredFile.plugin_inst_id == inst_id))
        ).one()
        assert count == 5

    async with sessions() as s:
        cancelled = registering_instance(
            inst.plugin_id,
            inst.feed_id,
            inst.owner_id,
            inst.compute_resource_id,
            job_status="finishedSuccessfully",
        )
        s.add(cancelled)
        await s.commit()
        assert cancelled.id is not None
        cancelled_id = cancelled.id
        await transition(
            s, cancelled_id, [InstanceStatus.REGISTERING_FILES], InstanceStatus.CANCELLED
        )
        await s.commit()
    await scheduler._record_files(cancelled, PluginType.FS, files)
    async with sessions() as s:
        row = await s.get(PluginInstance, cancelled_id)
        assert row is not None and row.status == "cancelled"
        count = (
            await s.exec(select(func.count()).where(StoredFile.plugin_inst_id == cancelled_id))
        ).one()
        assert count == 0
