"""CUBE's settings: one pydantic-settings object, env prefix ``CUBE_``."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from cube.registry.schema import RegistryCredentials


def default_home() -> Path:
    """Where embedded data lives: ``$CHRIS_HOME`` or ``./.chris``."""
    return Path(os.environ.get("CHRIS_HOME", ".chris")).resolve()


class CubeSettings(BaseSettings):
    """Configuration of a CUBE process (API server and/or scheduler worker).

    Every default is the embedded one (SQLite and a storage directory under
    ``home``); production replaces ``database_url``, ``storage_dir`` and the
    admin password.
    """

    model_config = SettingsConfigDict(env_prefix="CUBE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    home: Path = Field(default_factory=lambda: default_home() / "cube")
    #: SQLAlchemy async URL; default ``sqlite+aiosqlite:///<home>/cube.db``.
    #: Production: ``postgresql+asyncpg://user:password@host:5432/cube``
    #: (``postgresql://`` is read as that). Several CUBE processes (API and
    #: workers on several machines) may share a PostgreSQL database.
    database_url: str = ""
    #: Root of file storage; default ``<home>/storage``.
    storage_dir: Path | None = None
    admin_username: str = "chris"
    admin_password: SecretStr = SecretStr("chris1234")
    admin_email: str = "chris@localhost"
    #: Only staff may create accounts (ChRIS's DISABLE_USER_ACCOUNT_CREATION);
    #: by default anyone may sign up, as in ChRIS.
    disable_user_account_creation: bool = False
    #: Prefix of job ids given to compute sites (ChRIS: ``chris-jid-``).
    job_id_prefix: str = "chris-jid-"
    page_size: int = Field(default=10, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    #: Run the scheduler inside the API process (the embedded default).
    run_scheduler: bool = True
    #: Identity of this scheduler worker in leases.
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    #: A claimed instance's lease; another worker may take it over when it lapses (s).
    #: Renewed every third of it while the worker lives, so a killed worker's
    #: instances carry on elsewhere after at most this long.
    lease_seconds: float = Field(default=60.0, gt=1)
    #: Instances one worker drives at once; more workers share the rest.
    worker_max_instances: int = Field(default=1000, ge=1)
    #: How long after an instance ended its job's deletion at an unreachable
    #: site is retried before it is given up (s; ChRIS: two days).
    cleanup_give_up_seconds: float = Field(default=2 * 86400.0, ge=0)
    #: How long one status long-poll to a compute site may wait (s).
    status_wait_seconds: float = Field(default=30.0, gt=0)
    #: Safety sweep for instances whose lease lapsed in another process (s).
    sweep_seconds: float = Field(default=5.0, gt=0)
    #: Backoff bounds for a compute site that is unreachable (s).
    retry_min_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    #: Largest accepted upload (bytes).
    max_upload_bytes: int = 64 * 1024**3
    #: Tail of job logs kept in an instance's summary (characters, as ChRIS).
    job_logs_tail: int = 1800
    #: Deflate level of input archives sent to compute sites: 0 stores
    #: everything, 1 (fastest) to 9; already-compressed data is always stored.
    transfer_compression_level: int = Field(default=1, ge=0, le=9)
    #: Deflate only while deflate outpaces the link to the site (measured
    #: per transfer); false deflates every compressible member.
    transfer_adaptive_compression: bool = True
    #: Largest expansion (unpacked ÷ received) of an output archive past 1 GiB.
    transfer_max_ratio: float = Field(default=1000.0, gt=1)
    #: Largest total size of one instance's output archive, unpacked.
    transfer_max_output_bytes: int = Field(default=256 * 1024**3, ge=0)
    #: Free space CUBE's storage keeps: an output that would eat into it fails
    #: the fetch (retried later) instead of filling the disk.
    storage_reserve_bytes: int = Field(default=256 * 1024**2, ge=0)
    #: Credentials for the container registries plugin images are read from, as
    #: JSON: ``{"host[:port]": {"username": ..., "password": ...}}`` (Docker Hub:
    #: ``docker.io``). Registries not listed are read anonymously.
    registry_credentials: dict[str, RegistryCredentials] = Field(default_factory=dict)
    #: Registries (``host`` or ``host:port``, JSON list) spoken to over plain http;
    #: loopback ones (127.0.0.0/8, localhost, ::1) always are, as Docker engines do.
    registry_insecure: list[str] = Field(default_factory=list)
    #: Bound of one request to a registry (s).
    registry_timeout_seconds: float = Field(default=30.0, gt=0)

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite under ``home``."""
        url = self.database_url or f"sqlite+aiosqlite:///{self.home / 'cube.db'}"
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+asyncpg://" + url.removeprefix(plain)
        return url

    def resolved_storage_dir(self) -> Path:
        """The storage root, defaulting to ``<home>/storage``."""
        return (self.storage_dir or self.home / "storage").resolve()
