"""Alembic environment: runs on the connection CUBE hands over.

CUBE never lets Alembic open its own connection: :mod:`cube.db.migrate`
runs migrations inside ``AsyncConnection.run_sync`` and passes the sync
connection in ``config.attributes["connection"]``. SQLite alters tables in
batch mode (copy and rename), since it lacks most ``ALTER TABLE`` forms.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from cube.db import models  # noqa: F401  (registers the tables)

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through cube.db.migrate, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
