"""The tables of the REST API layer and of pipelines (22 new tables, no
existing one changed).

- sharing: ``user_group``, ``group_member``, ``feed_user_permission``,
  ``feed_group_permission``;
- annotations: ``note``, ``comment``, ``tag``, ``tagging``;
- ``download_token``, ``chris_instance`` (its one row is made when first asked for),
  ``folder`` (file browser ids);
- the PACS bridge: ``pacs_service``, ``pacs_query``, ``pacs_series``, ``pacs_file``;
- ts instances, pipelines and workflows: ``plugin_instance_parent``,
  ``pipeline``, ``plugin_piping``, ``piping_default_parameter``,
  ``pipeline_source_file``, ``workflow``, ``workflow_instance``.

Every table is new, so no row needs a value: no server defaults. The rows
that reference a feed are deleted with it by
``cube.services.lifecycle.finish_feed_deletion``; those that reference an
instance also by ``ON DELETE CASCADE``, as in the models.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 01:35:00.941373
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chris_instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("uuid", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("job_id_prefix", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "folder",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("folder", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_folder_path"), ["path"], unique=True)

    op.create_table(
        "pacs_service",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("identifier", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("pacs_service", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pacs_service_identifier"), ["identifier"], unique=True)

    op.create_table(
        "user_group",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=150), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("user_group", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_user_group_name"), ["name"], unique=True)

    op.create_table(
        "download_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("download_token", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_download_token_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_download_token_token"), ["token"], unique=True)

    op.create_table(
        "group_member",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["user_group.id"],
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("group_id", "user_id"),
    )
    with op.batch_alter_table("group_member", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_group_member_group_id"), ["group_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_group_member_user_id"), ["user_id"], unique=False)

    op.create_table(
        "pacs_query",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column("query", sa.JSON(), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("pacs_id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("result", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("execute", sa.Boolean(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.ForeignKeyConstraint(
            ["pacs_id"],
            ["pacs_service.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("pacs_query", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pacs_query_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_pacs_query_pacs_id"), ["pacs_id"], unique=False)

    op.create_table(
        "pacs_series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pacs_id", sa.Integer(), nullable=False),
        sa.Column("PatientID", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("PatientName", sqlmodel.sql.sqltypes.AutoString(length=150), nullable=False),
        sa.Column("PatientBirthDate", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("PatientAge", sa.Integer(), nullable=True),
        sa.Column("PatientSex", sqlmodel.sql.sqltypes.AutoString(length=2), nullable=False),
        sa.Column("StudyDate", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("AccessionNumber", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("Modality", sqlmodel.sql.sqltypes.AutoString(length=15), nullable=False),
        sa.Column("ProtocolName", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("StudyInstanceUID", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("StudyDescription", sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
        sa.Column(
            "SeriesInstanceUID", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False
        ),
        sa.Column(
            "SeriesDescription", sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False
        ),
        sa.Column("folder_path", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["pacs_id"],
            ["pacs_service.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pacs_id", "SeriesInstanceUID"),
    )
    with op.batch_alter_table("pacs_series", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pacs_series_PatientID"), ["PatientID"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_pacs_series_SeriesInstanceUID"), ["SeriesInstanceUID"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_pacs_series_StudyInstanceUID"), ["StudyInstanceUID"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_pacs_series_pacs_id"), ["pacs_id"], unique=False)

    op.create_table(
        "pipeline",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("locked", sa.Boolean(), nullable=False),
        sa.Column("authors", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("category", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("modification_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("pipeline", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pipeline_name"), ["name"], unique=True)
        batch_op.create_index(batch_op.f("ix_pipeline_owner_id"), ["owner_id"], unique=False)

    op.create_table(
        "tag",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("color", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tag", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tag_owner_id"), ["owner_id"], unique=False)

    op.create_table(
        "comment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feed_id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("content", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["feed_id"],
            ["feed.id"],
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("comment", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_comment_feed_id"), ["feed_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_comment_owner_id"), ["owner_id"], unique=False)

    op.create_table(
        "feed_group_permission",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feed_id", sa.Integer(), nullable=False),
        sa.Column("group_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["feed_id"],
            ["feed.id"],
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["user_group.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("feed_id", "group_id"),
    )
    with op.batch_alter_table("feed_group_permission", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_feed_group_permission_feed_id"), ["feed_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_feed_group_permission_group_id"), ["group_id"], unique=False
        )

    op.create_table(
        "feed_user_permission",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feed_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["feed_id"],
            ["feed.id"],
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("feed_id", "user_id"),
    )
    with op.batch_alter_table("feed_user_permission", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_feed_user_permission_feed_id"), ["feed_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_feed_user_permission_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "note",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feed_id", sa.Integer(), nullable=False),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("content", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.ForeignKeyConstraint(
            ["feed_id"],
            ["feed.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("note", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_note_feed_id"), ["feed_id"], unique=True)

    op.create_table(
        "pipeline_source_file",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fname", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("fsize", sa.BigInteger(), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("pipeline_id", sa.Integer(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.ForeignKeyConstraint(["pipeline_id"], ["pipeline.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("pipeline_source_file", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pipeline_source_file_fname"), ["fname"], unique=True)
        batch_op.create_index(
            batch_op.f("ix_pipeline_source_file_owner_id"), ["owner_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_pipeline_source_file_pipeline_id"), ["pipeline_id"], unique=False
        )

    op.create_table(
        "plugin_piping",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pipeline_id", sa.Integer(), nullable=False),
        sa.Column("plugin_id", sa.Integer(), nullable=False),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("previous_id", sa.Integer(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("cpu_limit", sa.Integer(), nullable=False),
        sa.Column("memory_limit", sa.Integer(), nullable=False),
        sa.Column("number_of_workers", sa.Integer(), nullable=False),
        sa.Column("gpu_limit", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["pipeline_id"], ["pipeline.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["plugin_id"],
            ["plugin.id"],
        ),
        sa.ForeignKeyConstraint(
            ["previous_id"],
            ["plugin_piping.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pipeline_id", "title"),
    )
    with op.batch_alter_table("plugin_piping", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_plugin_piping_pipeline_id"), ["pipeline_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_plugin_piping_plugin_id"), ["plugin_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_plugin_piping_previous_id"), ["previous_id"], unique=False
        )

    op.create_table(
        "tagging",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.Column("feed_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["feed_id"],
            ["feed.id"],
        ),
        sa.ForeignKeyConstraint(
            ["tag_id"],
            ["tag.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tag_id", "feed_id"),
    )
    with op.batch_alter_table("tagging", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tagging_feed_id"), ["feed_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_tagging_tag_id"), ["tag_id"], unique=False)

    op.create_table(
        "workflow",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("pipeline_id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("creation_date", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["user.id"],
        ),
        sa.ForeignKeyConstraint(
            ["pipeline_id"],
            ["pipeline.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("workflow", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workflow_owner_id"), ["owner_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_workflow_pipeline_id"), ["pipeline_id"], unique=False)

    op.create_table(
        "piping_default_parameter",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plugin_piping_id", sa.Integer(), nullable=False),
        sa.Column("plugin_param_id", sa.Integer(), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["plugin_param_id"],
            ["plugin_parameter.id"],
        ),
        sa.ForeignKeyConstraint(["plugin_piping_id"], ["plugin_piping.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("plugin_piping_id", "plugin_param_id"),
    )
    with op.batch_alter_table("piping_default_parameter", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_piping_default_parameter_plugin_piping_id"),
            ["plugin_piping_id"],
            unique=False,
        )

    op.create_table(
        "plugin_instance_parent",
        sa.Column("plugin_inst_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["parent_id"], ["plugin_instance.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["plugin_inst_id"], ["plugin_instance.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("plugin_inst_id", "parent_id"),
    )
    with op.batch_alter_table("plugin_instance_parent", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_plugin_instance_parent_parent_id"), ["parent_id"], unique=False
        )

    op.create_table(
        "workflow_instance",
        sa.Column("plugin_inst_id", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.Integer(), nullable=False),
        sa.Column("plugin_piping_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["plugin_inst_id"], ["plugin_instance.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["plugin_piping_id"],
            ["plugin_piping.id"],
        ),
        sa.ForeignKeyConstraint(["workflow_id"], ["workflow.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("plugin_inst_id"),
    )
    with op.batch_alter_table("workflow_instance", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_workflow_instance_workflow_id"), ["workflow_id"], unique=False
        )

    op.create_table(
        "pacs_file",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["stored_file.id"],
        ),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["pacs_series.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("pacs_file", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pacs_file_file_id"), ["file_id"], unique=True)
        batch_op.create_index(batch_op.f("ix_pacs_file_series_id"), ["series_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pacs_file", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pacs_file_series_id"))
        batch_op.drop_index(batch_op.f("ix_pacs_file_file_id"))

    op.drop_table("pacs_file")
    with op.batch_alter_table("workflow_instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workflow_instance_workflow_id"))

    op.drop_table("workflow_instance")
    with op.batch_alter_table("plugin_instance_parent", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugin_instance_parent_parent_id"))

    op.drop_table("plugin_instance_parent")
    with op.batch_alter_table("piping_default_parameter", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_piping_default_parameter_plugin_piping_id"))

    op.drop_table("piping_default_parameter")
    with op.batch_alter_table("workflow", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workflow_pipeline_id"))
        batch_op.drop_index(batch_op.f("ix_workflow_owner_id"))

    op.drop_table("workflow")
    with op.batch_alter_table("tagging", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tagging_tag_id"))
        batch_op.drop_index(batch_op.f("ix_tagging_feed_id"))

    op.drop_table("tagging")
    with op.batch_alter_table("plugin_piping", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plugin_piping_previous_id"))
        batch_op.drop_index(batch_op.f("ix_plugin_piping_plugin_id"))
        batch_op.drop_index(batch_op.f("ix_plugin_piping_pipeline_id"))

    op.drop_table("plugin_piping")
    with op.batch_alter_table("pipeline_source_file", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pipeline_source_file_pipeline_id"))
        batch_op.drop_index(batch_op.f("ix_pipeline_source_file_owner_id"))
        batch_op.drop_index(batch_op.f("ix_pipeline_source_file_fname"))

    op.drop_table("pipeline_source_file")
    with op.batch_alter_table("note", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_note_feed_id"))

    op.drop_table("note")
    with op.batch_alter_table("feed_user_permission", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feed_user_permission_user_id"))
        batch_op.drop_index(batch_op.f("ix_feed_user_permission_feed_id"))

    op.drop_table("feed_user_permission")
    with op.batch_alter_table("feed_group_permission", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feed_group_permission_group_id"))
        batch_op.drop_index(batch_op.f("ix_feed_group_permission_feed_id"))

    op.drop_table("feed_group_permission")
    with op.batch_alter_table("comment", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_comment_owner_id"))
        batch_op.drop_index(batch_op.f("ix_comment_feed_id"))

    op.drop_table("comment")
    with op.batch_alter_table("tag", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tag_owner_id"))

    op.drop_table("tag")
    with op.batch_alter_table("pipeline", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pipeline_owner_id"))
        batch_op.drop_index(batch_op.f("ix_pipeline_name"))

    op.drop_table("pipeline")
    with op.batch_alter_table("pacs_series", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pacs_series_pacs_id"))
        batch_op.drop_index(batch_op.f("ix_pacs_series_StudyInstanceUID"))
        batch_op.drop_index(batch_op.f("ix_pacs_series_SeriesInstanceUID"))
        batch_op.drop_index(batch_op.f("ix_pacs_series_PatientID"))

    op.drop_table("pacs_series")
    with op.batch_alter_table("pacs_query", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pacs_query_pacs_id"))
        batch_op.drop_index(batch_op.f("ix_pacs_query_owner_id"))

    op.drop_table("pacs_query")
    with op.batch_alter_table("group_member", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_group_member_user_id"))
        batch_op.drop_index(batch_op.f("ix_group_member_group_id"))

    op.drop_table("group_member")
    with op.batch_alter_table("download_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_download_token_token"))
        batch_op.drop_index(batch_op.f("ix_download_token_owner_id"))

    op.drop_table("download_token")
    with op.batch_alter_table("user_group", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_user_group_name"))

    op.drop_table("user_group")
    with op.batch_alter_table("pacs_service", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pacs_service_identifier"))

    op.drop_table("pacs_service")
    with op.batch_alter_table("folder", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_folder_path"))

    op.drop_table("folder")
    op.drop_table("chris_instance")
