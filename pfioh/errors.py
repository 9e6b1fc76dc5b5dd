"""pfioh's exception tree.

Every error pfioh raises (server side) or translates (client side) derives
from :class:`PfiohError`, which carries the HTTP ``status`` and the short
``code`` of pfioh's error body ``{"message": ..., "code": ...}``::

    PfiohError (500, "error")
    ├── BadRequest (400, "bad_request")
    │   ├── InvalidKey (400, "invalid_key")
    │   └── IncompleteUpload (400, "incomplete_upload")
    ├── Unauthorized (401, "unauthorized")
    ├── JobNotFound (404, "not_found")
    ├── Conflict (409, "conflict")
    ├── PayloadTooLarge (413, "payload_too_large")
    ├── UnsupportedMediaType (415, "unsupported_media_type")
    ├── StorageError (500, "storage_error")
    ├── UnexpectedResponse (502, "unexpected_response")
    ├── PfiohUnavailable (503, "unavailable")
    ├── InsufficientStorage (507, "insufficient_storage")
    └── ArchiveError (400, "archive_error")
        ├── UnsafeArchive (422, "unsafe_archive")
        └── CorruptArchive (400, "corrupt_archive")
            └── IntegrityError (400, "integrity_error")

The archive errors are re-exported by :mod:`pfioh.archive` and
:mod:`pfioh.unzip`, the zip wire format other services import on its own.
"""

from __future__ import annotations

from typing import ClassVar


class PfiohError(Exception):
    """Root of pfioh's exceptions: an HTTP ``status``, a ``code`` and a message."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(PfiohError):
    """The request is malformed."""

    status = 400
    code = "bad_request"


class InvalidKey(BadRequest):
    """The job key (jid) does not match :data:`pfioh.schema.KEY_PATTERN`."""

    code = "invalid_key"


class IncompleteUpload(BadRequest):
    """The request body ended (or the connection broke) before it was complete."""

    code = "incomplete_upload"


class Unauthorized(PfiohError):
    """No, or a wrong, bearer token was given."""

    status = 401
    code = "unauthorized"


class JobNotFound(PfiohError):
    """pfioh holds no data for this job."""

    status = 404
    code = "not_found"


class Conflict(PfiohError):
    """The job's input has already been uploaded."""

    status = 409
    code = "conflict"


class PayloadTooLarge(PfiohError):
    """The request body is larger than the server accepts."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(PfiohError):
    """The request body is not declared as a zip archive."""

    status = 415
    code = "unsupported_media_type"


class StorageError(PfiohError):
    """The server's filesystem failed (disk full, permissions, ...)."""

    status = 500
    code = "storage_error"


class UnexpectedResponse(PfiohError):
    """(Client side) pfioh answered with a status or body the client does not know."""

    status = 502
    code = "unexpected_response"


class PfiohUnavailable(PfiohError):
    """(Client side) pfioh could not be reached, timed out, or broke the connection."""

    status = 503
    code = "unavailable"


class InsufficientStorage(PfiohError):
    """The destination filesystem has too little free space for the data."""

    status = 507
    code = "insufficient_storage"


class ArchiveError(PfiohError):
    """An archive was refused; ``entry`` names the offending member, if one."""

    status = 400
    code = "archive_error"

    def __init__(self, message: str, *, entry: str | None = None) -> None:
        super().__init__(message)
        self.entry = entry


class UnsafeArchive(ArchiveError):
    """A member would escape the destination, is not a plain file or directory,
    or the archive exceeds a size, ratio or member-count limit."""

    status = 422
    code = "unsafe_archive"


class CorruptArchive(ArchiveError):
    """The data is not a zip archive, or a member is damaged (bad CRC, truncated)."""

    status = 400
    code = "corrupt_archive"


class IntegrityError(CorruptArchive):
    """What arrived differs from what the sender's SHA-256 manifest lists."""

    code = "integrity_error"
