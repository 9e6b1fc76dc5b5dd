"""The bridge's configuration: one pydantic-settings object, environment prefix ``PACS_BRIDGE_``.

Example: ``PACS_BRIDGE_STORAGE_ROOT=/srv/chris/storage PACS_BRIDGE_CALLING_AETS='["ORTHANC"]'
PACS_BRIDGE_CUBE_URL=http://cube:8000/api/v1/ pacs-bridge serve``.

The bridge writes received files into CUBE's storage root (the tree CUBE
serves files from) under ``SERVICES/PACS/<pacs>/...``, then registers them.
Without ``cube_url`` registrations go to a JSON-lines registry file instead.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The largest AE title DICOM allows (PS3.5 VR AE: 16 characters).
MAX_AE_LENGTH = 16


def check_ae_title(value: str) -> str:
    """An AE title stripped of spaces; raises ``ValueError`` if empty, too long or not ASCII."""
    title = value.strip()
    if not title or len(title) > MAX_AE_LENGTH or not title.isascii() or "\\" in title:
        raise ValueError(f"AE title {value!r}: 1 to 16 ASCII characters, no backslash")
    return title


class Route(BaseModel):
    """What to do with data from one calling AE title (``*``: any).

    The first route whose ``calling_aet`` matches applies; data that matches no
    route is stored as received.
    """

    calling_aet: str = "*"
    #: Apply the PS3.15 Annex E basic profile (:mod:`pacs_bridge.deid`) before storing.
    deidentify: bool = False
    #: The PACS name files are stored and registered under (default: the calling AE title).
    pacs_name: str | None = None


#: The DICOM fields a feed title template may name (those of ``SeriesMeta``), plus ``pacs``.
TITLE_FIELDS = frozenset(
    {
        "pacs",
        "calling_aet",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyDescription",
        "AccessionNumber",
        "SeriesInstanceUID",
        "SeriesDescription",
        "Modality",
        "ProtocolName",
    }
)


class RoutingRule(BaseModel):
    """Run a pipeline on each registered series that matches (see :mod:`pacs_bridge.routing`).

    A series matches when every criterion does: ``calling_aet`` is the sender's
    AE title or ``*``; ``modality`` equals the series' Modality (case-insensitive)
    or is ``*``; ``series_description`` is a regular expression searched
    (``re.search``: anchor it with ``^...$`` for a whole match) in the
    SeriesDescription. The bridge then makes a feed of the series (pl-dircopy
    on its folder) titled from ``feed_title`` (``str.format`` fields: the
    DICOM keywords of the series, ``pacs`` and ``calling_aet``), and starts
    the pipeline named ``pipeline`` on it as a workflow.
    """

    model_config = {"extra": "forbid"}

    calling_aet: str = "*"
    modality: str = "*"
    series_description: str = ""
    pipeline: str = Field(min_length=1)
    feed_title: str = "{PatientID} {StudyDescription} {SeriesDescription}"

    @field_validator("series_description")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(
                f"series_description {value!r} is not a regular expression: {exc}"
            ) from exc
        return value

    @field_validator("feed_title")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            names = {f for _, f, _spec, _conv in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"feed_title {value!r} is not a format string: {exc}") from exc
        unknown = names - TITLE_FIELDS
        if unknown:
            raise ValueError(
                f"feed_title {value!r} names {sorted(unknown)}; known: {sorted(TITLE_FIELDS)}"
            )
        return value

    @model_validator(mode="after")
    def _aet(self) -> RoutingRule:
        if self.calling_aet != "*":
            self.calling_aet = check_ae_title(self.calling_aet)
        self.modality = self.modality.strip() or "*"
        return self

    def matches(self, calling_aet: str, modality: str, series_description: str) -> bool:
        """Whether a series from ``calling_aet`` with these attributes matches the rule."""
        return (
            self.calling_aet in ("*", calling_aet)
            and (self.modality == "*" or self.modality.upper() == modality.strip().upper())
            and re.search(self.series_description, series_description) is not None
        )


class BridgeSettings(BaseSettings):
    """Settings of one bridge (receiver, query/retrieve and REST API).

    Durations are in seconds, sizes in bytes.
    """

    model_config = SettingsConfigDict(env_prefix="PACS_BRIDGE_", extra="ignore")

    #: Our AE title, as the receiver's called AE and as calling AE of our queries.
    ae_title: str = "CHRIS"
    #: Where the C-STORE SCP listens.
    dicom_host: str = "0.0.0.0"
    dicom_port: int = Field(default=11111, ge=0, le=65535)
    #: Calling AE titles allowed to associate with the receiver (``accept_any_aet`` lifts it).
    calling_aets: list[str] = Field(default_factory=list)
    accept_any_aet: bool = False
    #: Concurrent associations the receiver accepts (pynetdicom's default is 10).
    max_associations: int = Field(default=32, ge=1, le=1000)
    #: A series is complete this long after the last association that sent to it ended
    #: (a series split over associations closer than this is registered once; one
    #: arriving later is registered in parts, which CUBE and the registry merge).
    quiet_seconds: float = Field(default=0.25, ge=0)
    #: Free space the receiver keeps on the storage volume: a C-STORE that would
    #: take free space below it is refused with 0xA700 (out of resources).
    reserve_bytes: int = Field(default=1024**3, ge=0)
    #: pynetdicom's own logging of every DIMSE message and negotiation (to debug a
    #: peer; it costs time per instance, so off by default: the receiver logs each
    #: association and rejection itself).
    dicom_trace: bool = False
    #: fsync each received file before answering success (Orthanc's SyncStorageArea does too).
    fsync: bool = True
    #: CUBE's storage root; files land under ``SERVICES/PACS/<pacs>/...``.
    storage_root: Path = Path(".chris/cube/storage")
    #: The JSON-lines registry used when ``cube_url`` is not set.
    registry_file: Path | None = None
    #: CUBE's API root (``http://host:8000/api/v1/``); None: register into ``registry_file``.
    cube_url: str | None = None
    cube_username: str | None = None
    cube_password: SecretStr | None = None
    cube_token: SecretStr | None = None
    #: Attempts per registration while CUBE is unreachable, with doubling delays.
    register_attempts: int = Field(default=5, ge=1)
    register_retry_seconds: float = Field(default=1.0, ge=0)
    #: Routes by calling AE title (JSON list of :class:`Route`).
    routes: list[Route] = Field(default_factory=list)
    #: Routing rules: pipelines to run on matching series (JSON list of :class:`RoutingRule`;
    #: the first matching rule applies; they need ``cube_url``).
    rules: list[RoutingRule] = Field(default_factory=list)
    #: Key of the deterministic UID and pseudonym remapping of de-identification.
    deid_secret: SecretStr = SecretStr("pacs-bridge-default-deid-secret")
    #: The REST API.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=4005, ge=0, le=65535)
    #: The JSON file of registered PACS services (query/retrieve peers).
    services_file: Path | None = None
    #: The SQLite file of retrieve history and the routing record (:mod:`pacs_bridge.state`;
    #: default ``state.sqlite3`` beside the services file).
    state_file: Path | None = None
    #: Ended retrieves, and routed series, the state file keeps (the oldest go first).
    keep_history: int = Field(default=1000, ge=1)
    #: DIMSE timeout of our queries and retrieves (None: wait for ever).
    dimse_timeout: float | None = 120.0

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("calling_aets")
    @classmethod
    def _aets(cls, value: list[str]) -> list[str]:
        return [check_ae_title(v) for v in value]

    @model_validator(mode="after")
    def _rules_need_cube(self) -> BridgeSettings:
        if self.rules and not self.cube_url:
            raise ValueError(
                "routing rules (PACS_BRIDGE_RULES) need CUBE: set PACS_BRIDGE_CUBE_URL"
            )
        return self

    def rule_for(
        self, calling_aet: str, modality: str, series_description: str
    ) -> RoutingRule | None:
        """The first routing rule a series matches (None: no feed is made)."""
        for rule in self.rules:
            if rule.matches(calling_aet, modality, series_description):
                return rule
        return None

    def resolved_registry_file(self) -> Path:
        """The registry file; default ``<storage_root>/../pacs-bridge/registrations.jsonl``."""
        return (
            self.registry_file or self.storage_root.parent / "pacs-bridge" / "registrations.jsonl"
        )

    def resolved_services_file(self) -> Path:
        """The services file, defaulting to ``<storage_root>/../pacs-bridge/services.json``."""
        return self.services_file or self.storage_root.parent / "pacs-bridge" / "services.json"

    def resolved_state_file(self) -> Path:
        """The state database, defaulting to ``state.sqlite3`` beside the services file."""
        return self.state_file or self.resolved_services_file().parent / "state.sqlite3"

    def route_for(self, calling_aet: str) -> Route:
        """The first route matching ``calling_aet`` (a default route when none does)."""
        for route in self.routes:
            if route.calling_aet in ("*", calling_aet):
                return route
        return Route()
