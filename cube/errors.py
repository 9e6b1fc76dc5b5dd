"""CUBE's exception tree; one middleware renders it in the ChRIS (DRF) error shape.

::

    CubeError (500)
     ├── BadRequest (400)            {"detail": ...} or field errors {"field": ["msg"]}
     │    ├── InvalidImageReference  not a container image reference
     │    └── NotAPluginImage        the image carries no valid plugin descriptor label
     ├── NotAuthenticated (401)
     ├── PermissionDenied (403)
     ├── NotFound (404)
     ├── Conflict (409)
     ├── PayloadTooLarge (413)
     ├── ComputeError (502)          a compute site failed permanently
     │    ├── OutputMismatch         an in-network site's output is not in CUBE's storage
     │    └── TsInputMissing         a parent of a ts instance is gone (CODE05)
     └── RegistryError (502)         a container registry failed or answered nonsense
          ├── RegistryUnreachable (502)   connection refused, TLS failure, timeout
          ├── RegistryUnauthorized (403)  the registry refused CUBE's credentials
          └── ImageNotFound (404)         no such repository, tag or digest
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


class OutputMismatch(ComputeError):
    """An in-network site's output listing does not match CUBE's storage.

    ``error_code`` is the ChRIS code the instance ends with (``CODE16``: the
    listing is for another dir or names an unsafe path; ``CODE14``: listed
    files are missing from CUBE's storage).
    """

    code = "output_mismatch"

    def __init__(self, detail: str, *, error_code: str) -> None:
        super().__init__(detail)
        self.error_code = error_code


class TsInputMissing(ComputeError):
    """A parent instance whose output a ts instance joins no longer exists (ChRIS CODE05)."""

    code = "ts_input_missing"


class InvalidImageReference(BadRequest):
    """A string that is not a container image reference (``host[:port]/repo[:tag][@digest]``)."""

    code = "invalid_image"


class NotAPluginImage(BadRequest):
    """An image without a valid ChRIS descriptor in its ``org.chrisproject.descriptor`` label."""

    code = "not_a_plugin_image"


class RegistryError(CubeError):
    """A container registry failed or answered something CUBE cannot use."""

    status = 502
    code = "registry_error"


class RegistryUnreachable(RegistryError):
    """The registry could not be reached (connection, TLS or timeout)."""

    code = "registry_unreachable"


class RegistryUnauthorized(RegistryError):
    """The registry refused access: missing or wrong credentials, or no pull right.

    403, not 401: CUBE's own authentication of the caller succeeded; it is
    CUBE's credentials at the registry (``CUBE_REGISTRY_CREDENTIALS``) that failed.
    """

    status = 403
    code = "registry_unauthorized"


class ImageNotFound(RegistryError):
    """The registry has no such repository, tag or digest."""

    status = 404
    code = "image_not_found"
