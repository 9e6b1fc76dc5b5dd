"""Indexes for the instance and feed lists (owner or feed, newest first).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:42:24.027001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("feed", schema=None) as batch_op:
        batch_op.create_index("ix_feed_owner_id_id", ["owner_id", "id"], unique=False)

    with op.batch_alter_table("plugin_instance", schema=None) as batch_op:
        batch_op.create_index("ix_plugin_instance_feed_id_id", ["feed_id", "id"], unique=False)
        batch_op.create_index("ix_plugin_instance_owner_id_id", ["owner_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("plugin_instance", schema=None) as batch_op:
        batch_op.drop_index("ix_plugin_instance_owner_id_id")
        batch_op.drop_index("ix_plugin_instance_feed_id_id")

    with op.batch_alter_table("feed", schema=None) as batch_op:
        batch_op.drop_index("ix_feed_owner_id_id")
