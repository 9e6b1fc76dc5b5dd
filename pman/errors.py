"""pman's exception tree.

Every error pman raises, in the server and in :mod:`pman.client`, derives from
:class:`PmanError`, which carries the HTTP ``status`` and the short ``code``
that the error body ``{"message": ..., "code": ...}`` uses on the wire::

    PmanError (500, "error")
    ├── Unauthorized (401, "unauthorized")
    ├── JobNotFound (404, "job_not_found")
    ├── JobConflict (409, "job_conflict")
    ├── InvalidJob (422, "invalid_job")
    │   └── BadRequest (400, "bad_request")
    ├── BackendError (502, "backend_error")
    └── PmanUnavailable (503, "unavailable")

Backend libraries' errors (docker, OSError) are translated into these at the
adapter edge; the client maps error bodies (by ``code`` first, then by status)
and transport failures back into them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final


class PmanError(Exception):
    """Root of pman's errors.

    Args:
        message: a human-readable explanation (sent as ``message``).
        status: overrides the class's HTTP status (the client uses it for
            statuses it has no class for).
    """

    status: int = 500
    code: str = "error"

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        self.message = message or self.__class__.__name__
        if status is not None:
            self.status = status
        super().__init__(self.message)


class Unauthorized(PmanError):
    """The request lacks the API token pman was configured with."""

    status = 401
    code = "unauthorized"


class JobNotFound(PmanError):
    """No job with this id is known to the backend."""

    status = 404
    code = "job_not_found"


class JobConflict(PmanError):
    """A job with this id exists already."""

    status = 409
    code = "job_conflict"


class InvalidJob(PmanError):
    """The job spec is invalid or the backend refuses it (limits, image, executable)."""

    status = 422
    code = "invalid_job"


class BadRequest(InvalidJob):
    """The request itself is malformed (not JSON, bad query parameter)."""

    status = 400
    code = "bad_request"


class BackendError(PmanError):
    """The compute backend (container engine, host OS) failed."""

    status = 502
    code = "backend_error"


class PmanUnavailable(PmanError):
    """pman cannot be reached (connection refused, timeout); raised by the client."""

    status = 503
    code = "unavailable"


#: Error classes by wire ``code``; the client uses it to rebuild exceptions.
ERRORS_BY_CODE: Final[Mapping[str, type[PmanError]]] = MappingProxyType(
    {
        cls.code: cls
        for cls in (
            PmanError,
            Unauthorized,
            JobNotFound,
            JobConflict,
            InvalidJob,
            BadRequest,
            BackendError,
            PmanUnavailable,
        )
    }
)

#: Error classes by HTTP status, used when a body carries no known code.
ERRORS_BY_STATUS: Final[Mapping[int, type[PmanError]]] = MappingProxyType(
    {
        400: BadRequest,
        401: Unauthorized,
        404: JobNotFound,
        409: JobConflict,
        422: InvalidJob,
        502: BackendError,
        503: PmanUnavailable,
        504: PmanUnavailable,
    }
)
