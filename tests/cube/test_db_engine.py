"""The SQLite engine: rows fetched on the event loop, lock waits kept off it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from cube.db import engine as db_engine
from cube.db.engine import create_schema, make_engine, make_sessionmaker
from cube.db.models import User


async def _engine(tmp_path: Path) -> Any:
    eng = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'cube.db'}")
    await create_schema(eng)
    return eng


async def test_a_query_goes_to_the_driver_thread_once_not_for_every_cursor_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session reading rows and committing hands the driver's thread two
    calls (execute, commit): making the cursor, fetching, closing it and the
    pool's rollback run on the caller's thread. aiosqlite alone sends each
    of them over (six for this session)."""
    eng = await _engine(tmp_path)
    sessions = make_sessionmaker(eng)
    async with sessions() as s:
        s.add(User(username="ada", email="ada@example.org", password_hash="x"))
        await s.commit()
    hops: list[str] = []
    original = db_engine._SqliteConnection._execute

    async def counting(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(db_engine._SqliteConnection, "_execute", counting)
    async with sessions() as s:
        found = (await s.exec(select(User).where(User.username == "ada"))).all()
        await s.commit()
    assert [u.email for u in found] == ["ada@example.org"]
    assert hops == ["execute", "commit"], hops
    await eng.dispose()


async def test_waiting_for_another_writer_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """A write that waits for another process's lock waits on the driver's
    thread: the loop keeps serving meanwhile, and the write goes through once
    the lock is released."""
    eng = await _engine(tmp_path)
    sessions = make_sessionmaker(eng)
    other = sqlite3.connect(tmp_path / "cube.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock, as another worker would
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def write() -> None:
        async with sessions() as s:
            s.add(User(username="bob", email="bob@example.org", password_hash="x"))
            await s.commit()

    tick = asyncio.create_task(ticker())
    writing = asyncio.create_task(write())
    await asyncio.sleep(0.5)
    assert not writing.done()  # still waiting for the lock
    assert ticks >= 20, ticks  # the loop ran all along (50 ticks if idle)
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(writing, 10)
    tick.cancel()
    async with sessions() as s:
        assert (await s.exec(select(User.email).where(User.username == "bob"))).one()
    await eng.dispose()
