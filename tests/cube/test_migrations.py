"""Alembic migrations on SQLite and on a real PostgreSQL server.

An empty database upgrades to head; a database populated at 0001 (the
schema CUBE made with ``create_all`` before migrations, with or without an
``alembic_version`` table) or at 0002 upgrades with its data intact, and the
tables added since hold rows that reference the old ones (and go when their
feed is deleted); and the models agree with the migration head, so a model
change without its migration fails here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select

from cube.db.engine import create_schema, make_engine, make_sessionmaker
from cube.db.migrate import BASELINE, MigrationError, current_revision, head, schema_diff, upgrade
from cube.db.models import (
    Comment,
    Feed,
    FeedUserPermission,
    FileGroupPermission,
    FileUserPermission,
    Folder,
    FolderGroupPermission,
    FolderUserPermission,
    Note,
    Pipeline,
    PluginInstance,
    PluginInstanceParent,
    PluginPiping,
    StatusChange,
    StoredFile,
    Tag,
    Tagging,
    Workflow,
    WorkflowInstance,
)
from cube.services import lifecycle


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cube.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(db_url)
    yield eng
    await eng.dispose()


async def _revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(current_revision)


async def _diff(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return await conn.run_sync(schema_diff)


async def test_empty_database_upgrades_to_head_and_matches_the_models(engine: AsyncEngine) -> None:
    await create_schema(engine)
    assert await _revision(engine) == head()
    # a model changed without a migration shows here: run `make migration MSG=...`
    assert await _diff(engine) == []
    await create_schema(engine)  # a second start is a no-op
    assert await _revision(engine) == head()


# Rows as CUBE at 0001 wrote them: plain SQL, independent of today's models.
SEED_0001 = [
    """INSERT INTO "user" (id, username, email, password_hash, is_staff, creation_date)
       VALUES (1, 'chris', 'c@x', 'h', true, '2026-01-01 00:00:00')""",
    """INSERT INTO compute_resource (id, name, compute_url, compute_auth_url, compute_user,
       compute_password, compute_innetwork, description, max_job_exec_seconds, gpus,
       max_concurrent_jobs, creation_date, modification_date)
       VALUES (1, 'host', 'http://p/', 'http://p/auth-token/', 'u', 'p', false, '', -1, 0, 0,
       '2026-01-01 00:00:00', '2026-01-01 00:00:00')""",
    """INSERT INTO plugin_meta (id, name, title, type, public_repo, license, icon, category,
       authors, documentation, stars, creation_date)
       VALUES (1, 'pl-a', '', 'fs', '', '', '', '', '', '', 0, '2026-01-01 00:00:00')""",
    """INSERT INTO plugin (id, meta_id, version, dock_image, execshell, selfpath, selfexec,
       description, min_number_of_workers, max_number_of_workers, min_cpu_limit,
       max_cpu_limit, min_memory_limit, max_memory_limit, min_gpu_limit, max_gpu_limit,
       creation_date)
       VALUES (1, 1, '1.0', 'img', '', '', 'a', '', 1, 1, 1000, 2000, 200, 400, 0, 0,
       '2026-01-01 00:00:00')""",
    """INSERT INTO feed (id, name, owner_id, public, creation_date, modification_date)
       VALUES (1, 'f', 1, false, '2026-01-01 00:00:00', '2026-01-01 00:00:00')""",
    """INSERT INTO plugin_instance (id, title, status, previous_id, plugin_id, feed_id, owner_id,
       compute_resource_id, compute_resource_pinned, output_path, cpu_limit, memory_limit,
       number_of_workers, gpu_limit, summary, raw, error_code, error_message, size,
       start_date, end_date, creation_date, lease_owner, lease_expires, job_status,
       slot_reserved_at)
       VALUES (1, 'kept', 'finishedSuccessfully', NULL, 1, 1, 1, 1, false,
       'home/chris/feeds/feed_1/pl-a_1/data', 1000, 200, 1, 0, '{"k": [1, 2]}', '', '', '',
       3, '2026-01-01 00:00:01', '2026-01-01 00:00:02', '2026-01-01 00:00:00', NULL, NULL,
       'finishedSuccessfully', NULL)""",
    """INSERT INTO status_change (id, plugin_inst_id, status, timestamp, note)
       VALUES (1, 1, 'created', '2026-01-01 00:00:00', 'n')""",
    """INSERT INTO stored_file (id, fname, fsize, owner_id, plugin_inst_id, public, creation_date)
       VALUES (1, 'home/chris/feeds/feed_1/pl-a_1/data/x.txt', 3, 1, 1, false,
       '2026-01-01 00:00:00')""",
]


@pytest.mark.parametrize("stamped", [True, False], ids=["alembic-0001", "create_all-era"])
async def test_populated_database_at_0001_upgrades_with_data_intact(
    engine: AsyncEngine, stamped: bool
) -> None:
    await upgrade(engine, BASELINE)
    async with engine.begin() as conn:
        for sql in SEED_0001:
            await conn.execute(text(sql))
        if not stamped:
            # as a CUBE from before migrations left it: the tables, no alembic_version
            await conn.execute(text("DROP TABLE alembic_version"))
    assert await _revision(engine) == (BASELINE if stamped else None)

    await create_schema(engine)  # what every CUBE start does

    assert await _revision(engine) == head()
    assert await _diff(engine) == []
    sessions = make_sessionmaker(engine)
    async with sessions() as s:
        inst = (await s.exec(select(PluginInstance))).one()
        assert (inst.id, inst.title, inst.status, inst.summary, inst.size) == (
            1,
            "kept",
            "finishedSuccessfully",
            {"k": [1, 2]},
            3,
        )
        assert inst.start_date is not None and inst.start_date.second == 1
        files = (await s.exec(select(StoredFile))).all()
        assert [(f.fname, f.fsize) for f in files] == [
            ("home/chris/feeds/feed_1/pl-a_1/data/x.txt", 3)
        ]
        changes = (await s.exec(select(StatusChange))).all()
        assert [(c.status, c.note) for c in changes] == [("created", "n")]


# Rows as CUBE at 0002 wrote them: a second user and a child instance of
# feed 1 whose job is still to delete at its site (0002's column).
SEED_0002 = [
    """INSERT INTO "user" (id, username, email, password_hash, is_staff, creation_date)
       VALUES (2, 'bob', 'b@x', 'h', false, '2026-01-01 00:00:00')""",
    """INSERT INTO plugin_instance (id, title, status, previous_id, plugin_id, feed_id, owner_id,
       compute_resource_id, compute_resource_pinned, output_path, cpu_limit, memory_limit,
       number_of_workers, gpu_limit, summary, raw, error_code, error_message, size,
       start_date, end_date, creation_date, lease_owner, lease_expires, job_status,
       slot_reserved_at, remote_cleanup_pending)
       VALUES (2, 'child', 'cancelled', 1, 1, 1, 1, 1, false,
       'home/chris/feeds/feed_1/pl-a_2/data', 1000, 200, 1, 0, '{}', '', '', 'stopped',
       0, NULL, '2026-01-01 00:00:05', '2026-01-01 00:00:03', NULL, NULL,
       'started', '2026-01-01 00:00:04', true)""",
]


async def test_populated_database_at_0002_upgrades_with_data_intact(engine: AsyncEngine) -> None:
    await upgrade(engine, "0002")
    async with engine.begin() as conn:
        for sql in SEED_0001 + SEED_0002:
            await conn.execute(text(sql))
    assert await _revision(engine) == "0002"

    await create_schema(engine)

    assert await _revision(engine) == head()
    assert await _diff(engine) == []
    sessions = make_sessionmaker(engine)
    async with sessions() as s:
        rows = (await s.exec(select(PluginInstance).order_by(PluginInstance.id))).all()  # type: ignore[arg-type]
        assert [(i.id, i.status, i.previous_id, i.remote_cleanup_pending) for i in rows] == [
            (1, "finishedSuccessfully", None, False),
            (2, "cancelled", 1, True),
        ]
        assert rows[1].error_message == "stopped" and rows[1].slot_reserved_at is not None
        # the new tables take rows that reference the old ones (foreign keys on)
        pipeline = Pipeline(name="p", owner_id=1)
        tag = Tag(name="t", color="red", owner_id=2)
        s.add_all([pipeline, tag])
        await s.flush()
        assert pipeline.id is not None and tag.id is not None
        piping = PluginPiping(
            pipeline_id=pipeline.id,
            plugin_id=1,
            title="a",
            cpu_limit=1000,
            memory_limit=200,
            number_of_workers=1,
            gpu_limit=0,
        )
        workflow = Workflow(pipeline_id=pipeline.id, owner_id=1)
        s.add_all([piping, workflow])
        await s.flush()
        assert piping.id is not None and workflow.id is not None
        workflow_id = workflow.id
        s.add_all(
            [
                PluginInstanceParent(plugin_inst_id=2, parent_id=1, position=0),
                WorkflowInstance(
                    plugin_inst_id=2, workflow_id=workflow.id, plugin_piping_id=piping.id
                ),
                Note(feed_id=1, content="n"),
                Comment(feed_id=1, owner_id=2, content="c"),
                Tagging(tag_id=tag.id, feed_id=1),
                FeedUserPermission(feed_id=1, user_id=2),
            ]
        )
        await s.commit()

    # deleting the feed deletes the old tables' rows and the new ones that reference them
    deletion = lifecycle.FeedDeletion(feed_id=1, folder="", cancelled=[], jobs=[])
    async with sessions() as s:
        await lifecycle.finish_feed_deletion(s, deletion)
        await s.commit()
    async with sessions() as s:
        for model in (
            Feed,
            PluginInstance,
            StoredFile,
            StatusChange,
            PluginInstanceParent,
            WorkflowInstance,
            Note,
            Comment,
            Tagging,
            FeedUserPermission,
        ):
            assert (await s.exec(select(model))).all() == [], model
        # what is not the feed's stays
        assert [t.name for t in (await s.exec(select(Tag))).all()] == ["t"]
        assert [w.id for w in (await s.exec(select(Workflow))).all()] == [workflow_id]


# Rows as CUBE at 0004 wrote them: a file browser folder id for feed 1's
# instance folder, and a group.
SEED_0004 = [
    """INSERT INTO folder (id, path, creation_date)
       VALUES (7, 'home/chris/feeds/feed_1/pl-a_1/data', '2026-01-01 00:00:00')""",
    """INSERT INTO user_group (id, name) VALUES (3, 'lab')""",
]


async def test_populated_database_at_0004_takes_file_browser_grants(engine: AsyncEngine) -> None:
    await upgrade(engine, "0004")
    async with engine.begin() as conn:
        for sql in SEED_0001 + SEED_0002 + SEED_0004:
            await conn.execute(text(sql))

    await create_schema(engine)

    assert await _revision(engine) == head()
    assert await _diff(engine) == []
    sessions = make_sessionmaker(engine)
    async with sessions() as s:
        assert (await s.get(Folder, 7)) is not None
        s.add_all(
            [
                FolderUserPermission(folder_id=7, user_id=2),
                FolderGroupPermission(folder_id=7, group_id=3, permission="w"),
                FileUserPermission(file_id=1, user_id=2),
                FileGroupPermission(file_id=1, group_id=3),
            ]
        )
        await s.commit()
    # the grants go with their folder and file when the feed is deleted
    deletion = lifecycle.FeedDeletion(
        feed_id=1, folder="home/chris/feeds/feed_1", cancelled=[], jobs=[]
    )
    async with sessions() as s:
        await lifecycle.finish_feed_deletion(s, deletion)
        await s.commit()
    async with sessions() as s:
        for model in (
            Folder,
            StoredFile,
            FolderUserPermission,
            FolderGroupPermission,
            FileUserPermission,
            FileGroupPermission,
        ):
            assert (await s.exec(select(model))).all() == [], model


async def test_a_database_from_a_newer_cube_is_refused(engine: AsyncEngine) -> None:
    await create_schema(engine)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(MigrationError, match="9999"):
        await create_schema(engine)


async def test_workers_starting_together_migrate_once(postgres_url: str) -> None:
    """Several CUBE processes starting at once on one PostgreSQL database: the
    advisory lock makes them upgrade one after the other, and all succeed."""
    engines = [make_engine(postgres_url) for _ in range(4)]
    try:
        await asyncio.gather(*(create_schema(e) for e in engines))
        assert await _revision(engines[0]) == head()
    finally:
        for e in engines:
            await e.dispose()
