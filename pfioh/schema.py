"""pfioh's wire schema.

pfioh stores each job's data under ``<storebase>/key-<jid>/`` with
``incoming/`` (unpacked input) and ``outgoing/`` (plugin output). The archive
format on the wire is a plain zip (see :mod:`pfioh.archive`).
"""

from __future__ import annotations

from typing import NewType

from pydantic import BaseModel

#: The key a job's data is stored under (the job id given by pfcon).
#: pfioh imports no other service, so it keeps its own name for it.
JobKey = NewType("JobKey", str)

#: Keys become directory names; this keeps them to one safe path component.
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class IncomingReport(BaseModel):
    """Reply to a successful input upload."""

    jid: JobKey
    nfiles: int
    nbytes: int
    path: str  # relative to the storebase, e.g. "key-chris-jid-3/incoming"
    outgoing: str  # relative path of the (created, empty) outgoing dir
    #: Whether the upload carried a SHA-256 manifest, which matched.
    verified: bool = False


class ServerInfo(BaseModel):
    server_version: str
    storebase: str


class ErrorBody(BaseModel):
    """Every pfioh error response."""

    message: str
    code: str = "error"


class JobDataStatus(BaseModel):
    """What pfioh holds for a job (``GET /api/v1/jobs/<jid>/``).

    ``incoming`` tells whether the input was unpacked; ``outgoing_files``
    counts the regular files under ``outgoing/`` (recursively).
    """

    jid: JobKey
    incoming: bool
    outgoing_files: int


class Health(BaseModel):
    """Reply of ``GET /api/v1/health/``."""

    health: str = "OK"
