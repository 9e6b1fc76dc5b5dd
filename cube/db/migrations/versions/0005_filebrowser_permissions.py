"""File browser permissions (ChRIS v6): four new tables, no existing one
changed: ``folder_user_permission``, ``folder_group_permission``,
``file_user_permission`` and ``file_group_permission`` (a link file is a
stored file, so file grants cover link files too), behind the
``grouppermissions``/``userpermissions`` sub-resources of
``/api/v1/filebrowser/...``.

A grant goes with its folder, file, user or group (``ON DELETE CASCADE``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 04:25:24.838190
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "folder_group_permission",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("permission", sqlmodel.sql.sqltypes.AutoString(length=1), nullable=False),
        sa.ForeignKeyConstraint(["folder_id"], ["folder.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["group_id"], ["user_group.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("folder_id", "group_id"),
    )
    with op.batch_alter_table("folder_group_permission", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_folder_group_permission_folder_id"), ["folder_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_folder_group_permission_group_id"), ["group_id"], unique=False
        )

    op.create_table(
        "folder_user_permission",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("folder_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("permission", sqlmodel.sql.sqltypes.AutoString(length=1), nullable=False),
        sa.ForeignKeyConstraint(["folder_id"], ["folder.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("folder_id", "user_id"),
    )
    with op.batch_alter_table("folder_user_permission", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_folder_user_permission_folder_id"), ["folder_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_folder_user_permission_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "file_group_permission",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("permission", sqlmodel.sql.sqltypes.AutoString(length=1), nullable=False),
        sa.ForeignKeyConstraint(["file_id"], ["stored_file.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["group_id"], ["user_group.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("file_id", "group_id"),
    )
    with op.batch_alter_table("file_group_permission", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_file_group_permission_file_id"), ["file_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_file_group_permission_group_id"), ["group_id"], unique=False
        )

    op.create_table(
        "file_user_permission",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("permission", sqlmodel.sql.sqltypes.AutoString(length=1), nullable=False),
        sa.ForeignKeyConstraint(["file_id"], ["stored_file.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("file_id", "user_id"),
    )
    with op.batch_alter_table("file_user_permission", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_file_user_permission_file_id"), ["file_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_file_user_permission_user_id"), ["user_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("file_user_permission", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_file_user_permission_user_id"))
        batch_op.drop_index(batch_op.f("ix_file_user_permission_file_id"))

    op.drop_table("file_user_permission")
    with op.batch_alter_table("file_group_permission", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_file_group_permission_group_id"))
        batch_op.drop_index(batch_op.f("ix_file_group_permission_file_id"))

    op.drop_table("file_group_permission")
    with op.batch_alter_table("folder_user_permission", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_folder_user_permission_user_id"))
        batch_op.drop_index(batch_op.f("ix_folder_user_permission_folder_id"))

    op.drop_table("folder_user_permission")
    with op.batch_alter_table("folder_group_permission", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_folder_group_permission_group_id"))
        batch_op.drop_index(batch_op.f("ix_folder_group_permission_folder_id"))

    op.drop_table("folder_group_permission")
