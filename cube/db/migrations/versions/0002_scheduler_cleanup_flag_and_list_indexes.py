"""Scheduler: ``remote_cleanup_pending`` (an ended job still to delete at its
site); indexes for the instance and feed lists (owner or feed, newest first).

Existing instances get ``false``: what ended before was cleaned up then.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:46:51.025131
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("feed", schema=None) as batch_op:
        batch_op.create_index("ix_feed_owner_id_id", ["owner_id", "id"], unique=False)

    with op.batch_alter_table("plugin_instance", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "remote_cleanup_pending", sa.Boolean(), server_default=sa.false(), nullable=False
            )
        )
        batch_op.create_index("ix_plugin_instance_feed_id_id", ["feed_id", "id"], unique=False)
        batch_op.create_index("ix_plugin_instance_owner_id_id", ["owner_id", "id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_plugin_instance_remote_cleanup_pending"),
            ["remote_cleanup_pending"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("plugin_instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugin_instance_remote_cleanup_pending"))
        batch_op.drop_index("ix_plugin_instance_owner_id_id")
        batch_op.drop_index("ix_plugin_instance_feed_id_id")
        batch_op.drop_column("remote_cleanup_pending")

    with op.batch_alter_table("feed", schema=None) as batch_op:
        batch_op.drop_index("ix_feed_owner_id_id")
