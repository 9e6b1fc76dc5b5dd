"""pfcon's wire schema: everything that crosses pfcon's HTTP API (v5 ``/jobs/``).

CUBE imports this module and :mod:`pfcon.client`. The compute status and the
compute dict are pman's (:class:`JobStatus`, :class:`JobInfo`), passed through
unchanged, so they are re-exported here. Field names follow the ChRIS pfcon
v5 API (``reference/chris.md`` §3.1, §3.2).
"""

from __future__ import annotations

from enum import StrEnum

from chris_sdk.descriptor import PluginType
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pman.schema import JID_PATTERN, JobId, JobInfo, JobStatus

__all__ = [
    "JID_PATTERN",
    "AuthToken",
    "Credentials",
    "ErrorBody",
    "Health",
    "InNetworkDirs",
    "JobData",
    "JobDescriptor",
    "JobId",
    "JobInfo",
    "JobState",
    "JobStatus",
    "JobSubmitted",
    "OutputListing",
    "PfconServerInfo",
    "PluginType",
    "StorageEnv",
]

#: The multipart field that carries the input zip (zip mode).
DATA_FILE_FIELD = "data_file"

#: The multipart fields that carry a job's storage paths (in-network mode).
INPUT_DIRS_FIELD = "input_dirs"
OUTPUT_DIR_FIELD = "output_dir"
INNETWORK_FIELDS = frozenset({INPUT_DIRS_FIELD, OUTPUT_DIR_FIELD})

#: Multipart fields that may repeat (all others must appear at most once).
LIST_FIELDS = frozenset({"args", "args_path_flags", "entrypoint", "env", INPUT_DIRS_FIELD})

#: Longest accepted storage path (characters), as PATH_MAX.
MAX_STORAGE_PATH = 4096


class StorageEnv(StrEnum):
    """How job data reaches the site (reference §3.4).

    ``zipfile``: CUBE posts a zip and fetches a zip (not in-network).
    ``filesystem``: in-network; the site shares CUBE's POSIX storage and
    mounts job inputs and outputs in place. (ChRIS's ``fslink``, ``swift``
    and ``s3`` are not implemented.)
    """

    ZIPFILE = "zipfile"
    FILESYSTEM = "filesystem"


def check_storage_path(value: str) -> str:
    """Refuse a storage path that is not a plain relative path; return it unchanged.

    A storage path names a folder of the shared storage as CUBE does
    (``home/chris/feeds/feed_1/pl-dircopy_1/data``): ``/``-separated, no
    leading ``/``, no empty, ``.`` or ``..`` component, no backslash or NUL.
    Nothing is normalised: a path that would need it is refused, so what is
    checked is exactly what is used. Raises ValueError.
    """
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_STORAGE_PATH:
        raise ValueError(f"longer than {MAX_STORAGE_PATH} characters")
    if value.startswith("/"):
        raise ValueError(f"{value!r} is absolute; give a path relative to the storage root")
    if "\\" in value or "\x00" in value:
        raise ValueError(f"{value!r} contains a backslash or NUL")
    if any(part in ("", ".", "..") for part in value.split("/")):
        raise ValueError(f"{value!r} has an empty, '.' or '..' component")
    return value


class JobDescriptor(BaseModel):
    """What CUBE submits for a job: everything but the data (POST ``/api/v1/jobs/``).

    Sent as multipart form fields, list fields repeating their key. Limits:
    ``cpu_limit`` in millicores, ``memory_limit`` in MiB.
    """

    model_config = ConfigDict(extra="forbid")

    jid: str = Field(pattern=JID_PATTERN)
    args: list[str] = []
    args_path_flags: list[str] = []
    auid: str = Field(min_length=1)
    number_of_workers: int = Field(default=1, ge=1)
    cpu_limit: int = Field(default=1000, ge=1)
    memory_limit: int = Field(default=200, ge=1)
    gpu_limit: int = Field(default=0, ge=0)
    image: str = Field(min_length=1)
    entrypoint: list[str] = Field(min_length=1)
    type: PluginType
    env: list[str] = []

    @field_validator("env")
    @classmethod
    def _env_pairs(cls, v: list[str]) -> list[str]:
        for item in v:
            if "=" not in item or item.startswith("="):
                raise ValueError(f"env entries must be KEY=VALUE, got {item!r}")
        return v

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_words(cls, v: list[str]) -> list[str]:
        if any(not word for word in v):
            raise ValueError("entrypoint entries must not be empty")
        return v


class InNetworkDirs(BaseModel):
    """The storage paths of an in-network submission (``input_dirs``, ``output_dir``).

    Both are relative to the storage CUBE and the site share, as CUBE names
    them. ``input_dirs`` may be empty (an fs plugin without path parameters);
    several are merged, the first one's file winning a name clash.
    """

    model_config = ConfigDict(extra="forbid")

    input_dirs: list[str] = []
    output_dir: str

    @field_validator("input_dirs")
    @classmethod
    def _input_paths(cls, v: list[str]) -> list[str]:
        for item in v:
            check_storage_path(item)
        return v

    @field_validator("output_dir")
    @classmethod
    def _output_path(cls, v: str) -> str:
        return check_storage_path(v)


class OutputListing(BaseModel):
    """Reply to GET ``/api/v1/jobs/<jid>/file/?job_output_path=<p>`` (in-network).

    ``rel_file_paths`` are the job's output files, relative to
    ``job_output_path``: regular files only, ``/``-separated, sorted.
    """

    job_output_path: str
    rel_file_paths: list[str]


class JobData(BaseModel):
    """The ``data`` part of a submission reply: the job's input as the site holds it.

    ``path`` (the input dir given to pman) is relative to the site's storebase;
    ``timestamp`` is ISO 8601 UTC.
    """

    jid: str
    nfiles: int
    timestamp: str
    path: str


class JobSubmitted(BaseModel):
    """Reply to POST ``/api/v1/jobs/`` (201, or 200 for an idempotent retry)."""

    data: JobData
    compute: JobInfo


class JobState(BaseModel):
    """Reply to GET ``/api/v1/jobs/<jid>/``."""

    compute: JobInfo


class PfconServerInfo(BaseModel):
    """Reply to GET ``/api/v1/jobs/``."""

    server_version: str
    pfcon_innetwork: bool
    storage_env: str
    container_env: str
    compute_volume_type: str


class Credentials(BaseModel):
    """Body of POST ``/api/v1/auth-token/`` (JSON or form)."""

    pfcon_user: str
    pfcon_password: str


class AuthToken(BaseModel):
    """Reply to POST ``/api/v1/auth-token/``: an HS256 JWT."""

    token: str


class Health(BaseModel):
    """Reply to GET ``/api/v1/health/``."""

    health: str = "OK"


class ErrorBody(BaseModel):
    """Every pfcon error response: ``{"message": ..., "code": ...}``."""

    message: str
    code: str = "error"
