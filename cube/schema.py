"""CUBE's wire schema: IDs, statuses and the JSON shapes of its resources.

Field names follow ChRIS CUBE (``reference/chris.md`` §1.3–1.4) so that
existing clients read them unchanged. Hyperlinks are absolute URLs.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, NewType, TypeVar

from chris_sdk.descriptor import PluginType
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer


class HyperLink:
    """Marks a field as a hyperlink to another resource.

    Collection+JSON renders such fields as an item's ``links`` (``rel`` is the
    field name) instead of its ``data``, as CUBE does for hyperlinked fields.
    """


#: An absolute URL of another resource (a Collection+JSON link).
Link = Annotated[str, HyperLink()]
#: A link that may be absent (``null``).
OptLink = Annotated[str | None, HyperLink()]

UserId = NewType("UserId", int)
FeedId = NewType("FeedId", int)
PluginId = NewType("PluginId", int)
PluginInstanceId = NewType("PluginInstanceId", int)
ComputeResourceId = NewType("ComputeResourceId", int)
FileId = NewType("FileId", int)
ParameterId = NewType("ParameterId", int)
GroupId = NewType("GroupId", int)
FolderId = NewType("FolderId", int)


class InstanceStatus(StrEnum):
    """Plugin instance lifecycle (reference §1.5)."""

    CREATED = "created"
    WAITING = "waiting"
    SCHEDULED = "scheduled"
    STARTED = "started"
    REGISTERING_FILES = "registeringFiles"
    FINISHED_SUCCESSFULLY = "finishedSuccessfully"
    FINISHED_WITH_ERROR = "finishedWithError"
    CANCELLED = "cancelled"

    @property
    def is_active(self) -> bool:
        """True until the instance reaches a terminal status."""
        return self not in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        InstanceStatus.FINISHED_SUCCESSFULLY,
        InstanceStatus.FINISHED_WITH_ERROR,
        InstanceStatus.CANCELLED,
    }
)


class ErrorCode(StrEnum):
    """What failed, in ChRIS's ``CODEnn`` vocabulary (reference §1.5)."""

    SUBMIT = "CODE01"
    STATUS = "CODE02"
    FETCH_OUTPUT = "CODE03"
    BAD_ZIP = "CODE04"
    TS_INPUT_MISSING = "CODE05"
    UNDEFINED_STATUS = "CODE10"
    MAX_EXEC_TIME = "CODE13"
    OUTPUT_MISSING = "CODE14"
    OUTPUT_PATH_MISMATCH = "CODE16"
    CRASH = "CODE19"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


T = TypeVar("T")


class Page(_Wire, Generic[T]):
    """A page of a list (``application/json`` with limit/offset)."""

    count: int
    next: str | None = None
    previous: str | None = None
    results: list[T]


class AuthToken(_Wire):
    token: str


class User(_Wire):
    url: Link
    id: UserId
    username: str
    email: str
    is_staff: bool
    groups: Link = ""


class Group(_Wire):
    url: Link
    id: GroupId
    name: str
    users: Link


class GroupUser(_Wire):
    """A user's membership of a group."""

    url: Link
    id: int
    group_id: GroupId
    group_name: str
    user_id: UserId
    username: str
    group: Link
    user: Link


class ChrisInstance(_Wire):
    url: Link
    id: int
    creation_date: datetime
    name: str
    uuid: str
    job_id_prefix: str
    description: str


class PluginMeta(_Wire):
    url: Link
    id: int
    creation_date: datetime
    name: str
    title: str
    stars: int
    public_repo: str
    license: str
    type: PluginType
    icon: str
    category: str
    authors: str
    documentation: str
    plugins: Link


class ComputeResource(_Wire):
    url: Link
    id: ComputeResourceId
    creation_date: datetime
    modification_date: datetime
    name: str
    compute_url: str | None = None
    compute_auth_url: str | None = None
    compute_innetwork: bool = False
    description: str
    max_job_exec_seconds: int
    #: GPUs one job may have there (0: none). Not in ChRIS; optional for its clients.
    gpus: int = 0
    #: Jobs submitted there at once (0: unlimited). Not in ChRIS.
    max_concurrent_jobs: int = 0


