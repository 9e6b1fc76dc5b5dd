"""CUBE's exception tree; one middleware renders it in the ChRIS (DRF) error shape.

::

    CubeError (500)
     ├── BadRequest (400)            {"detail": ...} or field errors {"field": ["msg"]}
     ├── NotAuthenticated (401)
     ├── PermissionDenied (403)
     ├── NotFound (404)
     ├── Conflict (409)
     ├── PayloadTooLarge (413)
     └── ComputeError (502)          a compute site failed permanently
"""

from __future__ import annotations


class CubeError(Exception):
    """Root of CUBE's errors; ``status`` is the HTTP status it maps to."""

    status = 500
    code = "error"

    def __init__(self, detail: str, *, fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields or {}

    def body(self) -> dict[str, object]:
        """The JSON body: field errors when present (DRF style), else ``detail``."""
        if self.fields:
            return dict(self.fields)
        return {"detail": self.detail}


class BadRequest(CubeError):
    status = 400
    code = "invalid"

    @classmethod
    def field(cls, name: str, message: str) -> BadRequest:
        """A validation error on one field."""
        return cls(f"{name}: {message}", fields={name: [message]})


class NotAuthenticated(CubeError):
    status = 401
    code = "not_authenticated"


class PermissionDenied(CubeError):
    status = 403
    code = "permission_denied"


class NotFound(CubeError):
    status = 404
    code = "not_found"


class Conflict(CubeError):
    status = 409
    code = "conflict"


class PayloadTooLarge(CubeError):
    status = 413
    code = "too_large"


class ComputeError(CubeError):
    status = 502
    code = "compute_error"
