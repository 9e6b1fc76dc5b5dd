"""Plugin instance splits: the ``plugin_instance_split`` table (one new table,
no existing one changed), behind ``/api/v1/plugins/instances/<id>/splits/``.

A split's rows go with its instance (``ON DELETE CASCADE``, and explicitly
when a feed or an instance is deleted).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 03:40:00.105637
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "plugin_instance_split",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plugin_inst_id", sa.Integer(), nullable=False),
        sa.Column("filter", sqlmodel.sql.sqltypes.AutoString(length=600), nullable=False),
        sa.Column(
            "created_plugin_inst_ids", sqlmodel.sql.sqltypes.AutoString(length=600), nullable=False
        ),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["plugin_inst_id"], ["plugin_instance.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("plugin_instance_split", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_plugin_instance_split_plugin_inst_id"), ["plugin_inst_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("plugin_instance_split", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugin_instance_split_plugin_inst_id"))

    op.drop_table("plugin_instance_split")