class Plugin(_Wire):
    url: Link
    id: PluginId
    creation_date: datetime
    name: str
    version: str
    dock_image: str
    public_repo: str
    icon: str
    type: PluginType
    stars: int
    authors: str
    title: str
    category: str
    description: str
    documentation: str
    license: str
    execshell: str
    selfpath: str
    selfexec: str
    min_number_of_workers: int
    max_number_of_workers: int
    min_cpu_limit: int
    max_cpu_limit: int
    min_memory_limit: int
    max_memory_limit: int
    min_gpu_limit: int
    max_gpu_limit: int
    meta: Link
    parameters: Link
    instances: Link
    compute_resources: Link


class PluginParameter(_Wire):
    url: Link
    id: ParameterId
    name: str
    type: str  # API names: string, integer, float, boolean, path, unextpath
    optional: bool
    default: Any = None
    flag: str
    short_flag: str
    action: str
    help: str
    ui_exposed: bool
    plugin: Link


class Feed(_Wire):
    url: Link
    id: FeedId
    creation_date: datetime
    modification_date: datetime
    name: str
    public: bool
    owner_username: str
    folder_path: str
    #: The feed's folder in the file browser (``null`` for a feed made
    #: before feed folders got ids at creation, until its folder is looked at).
    folder: OptLink = None
    created_jobs: int = 0
    waiting_jobs: int = 0
    scheduled_jobs: int = 0
    started_jobs: int = 0
    registering_jobs: int = 0
    finished_jobs: int = 0
    errored_jobs: int = 0
    cancelled_jobs: int = 0
    plugin_instances: Link
    files: Link
    note: Link = ""
    comments: Link = ""
    tags: Link = ""
    taggings: Link = ""
    user_permissions: Link = ""
    group_permissions: Link = ""
    owner: Link = ""


class FeedUserPermission(_Wire):
    url: Link
    id: int
    feed_id: FeedId
    feed_name: str
    user_id: UserId
    user_username: str
    feed: Link
    user: Link


class FeedGroupPermission(_Wire):
    url: Link
    id: int
    feed_id: FeedId
    feed_name: str
    group_id: GroupId
    group_name: str
    feed: Link
    group: Link


class Note(_Wire):
    url: Link
    id: int
    title: str
    content: str
    feed: Link


class Comment(_Wire):
    url: Link
    id: int
    creation_date: datetime
    title: str
    owner_username: str
    content: str
    feed: Link


class Tag(_Wire):
    url: Link
    id: int
    name: str
    owner_username: str
    color: str
    feeds: Link
    taggings: Link


class Tagging(_Wire):
    url: Link
    id: int
    tag_id: int
    feed_id: FeedId
    tag: Link
    feed: Link


class DownloadToken(_Wire):
    url: Link
    id: int
    creation_date: datetime
    token: str
    owner_username: str
    owner: Link


class StatusChange(_Wire):
    """One entry of an instance's status history (when each status began)."""

    status: InstanceStatus
    timestamp: datetime
    note: str = ""


def _summary_from_wire(value: Any) -> Any:
    """A summary as read from the wire: ChRIS's JSON string (or already a dict)."""
    if isinstance(value, str):
        return json.loads(value) if value else {}
    return value


#: An instance's ``summary``: a dict in Python, a JSON *string* on the wire, as
#: ChRIS serves it (a CharField holding JSON; ChRIS_ui ``JSON.parse``-s it and
#: aiochris types it ``str``).
Summary = Annotated[
    dict[str, Any],
    BeforeValidator(_summary_from_wire),
    PlainSerializer(lambda value: json.dumps(value), return_type=str),
]


class PluginInstance(_Wire):
    url: Link
    id: PluginInstanceId
    title: str
    previous_id: PluginInstanceId | None
    compute_resource_name: str
    plugin_id: PluginId
    plugin_name: str
    plugin_version: str
    plugin_type: PluginType
    feed_id: FeedId
    start_date: datetime | None
    end_date: datetime | None
    output_path: str
    status: InstanceStatus
    active: bool
    pipeline_id: int | None = None
    pipeline_name: str = ""
    workflow_id: int | None = None
    summary: Summary
    raw: str = ""
    owner_username: str
    cpu_limit: int
    memory_limit: int
    number_of_workers: int
    gpu_limit: int
    size: int
    error_code: str
    error_message: str = ""
    #: ChRIS's asynchronous deletion state (inactive, pending, failed). CUBE
    #: deletes synchronously (the DELETE answers once the rows are gone), so an
    #: instance that can be read is never being deleted: always ``inactive``.
    deletion_status: str = "inactive"
    deletion_requested_at: datetime | None = None
    deletion_error: str = ""
    status_history: list[StatusChange] = []
    previous: OptLink
    #: The file browser folder of ``output_path`` (``null`` for an instance
    #: made before folders got ids at creation, until its folder is looked at).
    output_folder: OptLink = None
    feed: Link
    plugin: Link
    #: The workflow the instance was made by (``null`` outside workflows).
    workflow: OptLink = None
    descendants: Link
    files: Link
    parameters: Link
    compute_resource: Link
    #: The instance's splits (``POST`` one to make ts children per filter).
    splits: Link


