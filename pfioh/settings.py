"""pfioh's settings, read from the environment with the prefix ``PFIOH_``.

E.g. ``PFIOH_PORT=5056 PFIOH_STOREBASE=/data/pfioh PFIOH_API_TOKEN=s3cret``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1 << 30
MIB = 1 << 20


class PfiohSettings(BaseSettings):
    """Everything a pfioh server can be configured with.

    Sizes are in bytes. ``spool_dir`` defaults to ``<storebase>/.spool``
    (see :attr:`spool_path`); it should be on the same filesystem as the
    storebase. When ``api_token`` is set, every endpoint except the health
    check requires ``Authorization: Bearer <token>``.
    """

    model_config = SettingsConfigDict(env_prefix="PFIOH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=5055, ge=0, le=65535)
    storebase: Path = Path("./.pfioh-store")
    spool_dir: Path | None = None
    api_token: SecretStr | None = None
    #: Largest accepted upload (the zip as sent), in bytes.
    max_upload_bytes: int = Field(default=64 * GIB, ge=1)
    #: Largest total uncompressed size of an upload's files, in bytes (zip bombs).
    max_unpacked_bytes: int = Field(default=256 * GIB, ge=0)
    #: Bytes read or written at a time while streaming.
    chunk_size: int = Field(default=MIB, ge=4096)

    @property
    def spool_path(self) -> Path:
        """The spool directory: ``spool_dir``, or ``<storebase>/.spool``."""
        return self.spool_dir if self.spool_dir is not None else self.storebase / ".spool"
