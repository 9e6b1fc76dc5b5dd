"""Database engine and sessions (SQLAlchemy asyncio through sqlmodel).

SQLite (aiosqlite) is the embedded default: WAL journal and a busy timeout so
the API and the scheduler can write concurrently. PostgreSQL, the production
database, goes through asyncpg (``postgresql+asyncpg://``) with the same code:
a native asyncio driver (no thread hop per query, unlike aiosqlite) and the
fastest bulk inserts of the async PostgreSQL drivers SQLAlchemy supports.
The schema is Alembic's (:mod:`cube.db.migrate`), never ``create_all``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db import models  # noqa: F401  (registers the tables)

SessionMaker = async_sessionmaker[AsyncSession]


def make_engine(url: str) -> AsyncEngine:
    """Create the engine for ``url``, tuned for SQLite when it is SQLite."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
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
