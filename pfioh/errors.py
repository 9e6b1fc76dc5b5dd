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
    └── pfioh.archive.ArchiveError (400, "archive_error")
        ├── pfioh.archive.UnsafeArchive (422, "unsafe_archive")
        └── pfioh.archive.CorruptArchive (400, "corrupt_archive")

The archive errors live in :mod:`pfioh.archive` because that module is the
zip wire format other services import on its own.
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
