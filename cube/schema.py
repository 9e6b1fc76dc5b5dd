"""CUBE's wire schema: IDs, statuses and the JSON shapes of its resources.

Field names follow ChRIS CUBE (``reference/chris.md`` §1.3–1.4) so that
existing clients read them unchanged. Hyperlinks are absolute URLs.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, NewType, TypeVar

from chris_sdk.descriptor import PluginType
from pydantic import BaseModel, ConfigDict

UserId = NewType("UserId", int)
FeedId = NewType("FeedId", int)
PluginId = NewType("PluginId", int)
PluginInstanceId = NewType("PluginInstanceId", int)
ComputeResourceId = NewType("ComputeResourceId", int)
FileId = NewType("FileId", int)
ParameterId = NewType("ParameterId", int)


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
    url: str
    id: UserId
    username: str
    email: str
    is_staff: bool


class ComputeResource(_Wire):
    url: str
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
    url: str
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
    meta: str
    parameters: str
    instances: str
    compute_resources: str


class PluginParameter(_Wire):
    url: str
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
    plugin: str


class Feed(_Wire):
    url: str
    id: FeedId
    creation_date: datetime
    modification_date: datetime
    name: str
    public: bool
    owner_username: str
    folder_path: str
    created_jobs: int = 0
    waiting_jobs: int = 0
    scheduled_jobs: int = 0
    started_jobs: int = 0
    registering_jobs: int = 0
    finished_jobs: int = 0
    errored_jobs: int = 0
    cancelled_jobs: int = 0
    plugin_instances: str
    files: str


class StatusChange(_Wire):
    """One entry of an instance's status history (when each status began)."""

    status: InstanceStatus
    timestamp: datetime
    note: str = ""


class PluginInstance(_Wire):
    url: str
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
    summary: dict[str, Any]
    raw: str = ""
    owner_username: str
    cpu_limit: int
    memory_limit: int
    number_of_workers: int
    gpu_limit: int
    size: int
    error_code: str
    error_message: str = ""
    status_history: list[StatusChange] = []
    previous: str | None
    feed: str
    plugin: str
    descendants: str
    files: str
    parameters: str
    compute_resource: str


class ParameterValue(_Wire):
    url: str
    id: int
    param_name: str
    value: Any
    type: str
    plugin_inst: str
    plugin_param: str


class UserFile(_Wire):
    url: str
    id: FileId
    creation_date: datetime
    fname: str
    fsize: int
    public: bool
    owner_username: str
    file_resource: str


class PluginInstanceFile(_Wire):
    url: str
    id: FileId
    creation_date: datetime
    fname: str
    fsize: int
    feed_id: FeedId
    plugin_inst_id: PluginInstanceId
    file_resource: str
    plugin_inst: str


# -- pipelines and workflows (reference §1.3, §6) ----------------------------------

PipelineId = NewType("PipelineId", int)
PipingId = NewType("PipingId", int)
WorkflowId = NewType("WorkflowId", int)


class Pipeline(_Wire):
    url: str
    id: PipelineId
    name: str
    locked: bool
    authors: str
    category: str
    description: str
    owner_username: str
    creation_date: datetime
    modification_date: datetime
    plugins: str
    plugin_pipings: str
    default_parameters: str
    workflows: str
    json_repr: str


class PipelineExport(_Wire):
    """A pipeline as ``pipelines/<id>/json/`` gives it (``plugin_tree`` a JSON string)."""

    url: str = ""
    name: str
    locked: bool
    authors: str
    category: str
    description: str
    plugin_tree: str


class PluginPiping(_Wire):
    """One node of a pipeline."""

    url: str
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
    previous: str | None
    plugin: str
    pipeline: str


class PipingDefaultParameter(_Wire):
    """The default a pipeline node gives one plugin parameter."""

    url: str
    id: int
    value: Any
    type: str  # API names: string, integer, float, boolean, path, unextpath
    plugin_piping_id: PipingId
    plugin_piping_title: str
    param_name: str
    param_id: ParameterId
    plugin_name: str
    plugin_version: str
    plugin_piping: str
    plugin_param: str


class Workflow(_Wire):
    url: str
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
    pipeline: str
    plugin_instances: str


class PipelineSourceFile(_Wire):
    url: str
    id: int
    creation_date: datetime
    fname: str
    fsize: int
    type: str
    owner_username: str
    pipeline_id: PipelineId
    pipeline_name: str
    file_resource: str
    pipeline: str