class PluginInstanceSplit(_Wire):
    """A split of an instance: the ts children made per filter expression."""

    url: Link
    id: int
    creation_date: datetime
    filter: str
    plugin_inst_id: PluginInstanceId
    #: Ids of the ts instances made, comma-separated (as ChRIS serves it).
    created_plugin_inst_ids: str
    plugin_inst: Link


class ParameterValue(_Wire):
    url: Link
    id: int
    param_name: str
    value: Any
    type: str
    plugin_inst: Link
    plugin_param: Link


class UserFile(_Wire):
    url: Link
    id: FileId
    creation_date: datetime
    fname: str
    fsize: int
    public: bool
    owner_username: str
    file_resource: Link
    parent_folder: OptLink = None
    owner: Link = ""
    group_permissions: Link = ""
    user_permissions: Link = ""


class PluginInstanceFile(_Wire):
    url: Link
    id: FileId
    creation_date: datetime
    fname: str
    fsize: int
    feed_id: FeedId
    plugin_inst_id: PluginInstanceId
    file_resource: Link
    plugin_inst: Link


class Folder(_Wire):
    """A folder of the file browser."""

    url: Link
    id: FolderId
    creation_date: datetime
    path: str
    parent: OptLink
    children: Link
    files: Link
    link_files: Link
    group_permissions: Link
    user_permissions: Link


class FolderFile(_Wire):
    """A file as the file browser lists it."""

    url: Link
    id: FileId
    creation_date: datetime
    fname: str
    fsize: int
    public: bool
    owner_username: str
    file_resource: Link
    parent_folder: Link
    group_permissions: Link
    user_permissions: Link


class LinkFile(_Wire):
    """A ``.chrislink`` file: a pointer to another storage path (``path``)."""

    url: Link
    id: FileId
    creation_date: datetime
    path: str
    fname: str
    fsize: int
    public: bool
    owner_username: str
    file_resource: Link
    parent_folder: Link
    group_permissions: Link
    user_permissions: Link


class FolderUserPermission(_Wire):
    """A folder shared with a user (ChRIS v6): read access to it and below."""

    url: Link
    id: int
    permission: str
    folder_id: FolderId
    folder_path: str
    user_id: UserId
    user_username: str
    folder: Link
    user: Link


class FolderGroupPermission(_Wire):
    """A folder shared with a group's members."""

    url: Link
    id: int
    permission: str
    folder_id: FolderId
    folder_path: str
    group_id: GroupId
    group_name: str
    folder: Link
    group: Link


class FileUserPermission(_Wire):
    """A file of the file browser shared with a user."""

    url: Link
    id: int
    permission: str
    file_id: FileId
    file_fname: str
    user_id: UserId
    user_username: str
    file: Link
    user: Link


class FileGroupPermission(_Wire):
    """A file of the file browser shared with a group's members."""

    url: Link
    id: int
    permission: str
    file_id: FileId
    file_fname: str
    group_id: GroupId
    group_name: str
    file: Link
    group: Link


class LinkFileUserPermission(_Wire):
    """A link file shared with a user."""

    url: Link
    id: int
    permission: str
    link_file_id: FileId
    link_file_fname: str
    user_id: UserId
    user_username: str
    link_file: Link
    user: Link


class LinkFileGroupPermission(_Wire):
    """A link file shared with a group's members."""

    url: Link
    id: int
    permission: str
    link_file_id: FileId
    link_file_fname: str
    group_id: GroupId
    group_name: str
    link_file: Link
    group: Link


class Pacs(_Wire):
    url: Link
    id: int
    identifier: str
    active: bool
    folder_path: str
    query_list: Link
    series_list: Link


class PacsQuery(_Wire):
    url: Link
    id: int
    creation_date: datetime
    title: str
    query: dict[str, Any]
    description: str
    status: str
    result: str
    execute: bool
    owner_username: str
    pacs_id: int
    pacs_identifier: str
    pacs: Link


