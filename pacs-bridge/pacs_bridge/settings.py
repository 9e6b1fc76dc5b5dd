"""The bridge's configuration: one pydantic-settings object, environment prefix ``PACS_BRIDGE_``.

Example: ``PACS_BRIDGE_STORAGE_ROOT=/srv/chris/storage PACS_BRIDGE_CALLING_AETS='["ORTHANC"]'
PACS_BRIDGE_CUBE_URL=http://cube:8000/api/v1/ pacs-bridge serve``.

The bridge writes received files into CUBE's storage root (the tree CUBE
serves files from) under ``SERVICES/PACS/<pacs>/...``, then registers them.
Without ``cube_url`` registrations go to a JSON-lines registry file instead.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator
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
    #: Key of the deterministic UID and pseudonym remapping of de-identification.
    deid_secret: SecretStr = SecretStr("pacs-bridge-default-deid-secret")
    #: The REST API.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=4005, ge=0, le=65535)
    #: The JSON file of registered PACS services (query/retrieve peers).
    services_file: Path | None = None
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

    def resolved_registry_file(self) -> Path:
        """The registry file; default ``<storage_root>/../pacs-bridge/registrations.jsonl``."""
        return (
            self.registry_file or self.storage_root.parent / "pacs-bridge" / "registrations.jsonl"
        )

    def resolved_services_file(self) -> Path:
        """The services file, defaulting to ``<storage_root>/../pacs-bridge/services.json``."""
        return self.services_file or self.storage_root.parent / "pacs-bridge" / "services.json"

    def route_for(self, calling_aet: str) -> Route:
        """The first route matching ``calling_aet`` (a default route when none does)."""
        for route in self.routes:
            if route.calling_aet in ("*", calling_aet):
                return route
        return Route()
