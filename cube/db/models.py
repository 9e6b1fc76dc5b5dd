"""CUBE's tables (sqlmodel). The database is the truth of all CUBE state.

Scheduling state (status, lease) lives on the instance row so that any
worker can carry on an instance after a crash or restart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, UniqueConstraint
from sqlalchemy import false as sa_false
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """Attach UTC to naive datetimes read back from SQLite."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(index=True, unique=True, max_length=32)
    email: str = ""
    password_hash: str
    is_staff: bool = False
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Token(SQLModel, table=True):
    key: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="user.id", index=True, unique=True)
    created: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class ComputeResource(SQLModel, table=True):
    __tablename__ = "compute_resource"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=100)
    compute_url: str
    compute_auth_url: str
    compute_user: str
    compute_password: str
    compute_innetwork: bool = False
    description: str = ""
    #: Instances running longer are cancelled (CODE13); -1 means no limit.
    max_job_exec_seconds: int = -1
    #: GPUs the site can give one job (0: none); placement sends an instance
    #: only where ``gpus >= gpu_limit``.
    gpus: int = 0
    #: Jobs the scheduler keeps submitted here at once (0: unlimited); see
    #: :mod:`cube.services.placement`.
    max_concurrent_jobs: int = 0
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    modification_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class PluginMeta(SQLModel, table=True):
    __tablename__ = "plugin_meta"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=100)
    title: str = ""
    type: str
    public_repo: str = ""
    license: str = ""
    icon: str = ""
    category: str = ""
    authors: str = ""
    documentation: str = ""
    stars: int = 0
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Plugin(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("meta_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    meta_id: int = Field(foreign_key="plugin_meta.id", index=True)
    version: str = Field(max_length=10)
    dock_image: str
    execshell: str = ""
    selfpath: str = ""
    selfexec: str
    description: str = ""
    min_number_of_workers: int = 1
    max_number_of_workers: int = 1
    min_cpu_limit: int = 1000
    max_cpu_limit: int = 2147483647
    min_memory_limit: int = 200
    max_memory_limit: int = 2147483647
    min_gpu_limit: int = 0
    max_gpu_limit: int = 0
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class PluginParameter(SQLModel, table=True):
    __tablename__ = "plugin_parameter"
    __table_args__ = (UniqueConstraint("plugin_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    plugin_id: int = Field(foreign_key="plugin.id", index=True)
    name: str
    type: str  # descriptor type: str, int, float, bool, path, unextpath
    optional: bool
    default: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    flag: str
    short_flag: str
    action: str
    help: str = ""
    ui_exposed: bool = True


class PluginComputeResource(SQLModel, table=True):
    __tablename__ = "plugin_compute_resource"

    plugin_id: int = Field(foreign_key="plugin.id", primary_key=True)
    compute_resource_id: int = Field(foreign_key="compute_resource.id", primary_key=True)


class Feed(SQLModel, table=True):
    #: the feed list: a user's feeds, newest first
    __table_args__ = (Index("ix_feed_owner_id_id", "owner_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(default="", max_length=200)
    owner_id: int = Field(foreign_key="user.id", index=True)
    public: bool = False
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    modification_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class PluginInstance(SQLModel, table=True):
    __tablename__ = "plugin_instance"
    #: instance lists (a user's, a feed's), newest first: an index scan in
    #: id order instead of sorting every matching row
    __table_args__ = (
        Index("ix_plugin_instance_owner_id_id", "owner_id", "id"),
        Index("ix_plugin_instance_feed_id_id", "feed_id", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(default="", max_length=100)
    status: str = Field(default="created", index=True)
    previous_id: int | None = Field(default=None, foreign_key="plugin_instance.id", index=True)
    plugin_id: int = Field(foreign_key="plugin.id", index=True)
    feed_id: int = Field(foreign_key="feed.id", index=True)
    owner_id: int = Field(foreign_key="user.id", index=True)
    compute_resource_id: int = Field(foreign_key="compute_resource.id", index=True)
    #: The user named the compute resource: the scheduler never moves the instance.
    compute_resource_pinned: bool = False
    output_path: str = ""
    cpu_limit: int
    memory_limit: int
    number_of_workers: int
    gpu_limit: int
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    raw: str = ""
    error_code: str = ""
    error_message: str = ""
    size: int = Field(default=0, sa_type=BigInteger)  # type: ignore[call-overload]
    #: When the job was accepted by the compute site (ChRIS #408: not when queued).
    start_date: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    end_date: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    #: Which scheduler worker drives this instance, and until when (durable lease).
    lease_owner: str | None = Field(default=None, index=True)
    lease_expires: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    #: Remote job status last seen (pman/pfcon vocabulary).
    job_status: str = ""
    #: When the scheduler took one of the compute resource's job slots for this
    #: instance (just before submitting); ``None`` while it queues for one.
    slot_reserved_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    #: Ended, but the site may still hold its job and data: a worker deletes
    #: them (retrying while the site is unreachable) and clears this.
    remote_cleanup_pending: bool = Field(
        default=False, index=True, sa_column_kwargs={"server_default": sa_false()}
    )


class StatusChange(SQLModel, table=True):
    """When each status of an instance began (ChRIS #605: per-state timestamps)."""

    __tablename__ = "status_change"

    id: int | None = Field(default=None, primary_key=True)
    plugin_inst_id: int = Field(foreign_key="plugin_instance.id", index=True)
    status: str
    timestamp: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    note: str = ""


class ParameterValue(SQLModel, table=True):
    __tablename__ = "parameter_value"

    id: int | None = Field(default=None, primary_key=True)
    plugin_inst_id: int = Field(foreign_key="plugin_instance.id", index=True)
    plugin_param_id: int = Field(foreign_key="plugin_parameter.id")
    value: Any = Field(default=None, sa_column=Column(JSON, nullable=True))


class StoredFile(SQLModel, table=True):
    """A file in CUBE's storage: an upload, or an output of a plugin instance."""

    __tablename__ = "stored_file"

    id: int | None = Field(default=None, primary_key=True)
    #: Storage path, e.g. ``home/chris/uploads/a.dcm``.
    fname: str = Field(index=True, unique=True, max_length=1024)
    fsize: int = Field(default=0, sa_type=BigInteger)  # type: ignore[call-overload]
    owner_id: int = Field(foreign_key="user.id", index=True)
    plugin_inst_id: int | None = Field(default=None, foreign_key="plugin_instance.id", index=True)
    public: bool = False
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


# -- API compatibility (issue 5): groups, sharing, notes, comments, tags, -----------
# -- download tokens, the ChRIS instance and PACS ------------------------------------


class Group(SQLModel, table=True):
    """A named set of users (staff-managed); feeds can be shared with one."""

    __tablename__ = "user_group"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=150)


class GroupMember(SQLModel, table=True):
    __tablename__ = "group_member"
    __table_args__ = (UniqueConstraint("group_id", "user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    group_id: int = Field(foreign_key="user_group.id", index=True)
    user_id: int = Field(foreign_key="user.id", index=True)


class FeedUserPermission(SQLModel, table=True):
    """A feed shared with one user: read access to it, its instances and files."""

    __tablename__ = "feed_user_permission"
    __table_args__ = (UniqueConstraint("feed_id", "user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    feed_id: int = Field(foreign_key="feed.id", index=True)
    user_id: int = Field(foreign_key="user.id", index=True)


class FeedGroupPermission(SQLModel, table=True):
    """A feed shared with every member of a group (read access)."""

    __tablename__ = "feed_group_permission"
    __table_args__ = (UniqueConstraint("feed_id", "group_id"),)

    id: int | None = Field(default=None, primary_key=True)
    feed_id: int = Field(foreign_key="feed.id", index=True)
    group_id: int = Field(foreign_key="user_group.id", index=True)


class Note(SQLModel, table=True):
    """The one note of a feed (created with the feed's first read)."""

    id: int | None = Field(default=None, primary_key=True)
    feed_id: int = Field(foreign_key="feed.id", index=True, unique=True)
    title: str = Field(default="", max_length=100)
    content: str = ""


class Comment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    feed_id: int = Field(foreign_key="feed.id", index=True)
    owner_id: int = Field(foreign_key="user.id", index=True)
    title: str = Field(default="", max_length=100)
    content: str = ""
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class Tag(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    color: str = Field(max_length=20)
    owner_id: int = Field(foreign_key="user.id", index=True)


class Tagging(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("tag_id", "feed_id"),)

    id: int | None = Field(default=None, primary_key=True)
    tag_id: int = Field(foreign_key="tag.id", index=True)
    feed_id: int = Field(foreign_key="feed.id", index=True)


class DownloadToken(SQLModel, table=True):
    """A short-lived token that lets its owner download by URL (``?download_token=``)."""

    __tablename__ = "download_token"

    id: int | None = Field(default=None, primary_key=True)
    token: str = Field(index=True, unique=True, max_length=64)
    owner_id: int = Field(foreign_key="user.id", index=True)
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class ChrisInstance(SQLModel, table=True):
    """This CUBE's identity (one row): name, a stable uuid, the job id prefix."""

    __tablename__ = "chris_instance"

    id: int | None = Field(default=None, primary_key=True)
    name: str = "ChRIS instance"
    uuid: str = Field(max_length=36)
    job_id_prefix: str = "chris-jid-"
    description: str = ""
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class PacsService(SQLModel, table=True):
    """A PACS that the DICOM bridge talks to (ChRIS ``PACS``)."""

    __tablename__ = "pacs_service"

    id: int | None = Field(default=None, primary_key=True)
    identifier: str = Field(index=True, unique=True, max_length=20)
    active: bool = True


class PacsQuery(SQLModel, table=True):
    """A query a user sent to a PACS and what it answered."""

    __tablename__ = "pacs_query"

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=300)
    query: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    description: str = ""
    pacs_id: int = Field(foreign_key="pacs_service.id", index=True)
    owner_id: int = Field(foreign_key="user.id", index=True)
    status: str = "created"
    result: str = ""
    execute: bool = True
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class PacsSeries(SQLModel, table=True):
    """A DICOM series received from a PACS, stored under ``SERVICES/PACS/<pacs>/``."""

    __tablename__ = "pacs_series"
    __table_args__ = (UniqueConstraint("pacs_id", "SeriesInstanceUID"),)

    id: int | None = Field(default=None, primary_key=True)
    pacs_id: int = Field(foreign_key="pacs_service.id", index=True)
    PatientID: str = Field(default="", max_length=100, index=True)
    PatientName: str = Field(default="", max_length=150)
    PatientBirthDate: str = Field(default="", max_length=8)
    PatientAge: int | None = None
    PatientSex: str = Field(default="", max_length=2)
    StudyDate: str = Field(default="", max_length=8)
    AccessionNumber: str = Field(default="", max_length=100)
    Modality: str = Field(default="", max_length=15)
    ProtocolName: str = Field(default="", max_length=64)
    StudyInstanceUID: str = Field(default="", max_length=100, index=True)
    StudyDescription: str = Field(default="", max_length=400)
    SeriesInstanceUID: str = Field(max_length=100, index=True)
    SeriesDescription: str = Field(default="", max_length=400)
    #: Storage folder of the series' files.
    folder_path: str = Field(max_length=1024)
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class PacsFile(SQLModel, table=True):
    """A stored DICOM file of a PACS series."""

    __tablename__ = "pacs_file"

    id: int | None = Field(default=None, primary_key=True)
    file_id: int = Field(foreign_key="stored_file.id", index=True, unique=True)
    series_id: int = Field(foreign_key="pacs_series.id", index=True)


class Folder(SQLModel, table=True):
    """A folder of the file browser, given an id when first looked at.

    Folders are implied by stored files' paths; a row only pins the id that
    the ``filebrowser/<id>/`` URLs carry.
    """

    id: int | None = Field(default=None, primary_key=True)
    #: Storage path of the folder (``""`` is the root).
    path: str = Field(index=True, unique=True, max_length=1024)
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class FolderUserPermission(SQLModel, table=True):
    """A file browser folder shared with one user (ChRIS v6): they read the
    folder and everything below it. ``permission`` is ``r`` or ``w``."""

    __tablename__ = "folder_user_permission"
    __table_args__ = (UniqueConstraint("folder_id", "user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    folder_id: int = Field(foreign_key="folder.id", index=True, ondelete="CASCADE")
    user_id: int = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    permission: str = Field(default="r", max_length=1)


class FolderGroupPermission(SQLModel, table=True):
    """A folder shared with every member of a group (see :class:`FolderUserPermission`)."""

    __tablename__ = "folder_group_permission"
    __table_args__ = (UniqueConstraint("folder_id", "group_id"),)

    id: int | None = Field(default=None, primary_key=True)
    folder_id: int = Field(foreign_key="folder.id", index=True, ondelete="CASCADE")
    group_id: int = Field(foreign_key="user_group.id", index=True, ondelete="CASCADE")
    permission: str = Field(default="r", max_length=1)


class FileUserPermission(SQLModel, table=True):
    """A file (or a link file) shared with one user: they read that file alone."""

    __tablename__ = "file_user_permission"
    __table_args__ = (UniqueConstraint("file_id", "user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    file_id: int = Field(foreign_key="stored_file.id", index=True, ondelete="CASCADE")
    user_id: int = Field(foreign_key="user.id", index=True, ondelete="CASCADE")
    permission: str = Field(default="r", max_length=1)


class FileGroupPermission(SQLModel, table=True):
    """A file (or a link file) shared with every member of a group."""

    __tablename__ = "file_group_permission"
    __table_args__ = (UniqueConstraint("file_id", "group_id"),)

    id: int | None = Field(default=None, primary_key=True)
    file_id: int = Field(foreign_key="stored_file.id", index=True, ondelete="CASCADE")
    group_id: int = Field(foreign_key="user_group.id", index=True, ondelete="CASCADE")
    permission: str = Field(default="r", max_length=1)


# -- ts instances, pipelines and workflows (issue 5) ---------------------------------


class PluginInstanceParent(SQLModel, table=True):
    """A parent of a ts instance (its ``plugininstances``), in the order given.

    The ``previous`` of a ts instance is one of them; a ts instance runs once
    every parent finished successfully (reference §1.5).
    """

    __tablename__ = "plugin_instance_parent"

    plugin_inst_id: int = Field(
        foreign_key="plugin_instance.id", primary_key=True, ondelete="CASCADE"
    )
    parent_id: int = Field(
        foreign_key="plugin_instance.id", primary_key=True, index=True, ondelete="CASCADE"
    )
    position: int


class Pipeline(SQLModel, table=True):
    """A reusable tree of plugins with default parameters (reference §6).

    A ``locked`` pipeline is visible to every user; an unlocked one only to its
    owner (and staff), as in ChRIS.
    """

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=100)
    locked: bool = True
    authors: str = Field(default="", max_length=200)
    category: str = Field(default="", max_length=100)
    description: str = Field(default="", max_length=2000)
    owner_id: int = Field(foreign_key="user.id", index=True)
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
    modification_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class PluginPiping(SQLModel, table=True):
    """One node of a pipeline: a plugin, its parent node and its compute limits."""

    __tablename__ = "plugin_piping"
    __table_args__ = (UniqueConstraint("pipeline_id", "title"),)

    id: int | None = Field(default=None, primary_key=True)
    pipeline_id: int = Field(foreign_key="pipeline.id", index=True, ondelete="CASCADE")
    plugin_id: int = Field(foreign_key="plugin.id", index=True)
    title: str = Field(max_length=100)
    previous_id: int | None = Field(default=None, foreign_key="plugin_piping.id", index=True)
    #: Position in the pipeline's breadth-first order (the root is 0).
    position: int = 0
    cpu_limit: int
    memory_limit: int
    number_of_workers: int
    gpu_limit: int


class PipingDefaultParameter(SQLModel, table=True):
    """The default value a pipeline node gives one plugin parameter."""

    __tablename__ = "piping_default_parameter"
    __table_args__ = (UniqueConstraint("plugin_piping_id", "plugin_param_id"),)

    id: int | None = Field(default=None, primary_key=True)
    plugin_piping_id: int = Field(foreign_key="plugin_piping.id", index=True, ondelete="CASCADE")
    plugin_param_id: int = Field(foreign_key="plugin_parameter.id")
    value: Any = Field(default=None, sa_column=Column(JSON, nullable=True))


class Workflow(SQLModel, table=True):
    """A run of a pipeline: the plugin instances made from its nodes."""

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(default="", max_length=100)
    pipeline_id: int = Field(foreign_key="pipeline.id", index=True)
    owner_id: int = Field(foreign_key="user.id", index=True)
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class WorkflowInstance(SQLModel, table=True):
    """A plugin instance of a workflow, and the pipeline node it was made from."""

    __tablename__ = "workflow_instance"

    plugin_inst_id: int = Field(
        foreign_key="plugin_instance.id", primary_key=True, ondelete="CASCADE"
    )
    workflow_id: int = Field(foreign_key="workflow.id", index=True, ondelete="CASCADE")
    plugin_piping_id: int = Field(foreign_key="plugin_piping.id")


class PipelineSourceFile(SQLModel, table=True):
    """An uploaded YAML or JSON file that became a pipeline (``PIPELINES/<user>/<file>``)."""

    __tablename__ = "pipeline_source_file"

    id: int | None = Field(default=None, primary_key=True)
    #: Storage path, e.g. ``PIPELINES/chris/my-pipeline.yml``.
    fname: str = Field(index=True, unique=True, max_length=1024)
    fsize: int = Field(default=0, sa_type=BigInteger)  # type: ignore[call-overload]
    type: str = Field(max_length=10)  # yaml | json
    owner_id: int = Field(foreign_key="user.id", index=True)
    pipeline_id: int = Field(foreign_key="pipeline.id", index=True, ondelete="CASCADE")
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]


class PluginInstanceSplit(SQLModel, table=True):
    """A split of an instance's output (reference §1.3): one ts child
    (``pl-topologicalcopy``) per comma-separated filter expression."""

    __tablename__ = "plugin_instance_split"

    id: int | None = Field(default=None, primary_key=True)
    plugin_inst_id: int = Field(foreign_key="plugin_instance.id", index=True, ondelete="CASCADE")
    #: The filter expressions, comma-separated, as posted.
    filter: str = Field(default="", max_length=600)
    #: Ids of the ts instances the split made, comma-separated (ChRIS's field).
    created_plugin_inst_ids: str = Field(default="", max_length=600)
    creation_date: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True))  # type: ignore[call-overload]
