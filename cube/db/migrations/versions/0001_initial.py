"""The initial schema: what create_all of CUBE (main at ea5f438) made, before migrations.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23 00:39:44.408840
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "compute_resource",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("compute_url", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("compute_auth_url", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("compute_user", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("compute_password", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("compute_innetwork", sa.Boolean(), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("max_job_exec_seconds", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("max_concurrent_jobs", sa.Integer(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modification_date", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("compute_resource", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_compute_resource_name"), ["name"], unique=True)

    op.create_table(
        "plugin_meta",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("public_repo", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("license", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("icon", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("category", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("authors", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("documentation", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("stars", sa.Integer(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("plugin_meta", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plugin_meta_name"), ["name"], unique=True)

    op.create_table(
        "user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("password_hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("is_staff", sa.Boolean(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_username"), ["username"], unique=True)

    op.create_table(
        "feed",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modification_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("feed", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feed_owner_id"), ["owner_id"], unique=False)

    op.create_table(
        "plugin",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("meta_id", sa.Integer(), nullable=False),
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("dock_image", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("execshell", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("selfpath", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("selfexec", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("min_number_of_workers", sa.Integer(), nullable=False),
        sa.Column("max_number_of_workers", sa.Integer(), nullable=False),
        sa.Column("min_cpu_limit", sa.Integer(), nullable=False),
        sa.Column("max_cpu_limit", sa.Integer(), nullable=False),
        sa.Column("min_memory_limit", sa.Integer(), nullable=False),
        sa.Column("max_memory_limit", sa.Integer(), nullable=False),
        sa.Column("min_gpu_limit", sa.Integer(), nullable=False),
        sa.Column("max_gpu_limit", sa.Integer(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["meta_id"],
            ["plugin_meta.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("meta_id", "version"),
    )
    with op.batch_alter_table("plugin", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plugin_meta_id"), ["meta_id"], unique=False)

    op.create_table(
        "token",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("token", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_token_user_id"), ["user_id"], unique=True)

    op.create_table(
        "plugin_compute_resource",
        sa.Column("plugin_id", sa.Integer(), nullable=False),
        sa.Column("compute_resource_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["compute_resource_id"],
            ["compute_resource.id"],
        ),
        sa.ForeignKeyConstraint(
            ["plugin_id"],
            ["plugin.id"],
        ),
        sa.PrimaryKeyConstraint("plugin_id", "compute_resource_id"),
    )
    op.create_table(
        "plugin_instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("previous_id", sa.Integer(), nullable=True),
        sa.Column("plugin_id", sa.Integer(), nullable=False),
        sa.Column("feed_id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("compute_resource_id", sa.Integer(), nullable=False),
        sa.Column("compute_resource_pinned", sa.Boolean(), nullable=False),
        sa.Column("output_path", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("cpu_limit", sa.Integer(), nullable=False),
        sa.Column("memory_limit", sa.Integer(), nullable=False),
        sa.Column("number_of_workers", sa.Integer(), nullable=False),
        sa.Column("gpu_limit", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("raw", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("error_code", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("error_message", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("start_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("job_status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("slot_reserved_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["compute_resource_id"],
            ["compute_resource.id"],
        ),
        sa.ForeignKeyConstraint(
            ["feed_id"],
            ["feed.id"],
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.ForeignKeyConstraint(
            ["plugin_id"],
            ["plugin.id"],
        ),
        sa.ForeignKeyConstraint(
            ["previous_id"],
            ["plugin_instance.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("plugin_instance", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_plugin_instance_compute_resource_id"),
            ["compute_resource_id"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_plugin_instance_feed_id"), ["feed_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_plugin_instance_lease_owner"), ["lease_owner"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_plugin_instance_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_plugin_instance_plugin_id"), ["plugin_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_plugin_instance_previous_id"), ["previous_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_plugin_instance_status"), ["status"], unique=False)

    op.create_table(
        "plugin_parameter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plugin_id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("optional", sa.Boolean(), nullable=False),
        sa.Column("default", sa.JSON(), nullable=True),
        sa.Column("flag", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("short_flag", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("help", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("ui_exposed", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["plugin_id"],
            ["plugin.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("plugin_id", "name"),
    )
    with op.batch_alter_table("plugin_parameter", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_plugin_parameter_plugin_id"), ["plugin_id"], unique=False
        )

    op.create_table(
        "parameter_value",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plugin_inst_id", sa.Integer(), nullable=False),
        sa.Column("plugin_param_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["plugin_inst_id"],
            ["plugin_instance.id"],
        ),
        sa.ForeignKeyConstraint(
            ["plugin_param_id"],
            ["plugin_parameter.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("parameter_value", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_parameter_value_plugin_inst_id"), ["plugin_inst_id"], unique=False
        )

    op.create_table(
        "status_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plugin_inst_id", sa.Integer(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(
            ["plugin_inst_id"],
            ["plugin_instance.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("status_change", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_status_change_plugin_inst_id"), ["plugin_inst_id"], unique=False
        )

    op.create_table(
        "stored_file",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fname", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("fsize", sa.BigInteger(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("plugin_inst_id", sa.Integer(), nullable=True),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.ForeignKeyConstraint(
            ["plugin_inst_id"],
            ["plugin_instance.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("stored_file", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stored_file_fname"), ["fname"], unique=True)
        batch_op.create_index(batch_op.f("ix_stored_file_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_stored_file_plugin_inst_id"), ["plugin_inst_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("stored_file", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stored_file_plugin_inst_id"))
        batch_op.drop_index(batch_op.f("ix_stored_file_owner_id"))
        batch_op.drop_index(batch_op.f("ix_stored_file_fname"))

    op.drop_table("stored_file")
    with op.batch_alter_table("status_change", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_status_change_plugin_inst_id"))

    op.drop_table("status_change")
    with op.batch_alter_table("parameter_value", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_parameter_value_plugin_inst_id"))

    op.drop_table("parameter_value")
    with op.batch_alter_table("plugin_parameter", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugin_parameter_plugin_id"))

    op.drop_table("plugin_parameter")
    with op.batch_alter_table("plugin_instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugin_instance_status"))
        batch_op.drop_index(batch_op.f("ix_plugin_instance_previous_id"))
        batch_op.drop_index(batch_op.f("ix_plugin_instance_plugin_id"))
        batch_op.drop_index(batch_op.f("ix_plugin_instance_owner_id"))
        batch_op.drop_index(batch_op.f("ix_plugin_instance_lease_owner"))
        batch_op.drop_index(batch_op.f("ix_plugin_instance_feed_id"))
        batch_op.drop_index(batch_op.f("ix_plugin_instance_compute_resource_id"))

    op.drop_table("plugin_instance")
    op.drop_table("plugin_compute_resource")
    with op.batch_alter_table("token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_token_user_id"))

    op.drop_table("token")
    with op.batch_alter_table("plugin", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugin_meta_id"))

    op.drop_table("plugin")
    with op.batch_alter_table("feed", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feed_owner_id"))

    op.drop_table("feed")
    with op.batch_alter_table("user", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_username"))

    op.drop_table("user")
    with op.batch_alter_table("plugin_meta", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugin_meta_name"))

    op.drop_table("plugin_meta")
    with op.batch_alter_table("compute_resource", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_compute_resource_name"))

    op.drop_table("compute_resource")
