"""pfcon's exception tree.

Every error pfcon raises, on the server and in :mod:`pfcon.client`, derives
from one root. Each class carries an HTTP ``status`` and a short ``code``; the
server's error middleware renders them as ``{"message": ..., "code": ...}``
and the client maps such bodies back (by ``code``, then by status)::

    PfconError (500, "error")
     ├── AuthError (401, "unauthorized")       bad credentials (400 on login) or token
     ├── JobNotFound (404, "not_found")
     ├── InvalidJob (400, "invalid")           bad form field or archive (also 413, 422)
     ├── JobConflict (409, "conflict")
     ├── StorageError (500, "storage")          the shared storage failed (in-network)
     └── PfconUnavailable (503, "unavailable") pfcon, pfioh or pman unreachable; retry
          └── UpstreamError (502, "bad_gateway") pfioh or pman misbehaved

Errors of pfioh and pman are translated into this tree where pfcon calls them
(:mod:`pfcon.coordinator`); their status and message are preserved, so a pman
422 stays a 422. ``status`` may therefore be overridden per instance.
``OSError`` of the shared storage (in-network mode) becomes
:class:`StorageError` in :mod:`pfcon.innetwork`.
"""

from __future__ import annotations


class PfconError(Exception):
    """Root of pfcon's exceptions.

    ``status`` (HTTP status) and ``code`` default to the class attributes; an
    instance may override them, e.g. to pass an upstream 422 through.
    """

    status: int = 500
    code: str = "error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            # an instance attribute shadows the class default
            self.status = status

    def __str__(self) -> str:
        return self.message


class AuthError(PfconError):
    """Missing, invalid or expired token (401), or bad credentials on login (400)."""

    status = 401
    code = "unauthorized"


class JobNotFound(PfconError):
    """No such job at this site."""

    status = 404
    code = "not_found"


class InvalidJob(PfconError):
    """The submitted job or its data is malformed (400; 413 or 422 from upstream)."""

    status = 400
    code = "invalid"


class JobConflict(PfconError):
    """The job already exists in a state that differs from the request."""

    status = 409
    code = "conflict"


class StorageError(PfconError):
    """The storage shared with CUBE could not be read or changed (in-network mode).

    A site fault (permissions, a full disk), or output that could not be made
    safe: CUBE must not register it.
    """

    status = 500
    code = "storage"


class PfconUnavailable(PfconError):
    """A service could not be reached or timed out: a temporary failure worth retrying."""

    status = 503
    code = "unavailable"


class UpstreamError(PfconUnavailable):
    """pfioh or pman answered with an unexpected error (502).

    A subclass of :class:`PfconUnavailable` because, to the caller, a bad
    gateway is as temporary as an unreachable one.
    """

    status = 502
    code = "bad_gateway"


class SiteStorageFull(PfconError):
    """The site has too little free space for the job's data (pfioh's 507).

    Temporary: a sender should retry later, when jobs have been cleaned up.
    """

    status = 507
    code = "insufficient_storage"


#: Error codes as they appear on the wire, for the client's mapping.
ERRORS_BY_CODE: dict[str, type[PfconError]] = {
    cls.code: cls
    for cls in (
        PfconError,
        AuthError,
        JobNotFound,
        InvalidJob,
        JobConflict,
        StorageError,
        UpstreamError,
        PfconUnavailable,
        SiteStorageFull,
    )
}


def error_for_status(status: int) -> type[PfconError]:
    """The exception class a bare HTTP ``status`` maps to (used when no code matched)."""
    if status == 401:
        return AuthError
    if status == 404:
        return JobNotFound
    if status == 409:
        return JobConflict
    if status == 502:
        return UpstreamError
    if status in (503, 504):
        return PfconUnavailable
    if status == 507:
        return SiteStorageFull
    if 400 <= status < 500:
        return InvalidJob
    return PfconError
