"""Every model on the bridge's wires: CUBE's bulk PACS registration, the registry
file, PACS services, queries and retrieves of the REST API.

Field names of DICOM metadata are the DICOM keywords (as CUBE's ``pacsfiles``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import NewType

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pacs_bridge.settings import check_ae_title

#: A path relative to CUBE's storage root, ``SERVICES/PACS/<pacs>/...``.
StoragePath = NewType("StoragePath", str)
#: A DICOM UID (``1.2.840...``).
Uid = NewType("Uid", str)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SeriesMeta(_Wire):
    """The DICOM metadata a series is registered with (one value per series)."""

    PatientID: str = ""
    PatientName: str = ""
    PatientBirthDate: str = ""
    PatientSex: str = ""
    StudyInstanceUID: str
    StudyDate: str = ""
    StudyDescription: str = ""
    AccessionNumber: str = ""
    SeriesInstanceUID: str
    SeriesDescription: str = ""
    Modality: str = ""
    ProtocolName: str = ""


class PacsFileIn(SeriesMeta):
    """One file of CUBE's bulk registration (``POST /api/v1/pacs/files/``)."""

    path: StoragePath


class PacsFilesIn(_Wire):
    """The body of CUBE's bulk registration: stored files of one PACS."""

    pacs_name: str
    files: list[PacsFileIn]


class AuthToken(_Wire):
    """CUBE's answer to ``POST auth-token/`` (a username and password for the user's token)."""

    token: str


class PacsFilesRegistered(_Wire):
    """CUBE's answer to a bulk registration."""

    registered: int
    series: int


class SeriesRegistration(_Wire):
    """One registration of (part of) a complete series, as the registry file stores it."""

    pacs_identifier: str
    meta: SeriesMeta
    files: list[StoragePath]
    registered_at: datetime
    #: Seconds from the end of the last association to the registration.
    delay_seconds: float = 0.0


class PacsService(_Wire):
    """A PACS the bridge queries and retrieves from."""

    name: str = Field(min_length=1, max_length=20, pattern=r"^[A-Za-z0-9._-]+$")
    aet: str
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    #: Our calling AE title towards this PACS (default: the bridge's AE title).
    our_aet: str | None = None
    #: Retrieve with C-GET instead of C-MOVE (for PACS that cannot reach us).
    prefer_get: bool = False

    @field_validator("aet", "our_aet")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value)


class QueryLevel(StrEnum):
    """C-FIND query/retrieve levels (PS3.4 C.6)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"


class QueryIn(_Wire):
    """A C-FIND: the level and DICOM keyword → value matches (empty value: return it)."""

    level: QueryLevel = QueryLevel.STUDY
    query: dict[str, str] = Field(default_factory=dict)


class RetrieveMethod(StrEnum):
    """How a retrieve moves data: C-MOVE to our receiver or C-GET on the association."""

    MOVE = "C-MOVE"
    GET = "C-GET"


class RetrieveState(StrEnum):
    """Life cycle of a retrieve."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class RetrieveIn(_Wire):
    """A retrieve: a study, or one series of it."""

    StudyInstanceUID: str = Field(min_length=1)
    SeriesInstanceUID: str | None = None
    method: RetrieveMethod | None = None


class RetrieveStatus(_Wire):
    """Progress of a retrieve, from the C-MOVE/C-GET pending responses.

    Counts are sub-operations (instances); ``remaining`` is None until the PACS
    has said how many are left. The bridge keeps ended retrieves in its state
    database (:mod:`pacs_bridge.state`), so they outlive a restart.
    """

    id: int
    service: str
    method: RetrieveMethod
    StudyInstanceUID: str = ""
    SeriesInstanceUID: str | None = None
    state: RetrieveState = RetrieveState.RUNNING
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int | None = None
    error: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def total(self) -> int | None:
        """Sub-operations in all (None while the PACS has not said)."""
        if self.remaining is None:
            return None
        return self.completed + self.failed + self.warning + self.remaining


class RetrieveEvent(_Wire):
    """One server-sent event of ``/api/v1/retrieves/{id}/events/``.

    On the wire: ``event: <state>`` and ``data: <RetrieveStatus as JSON>``;
    the last event of a stream is the one whose state is not ``running``.
    """

    event: RetrieveState
    status: RetrieveStatus


class QueryOut(_Wire):
    """A C-FIND's answer: one mapping of DICOM keyword → value per match."""

    level: QueryLevel
    results: list[dict[str, str]]


class ExportIn(_Wire):
    """An export: stored files (paths relative to the storage root) to C-STORE.

    ``study_from`` names a stored file of the original study whose patient and
    study identifiers the exported instances take.
    """

    files: list[str] = Field(min_length=1)
    study_from: str | None = None


class ExportOut(_Wire):
    """What an export sent: SOPInstanceUIDs stored, and failures by file."""

    stored: list[str]
    failed: dict[str, str]


class RouteState(StrEnum):
    """Where the routing of one series stands."""

    RUNNING = "running"
    STARTED = "started"
    FAILED = "failed"


class RoutedSeries(_Wire):
    """The routing of one series (:mod:`pacs_bridge.routing`), as the status shows it."""

    pacs: str
    calling_aet: str
    series: str
    folder: str
    pipeline: str
    title: str
    state: RouteState = RouteState.RUNNING
    feed_id: int | None = None
    instance_id: int | None = None
    workflow_id: int | None = None
    error: str = ""
    at: datetime


class RoutingStatus(_Wire):
    """The routing rules' record: how many series were routed, the latest, the failures."""

    rules: int = 0
    series_routed: int = 0
    routed: list[RoutedSeries] = Field(default_factory=list)
    failures: list[RoutedSeries] = Field(default_factory=list)


class RegistrationFailure(_Wire):
    """A series (part) whose registration was given up on."""

    series: str
    files: int
    error: str


class BridgeStatus(_Wire):
    """``GET /api/v1/status/``: the receiver's counts, registrations and routing."""

    ae_title: str
    dicom_port: int
    #: Receiver counts by outcome (``received``, ``duplicate``, ``rejected``, ...).
    instances: dict[str, int]
    series_pending: int
    series_registered: int
    files_registered: int
    registration_failures: list[RegistrationFailure]
    routing: RoutingStatus
