"""pfcon's configuration: one pydantic-settings object, environment prefix ``PFCON_``.

Example: ``PFCON_PORT=5005 PFCON_PMAN_URL=http://pman:5010/api/v1/ pfcon serve``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    #: Only zip mode (False) is implemented; in-network mode comes later, and
    #: until then True is refused rather than advertised to CUBE.
    innetwork: bool = False
    #: Upper bound on a status long-poll's ``wait``.
    max_status_wait_seconds: float = Field(default=60.0, ge=0)
    #: Where an input zip that arrives before its ``jid`` is spooled (None: the
    #: system temporary directory).
    spool_dir: Path | None = None
    #: Timeout of one call to pfioh (uploads and downloads of whole archives).
    pfioh_timeout_seconds: float = Field(default=3600.0, gt=0)
    #: Timeout of one call to pman; must exceed ``max_status_wait_seconds``.
    pman_timeout_seconds: float = Field(default=120.0, gt=0)

    @field_validator("innetwork")
    @classmethod
    def _zip_mode_only(cls, v: bool) -> bool:
        if v:
            raise ValueError("in-network mode is not implemented yet; use zip mode (false)")
        return v

    @property
    def uses_default_secret_key(self) -> bool:
        """True when tokens are signed with the public development key."""
        return self.secret_key.get_secret_value() == DEFAULT_SECRET_KEY
