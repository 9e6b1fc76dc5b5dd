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
    "JobData",
    "JobDescriptor",
    "JobId",
    "JobInfo",
    "JobState",
    "JobStatus",
    "JobSubmitted",
    "PfconServerInfo",
    "PluginType",
    "StorageEnv",
]

#: The multipart field that carries the input zip (zip mode).
DATA_FILE_FIELD = "data_file"

#: Multipart fields that may repeat (all others must appear at most once).
LIST_FIELDS = frozenset({"args", "args_path_flags", "entrypoint", "env"})


class StorageEnv(StrEnum):
    """Where job data lives; only ``zipfile`` (not in-network) is implemented."""

    ZIPFILE = "zipfile"


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


class JobData(BaseModel):
    """The ``data`` part of a submission reply: what pfioh stored.

    ``path`` is relative to the site's storebase; ``timestamp`` is ISO 8601 UTC.
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
