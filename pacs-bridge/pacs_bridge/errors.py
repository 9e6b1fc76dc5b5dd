"""The PACS bridge's exception tree.

Every error the bridge raises derives from one root; pynetdicom's and
aiohttp's failures are translated where the bridge calls them
(:mod:`pacs_bridge.scu`, :mod:`pacs_bridge.registrar`). ``status`` is the HTTP
status the REST API answers with::

    PacsBridgeError (500, "error")
     ├── InvalidRequest (400, "invalid")        bad query, service or route
     ├── NotFound (404, "not_found")            unknown PACS service or retrieve
     ├── StorageFull (507, "storage_full")      free space below the reserve
     ├── InvalidDicom (422, "invalid_dicom")    unparseable or incomplete dataset
     ├── RegistrationError (502, "registration") CUBE refused a registration
     │    └── RegistrationUnavailable (503, "unavailable")  CUBE unreachable; retry
     ├── RoutingError (502, "routing")          CUBE refused a routed feed or workflow
     │    └── RoutingUnavailable (503, "unavailable")  CUBE unreachable; retry
     ├── DicomNetworkError (502, "dicom")       a PACS refused, aborted or was unreachable
     ├── StateError (500, "state")              the state database cannot be read or written
     └── BridgeUnreachable (503, "unreachable") (client side) the bridge's API cannot be reached

The REST client (:mod:`pacs_bridge.client`) maps an error answer back to the
class of its ``code``.
"""

from __future__ import annotations


class PacsBridgeError(Exception):
    """Root of the bridge's exceptions; ``status`` is the HTTP status to answer with."""

    status: int = 500
    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidRequest(PacsBridgeError):
    """A bad query, PACS service definition or route."""

    status = 400
    code = "invalid"


class NotFound(PacsBridgeError):
    """An unknown PACS service or retrieve."""

    status = 404
    code = "not_found"


class StorageFull(PacsBridgeError):
    """Storing would take free space below the configured reserve."""

    status = 507
    code = "storage_full"


class InvalidDicom(PacsBridgeError):
    """A dataset that cannot be parsed or lacks an attribute the bridge needs."""

    status = 422
    code = "invalid_dicom"


class RegistrationError(PacsBridgeError):
    """CUBE (or the registry file) refused a series registration; retrying will not help."""

    status = 502
    code = "registration"


class RegistrationUnavailable(RegistrationError):
    """CUBE could not be reached or answered 5xx; the registration may be retried."""

    status = 503
    code = "unavailable"


class RoutingError(PacsBridgeError):
    """A routing rule could not be carried out: no such pipeline or plugin, or CUBE refused."""

    status = 502
    code = "routing"


class RoutingUnavailable(RoutingError):
    """CUBE could not be reached or answered 5xx while routing; retrying may succeed."""

    status = 503
    code = "unavailable"


class DicomNetworkError(PacsBridgeError):
    """A DIMSE peer refused the association, aborted, timed out or answered a failure."""

    status = 502
    code = "dicom"


class StateError(PacsBridgeError):
    """The state database (:mod:`pacs_bridge.state`) cannot be opened, read or written."""

    status = 500
    code = "state"


class BridgeUnreachable(PacsBridgeError):
    """The bridge's REST API cannot be reached or did not answer as the API does (client side)."""

    status = 503
    code = "unreachable"
