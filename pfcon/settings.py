"""pfcon's configuration: one pydantic-settings object, environment prefix ``PFCON_``.

Example: ``PFCON_PORT=5005 PFCON_PMAN_URL=http://pman:5010/api/v1/ pfcon serve``.

In-network mode (the site shares CUBE's storage)::

    PFCON_INNETWORK=true PFCON_STORAGE_ENV=filesystem PFCON_STOREBASE=/srv/chris/storage

with pman's ``PMAN_STOREBASE`` the same tree (pman mounts job dirs relative to it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pfcon.schema import StorageEnv

#: The development signing key used when ``PFCON_SECRET_KEY`` is not set. It is
#: fixed (not random) so tokens survive restarts; pfcon logs a warning when it
#: is in use, since anyone who reads this file can forge tokens with it.
DEFAULT_SECRET_KEY = "pfcon-insecure-development-secret-key-change-me"


class PfconSettings(BaseSettings):
    """Settings of one pfcon server.

    Durations are in seconds. ``pfioh_url`` and ``pman_url`` are the base URLs
    of their ``/api/v1/`` APIs (with the trailing slash).
    """

    model_config = SettingsConfigDict(env_prefix="PFCON_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=5005, ge=0, le=65535)
    pfcon_user: str = "pfcon"
    pfcon_password: SecretStr = SecretStr("pfcon1234")
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    token_lifetime_seconds: int = Field(default=2 * 24 * 3600, gt=0)
    pfioh_url: str = "http://127.0.0.1:5055/api/v1/"
    pfioh_token: SecretStr | None = None
    pman_url: str = "http://127.0.0.1:5010/api/v1/"
    pman_token: SecretStr | None = None
    #: In-network mode: the site shares CUBE's storage and mounts job inputs
    #: and outputs in place (needs ``storage_env=filesystem`` and ``storebase``).
    #: False: zip mode, CUBE posts a zip that pfioh unpacks.
    innetwork: bool = False
    #: ``zipfile`` (the only choice when not in-network) or ``filesystem``
    #: (in-network over a POSIX tree); given explicitly when in-network.
    storage_env: StorageEnv = StorageEnv.ZIPFILE
    #: Where pfcon sees the storage shared with CUBE (in-network only): CUBE's
    #: storage root, and pman's storebase must be this same tree.
    storebase: Path | None = None
    #: Upper bound on a status long-poll's ``wait``.
    max_status_wait_seconds: float = Field(default=60.0, ge=0)
    #: Where an input zip that arrives before its ``jid`` is spooled (None: the
    #: system temporary directory).
    spool_dir: Path | None = None
    #: Timeout of one call to pfioh (uploads and downloads of whole archives).
    pfioh_timeout_seconds: float = Field(default=3600.0, gt=0)
    #: Timeout of one call to pman; must exceed ``max_status_wait_seconds``.
    pman_timeout_seconds: float = Field(default=120.0, gt=0)

    @field_validator("storebase")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser().absolute()

    @model_validator(mode="after")
    def _mode_is_consistent(self) -> Self:
        """Refuse a mode that is half configured, rather than guessing.

        Raises ValueError naming the variable to set.
        """
        if not self.innetwork:
            if self.storage_env is not StorageEnv.ZIPFILE:
                raise ValueError(
                    f"storage_env {self.storage_env.value!r} needs PFCON_INNETWORK=true; "
                    "without it the only storage_env is 'zipfile'"
                )
            return self
        if self.storage_env is not StorageEnv.FILESYSTEM:
            raise ValueError(
                "in-network mode needs PFCON_STORAGE_ENV=filesystem (the only in-network "
                "storage implemented)"
            )
        if self.storebase is None:
            raise ValueError(
                "in-network mode needs PFCON_STOREBASE: the shared storage as pfcon sees it"
            )
        if not self.storebase.is_dir():
            raise ValueError(f"PFCON_STOREBASE {str(self.storebase)!r} is not a directory")
        return self

    @property
    def uses_default_secret_key(self) -> bool:
        """True when tokens are signed with the public development key."""
        return self.secret_key.get_secret_value() == DEFAULT_SECRET_KEY
