"""pman's wire schema: everything that crosses pman's HTTP API.

pfcon imports this module and :mod:`pman.client`; nothing else of pman.
Field names follow the ChRIS pman API (``reference/chris.md`` §4).
"""

from __future__ import annotations

from enum import StrEnum
from typing import NewType

from chris_sdk.descriptor import PluginType
from pydantic import BaseModel, ConfigDict, Field, field_validator

#: A job id, e.g. ``chris-jid-42``. Also the container / process label value.
JobId = NewType("JobId", str)

JID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class JobStatus(StrEnum):
    """Compute status of a job, as pman and pfcon report it."""

    NOT_STARTED = "notStarted"
    STARTED = "started"
    FINISHED_SUCCESSFULLY = "finishedSuccessfully"
    FINISHED_WITH_ERROR = "finishedWithError"
    UNDEFINED = "undefined"

    @classmethod
    def _missing_(cls, value: object) -> JobStatus | None:
        # older pman/pfcon spell it "notstarted"; accept any case on input
        if isinstance(value, str):
            for member in cls:
                if member.value.lower() == value.lower():
                    return member
        return None

    @property
    def is_terminal(self) -> bool:
        """True for the statuses after which nothing more will happen."""
        return self in (JobStatus.FINISHED_SUCCESSFULLY, JobStatus.FINISHED_WITH_ERROR)


class JobSpec(BaseModel):
    """A request to run one plugin job (POST ``/api/v1/``).

    ``input_dir`` and ``output_dir`` are relative to the site's storebase
    (shared with pfioh), e.g. ``key-chris-jid-4/incoming``.
    Limits: ``cpu_limit`` in millicores, ``memory_limit`` in MiB.
    """

    model_config = ConfigDict(extra="forbid")

    jid: JobId = Field(pattern=JID_PATTERN)
    image: str = Field(min_length=1)
    entrypoint: list[str] = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    args_path_flags: list[str] = Field(default_factory=list)
    auid: str = "cube"
    type: PluginType
    cpu_limit: int = Field(default=1000, ge=1)
    memory_limit: int = Field(default=200, ge=1)
    gpu_limit: int = Field(default=0, ge=0)
    number_of_workers: int = Field(default=1, ge=1)
    env: list[str] = Field(default_factory=list)
    input_dir: str
    output_dir: str

    @field_validator("env")
    @classmethod
    def _env_pairs(cls, v: list[str]) -> list[str]:
        for item in v:
            if "=" not in item or item.startswith("="):
                raise ValueError(f"env entries must be KEY=VALUE, got {item!r}")
        return v

    @field_validator("input_dir", "output_dir")
    @classmethod
    def _relative(cls, v: str) -> str:
        parts = v.split("/")
        if v.startswith("/") or ".." in parts or not v:
            raise ValueError("must be a relative path under the storebase, without '..'")
        return v


class JobInfo(BaseModel):
    """What pman knows of a job (the reference's compute dict)."""

    jid: JobId
    image: str
    cmd: str
    status: JobStatus
    message: str = ""
    timestamp: str = ""
    logs: str = ""
    exit_code: int | None = None


class ServerInfo(BaseModel):
    """GET ``/api/v1/``."""

    server_version: str
    container_env: str
    storage_type: str = "host"


class Health(BaseModel):
    """GET ``/api/v1/health/``."""

    health: str = "OK"


class ErrorBody(BaseModel):
    """Every pman error response: ``{"message": ..., "code": ...}``."""

    message: str
    code: str = "error"


def build_command(spec: JobSpec, incoming: str, outgoing: str) -> list[str]:
    """The plugin's argv (reference §2.3): path-flag values become ``incoming``.

    ``cmd = entrypoint + localized args + [incoming if ds] + [outgoing]``.
    """
    args = list(spec.args)
    flags = set(spec.args_path_flags)
    for i, arg in enumerate(args[:-1]):
        if arg in flags:
            args[i + 1] = incoming
    cmd = [*spec.entrypoint, *args]
    if spec.type is PluginType.DS:
        cmd.append(incoming)
    cmd.append(outgoing)
    return cmd
