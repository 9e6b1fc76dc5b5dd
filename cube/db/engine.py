"""Database engine and sessions (SQLAlchemy asyncio through sqlmodel).

SQLite (aiosqlite) is the embedded default: WAL journal and a busy timeout so
the API and the scheduler can write concurrently; statements run on
aiosqlite's thread, their rows are fetched on the event loop's
(:class:`_SqliteCursor`). PostgreSQL, the production database, goes through
asyncpg (``postgresql+asyncpg://``) with the same code: a native asyncio
driver (no thread hop per query, unlike aiosqlite) and the fastest bulk
inserts of the async PostgreSQL drivers SQLAlchemy supports.
The schema is Alembic's (:mod:`cube.db.migrate`), never ``create_all``.
"""

from __future__ import annotations

import sqlite3
from typing import Any, TypeVar, cast

import aiosqlite
from aiosqlite.context import contextmanager
from sqlalchemy import event, inspect
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm.util import identity_key
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db import models  # noqa: F401  (registers the tables)

SessionMaker = async_sessionmaker[AsyncSession]
T = TypeVar("T")


class _SqliteCursor(aiosqlite.Cursor):
    """An aiosqlite cursor that fetches and closes on the calling thread.

    aiosqlite sends every call to its connection's thread and waits for the
    answer: four round trips per statement as SQLAlchemy drives it (make a
    cursor, execute, fetch, close), each a queue hand-off, a thread wake-up
    and an event-loop wake-up, which cost CUBE more CPU than the statements
    themselves. Only ``execute`` (and commit, rollback) can wait for another
    writer's lock or for the disk, so only they keep the thread. Fetching the
    rows of a statement already stepped and closing a cursor never wait for
    a lock. SQLAlchemy never uses one connection from two places at once
    (each call is awaited before the next), so the calling thread and the
    connection's thread never touch it together; ``check_same_thread=False``
    lets them take turns.
    """

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class _SqliteConnection(aiosqlite.Connection):
    """An aiosqlite connection whose cursors are :class:`_SqliteCursor` s,
    made on the calling thread (making a cursor touches no file), and which
    rolls back there too: the pool rolls back every connection handed back,
    mostly with nothing to undo, and undoing never waits for a lock (a WAL
    database drops the uncommitted pages)."""

    @contextmanager
    async def cursor(self) -> aiosqlite.Cursor:
        return _SqliteCursor(self, self._conn.cursor())

    async def rollback(self) -> None:
        self._conn.rollback()


def _connect_sqlite(database: str, **kwargs: Any) -> aiosqlite.Connection:
    """What SQLAlchemy's aiosqlite dialect calls to connect (``async_creator_fn``)."""
    kwargs["check_same_thread"] = False

    def connector() -> sqlite3.Connection:
        return sqlite3.connect(database, **kwargs)

    conn = _SqliteConnection(connector, iter_chunk_size=64)
    conn._thread.daemon = True  # as the dialect does: an unclosed connection never blocks exit
    return conn


def make_engine(url: str) -> AsyncEngine:
    """Create the engine for ``url``, tuned for SQLite when it is SQLite."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30, "async_creator_fn": _connect_sqlite}
    elif url.startswith("postgresql"):
        # a server restart or failover must not leave dead pooled connections
        kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def make_sessionmaker(engine: AsyncEngine) -> SessionMaker:
    """Sessions that keep loaded attributes after commit."""
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


async def create_schema(engine: AsyncEngine) -> None:
    """Bring the database to the newest schema (Alembic migrations to head).

    An empty database is created from scratch; one made by an older CUBE is
    upgraded (see :func:`cube.db.migrate.upgrade`, which raises
    :class:`cube.db.migrate.MigrationError`).
    """
    from cube.db.migrate import upgrade  # migrate imports this module's models

    await upgrade(engine)


def loaded_row(session: AsyncSession, model: type[T], key: Any) -> T | None:
    """The row of ``model`` with primary key ``key`` if ``session`` holds it
    fully loaded already, else None (no query).

    A row with an expired attribute does not count: reading it would be a
    lazy load, which an async session cannot do.
    """
    row = session.identity_map.get(identity_key(model, key))
    if row is None or inspect(row).expired_attributes:
        return None
    return cast(T, row)
