"""Schema migrations (Alembic): upgrade at startup, autogenerate the next revision.

The revisions live in :mod:`cube.db.migrations` (shipped inside the
package) in one linear chain ``0001`` → ``0002`` → …; ``0001`` is the schema
CUBE created with ``create_all`` before migrations existed, so a database
made by that CUBE (its tables, no ``alembic_version``) is stamped ``0001``
and upgraded from there.

Command line (``python -m cube.db.migrate``, or ``make migration MSG=...``)::

    revision -m "add notes"   autogenerate the next revision from the models
    upgrade [--url URL]       upgrade a database to head (default: CUBE's)
    check [--url URL]         exit 1 if the models and the database differ
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path
from typing import Any

import typer
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

from cube.db import models  # noqa: F401  (registers the tables)
from cube.errors import CubeError

MIGRATIONS = Path(__file__).with_name("migrations")
#: The revision matching the schema of ``create_all`` before migrations existed.
BASELINE = "0001"
#: Any session of any CUBE process takes this PostgreSQL advisory lock while
#: migrating, so workers starting together upgrade one after the other.
_LOCK_KEY = 0x43554245  # "CUBE"


class MigrationError(CubeError):
    """The database cannot be brought to the schema this CUBE expects."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config on the packaged revisions (optionally bound to ``connection``)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision shipped with this CUBE."""
    script = ScriptDirectory.from_config(alembic_config())
    rev = script.get_current_head()
    assert rev is not None
    return rev


def _upgrade_sync(connection: Connection, revision: str = "head") -> None:
    if connection.dialect.name == "postgresql":
        # released when the transaction ends (commit or rollback)
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    cfg = alembic_config(connection)
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables and "plugin_instance" in tables:
        command.stamp(cfg, BASELINE)  # made by create_all before migrations existed
    command.upgrade(cfg, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (head) in one transaction, creating
    it when empty.

    Raises:
        MigrationError: the database is at a revision this CUBE does not know
            (made by a newer CUBE), or a migration failed.
    """
    sqlite = engine.dialect.name == "sqlite"
    try:
        async with engine.connect() as conn:
            if sqlite:
                # SQLite alters a table by copying it and dropping the old one,
                # which foreign keys would refuse; the pragma only takes effect
                # outside a transaction, and is checked and restored after.
                await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                await conn.commit()
            try:
                await conn.run_sync(_upgrade_sync, revision)
                if sqlite:
                    broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).all()
                    if broken:
                        raise MigrationError(f"foreign keys broken by the migration: {broken[:5]}")
                await conn.commit()
            finally:
                if sqlite:
                    await conn.rollback()
                    await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                    await conn.commit()
    except MigrationError:
        raise
    except Exception as exc:
        raise MigrationError(f"database migration failed: {exc}") from exc


def schema_diff(connection: Connection) -> list[Any]:
    """What differs between the models and the database (empty when in step)."""
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, SQLModel.metadata))


def current_revision(connection: Connection) -> str | None:
    """The revision a database is at (None: not under migrations)."""
    return MigrationContext.configure(connection).get_current_revision()


def _next_id() -> str:
    script = ScriptDirectory.from_config(alembic_config())
    numbers = [int(r.revision) for r in script.walk_revisions() if r.revision.isdigit()]
    return f"{max(numbers, default=0) + 1:04d}"


def new_revision(message: str) -> Path:
    """Autogenerate the next revision from the models; returns its file.

    A scratch SQLite database is upgraded to head and compared with the
    models, so no database server is needed.

    Raises:
        MigrationError: the models already match head (nothing to write).
    """
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/scratch.db")
        try:
            with engine.begin() as conn:
                _upgrade_sync(conn)
                if not schema_diff(conn):
                    raise MigrationError("the models match the newest revision: nothing to add")
                rev_id = _next_id()
                slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40]
                script = command.revision(
                    alembic_config(conn), message=message, autogenerate=True, rev_id=rev_id
                )
        finally:
            engine.dispose()
    assert script is not None and not isinstance(script, list)
    path = Path(script.path)
    # a file name that sorts with its number: 0002_add_notes.py
    target = path.with_name(f"{rev_id}_{slug or 'revision'}.py")
    path.rename(target)
    return target


cli = typer.Typer(help="CUBE's database migrations.", no_args_is_help=True)


@cli.command()
def revision(message: str = typer.Option(..., "-m", "--message", help="What changes.")) -> None:
    """Autogenerate the next revision from the models (review it before committing)."""
    try:
        path = new_revision(message)
    except MigrationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {path}; review it, then run the migration tests")


def _url(url: str | None) -> str:
    from cube.settings import CubeSettings

    return url or CubeSettings().resolved_database_url()


@cli.command("upgrade")
def upgrade_command(url: str | None = typer.Option(None, help="Async SQLAlchemy URL.")) -> None:
    """Upgrade a database to head (CUBE does this itself at startup)."""
    from cube.db.engine import make_engine

    async def _run() -> None:
        engine = make_engine(_url(url))
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(_run())
    typer.echo(f"at {head()}")


@cli.command()
def check(url: str | None = typer.Option(None, help="Async SQLAlchemy URL.")) -> None:
    """Exit 1 when the models and the database differ (a migration is missing)."""
    from cube.db.engine import make_engine

    async def _run() -> list[Any]:
        engine = make_engine(_url(url))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(schema_diff)
        finally:
            await engine.dispose()

    diff = asyncio.run(_run())
    for item in diff:
        typer.echo(item)
    raise typer.Exit(1 if diff else 0)


if __name__ == "__main__":
    cli()