class PacsSeries(_Wire):
    url: Link
    id: int
    creation_date: datetime
    PatientID: str
    PatientName: str
    PatientBirthDate: str
    PatientAge: int | None
    PatientSex: str
    StudyDate: str
    AccessionNumber: str
    Modality: str
    ProtocolName: str
    StudyInstanceUID: str
    StudyDescription: str
    SeriesInstanceUID: str
    SeriesDescription: str
    pacs_identifier: str
    folder_path: str
    pacs: Link
    files: Link


class PacsFile(_Wire):
    url: Link
    id: FileId
    creation_date: datetime
    fname: str
    fsize: int
    public: bool
    owner_username: str
    PatientID: str
    StudyInstanceUID: str
    SeriesInstanceUID: str
    pacs_identifier: str
    file_resource: Link
    series: Link
    pacs: Link


class PacsFileIn(_Wire):
    """One file of a bulk PACS registration: a path under ``SERVICES/PACS/`` already in storage."""

    path: str
    PatientID: str = ""
    PatientName: str = ""
    PatientBirthDate: str = ""
    PatientAge: int | None = None
    PatientSex: str = ""
    StudyDate: str = ""
    AccessionNumber: str = ""
    Modality: str = ""
    ProtocolName: str = ""
    StudyInstanceUID: str = ""
    StudyDescription: str = ""
    SeriesInstanceUID: str
    SeriesDescription: str = ""


class PacsFilesIn(_Wire):
    """Bulk registration of stored DICOM files of one PACS (``POST pacs/files/``)."""

    pacs_name: str
    files: list[PacsFileIn]


class PacsFilesRegistered(_Wire):
    """What a bulk registration did."""

    registered: int
    series: int


# -- pipelines and workflows (reference §1.3, §6) ----------------------------------

PipelineId = NewType("PipelineId", int)
PipingId = NewType("PipingId", int)
WorkflowId = NewType("WorkflowId", int)


class Pipeline(_Wire):
    url: Link
    id: PipelineId
    name: str
    locked: bool
    authors: str
    category: str
    description: str
    owner_username: str
    creation_date: datetime
    modification_date: datetime
    plugins: Link
    plugin_pipings: Link
    default_parameters: Link
    workflows: Link
    json_repr: Link


class PipelineExport(_Wire):
    """A pipeline as ``pipelines/<id>/json/`` gives it (``plugin_tree`` a JSON string)."""

    url: Link = ""
    name: str
    locked: bool
    authors: str
    category: str
    description: str
    plugin_tree: str


class PluginPiping(_Wire):
    """One node of a pipeline."""

    url: Link
    id: PipingId
    title: str
    previous_id: PipingId | None
    plugin_id: PluginId
    plugin_name: str
    plugin_version: str
    pipeline_id: PipelineId
    cpu_limit: int
    memory_limit: int
    number_of_workers: int
    gpu_limit: int
    previous: OptLink
    plugin: Link
    pipeline: Link


class PipingDefaultParameter(_Wire):
    """The default a pipeline node gives one plugin parameter."""

    url: Link
    id: int
    value: Any
    type: str  # API names: string, integer, float, boolean, path, unextpath
    plugin_piping_id: PipingId
    plugin_piping_title: str
    #: The node's previous node and limits: python-chrisclient's
    #: ``compute_workflow_nodes_info`` builds ``nodes_info`` from them.
    previous_plugin_piping_id: PipingId | None = None
    plugin_piping_cpu_limit: int = 0
    plugin_piping_memory_limit: int = 0
    plugin_piping_number_of_workers: int = 1
    plugin_piping_gpu_limit: int = 0
    param_name: str
    param_id: ParameterId
    plugin_name: str
    plugin_version: str
    plugin_piping: Link
    plugin_param: Link


class Workflow(_Wire):
    url: Link
    id: WorkflowId
    creation_date: datetime
    title: str
    pipeline_id: PipelineId
    pipeline_name: str
    owner_username: str
    created_jobs: int = 0
    waiting_jobs: int = 0
    scheduled_jobs: int = 0
    started_jobs: int = 0
    registering_jobs: int = 0
    finished_jobs: int = 0
    errored_jobs: int = 0
    cancelled_jobs: int = 0
    pipeline: Link
    plugin_instances: Link


class PipelineSourceFile(_Wire):
    url: Link
    id: int
    creation_date: datetime
    fname: str
    fsize: int
    type: str
    owner_username: str
    pipeline_id: PipelineId
    pipeline_name: str
    file_resource: Link
    pipeline: Link
