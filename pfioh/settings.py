"""pfioh's settings, read from the environment with the prefix ``PFIOH_``.

E.g. ``PFIOH_PORT=5056 PFIOH_STOREBASE=/data/pfioh PFIOH_API_TOKEN=s3cret``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pfioh.unzip import ExtractLimits

GIB = 1 << 30
MIB = 1 << 20


class PfiohSettings(BaseSettings):
    """Everything a pfioh server can be configured with.

    Sizes are in bytes. When ``api_token`` is set, every endpoint except
    the health check requires ``Authorization: Bearer <token>``.
    """

    model_config = SettingsConfigDict(env_prefix="PFIOH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=5055, ge=0, le=65535)
    storebase: Path = Path("./.pfioh-store")
    api_token: SecretStr | None = None
    #: Largest accepted upload (the zip as sent), in bytes.
    max_upload_bytes: int = Field(default=64 * GIB, ge=1)
    #: Largest total uncompressed size of an upload's files, in bytes (zip bombs).
    max_unpacked_bytes: int = Field(default=256 * GIB, ge=0)
    #: Largest expansion (unpacked ÷ received) of an upload past 1 GiB unpacked.
    max_ratio: float = Field(default=1000.0, gt=1)
    #: Most members in one upload.
    max_members: int = Field(default=1_000_000, ge=1)
    #: Free space the storebase keeps: uploads that would eat into it are refused (507).
    reserve_bytes: int = Field(default=256 * MIB, ge=0)
    #: Refuse uploads that carry no SHA-256 manifest (ChRIS's CUBE sends none).
    require_manifest: bool = False
    #: Deflate level of outgoing archives: 0 stores everything, 1 (fastest) to 9.
    compression_level: int = Field(default=1, ge=0, le=9)
    #: Deflate only while deflate outpaces the link (measured per transfer);
    #: false deflates every compressible member whatever the link.
    adaptive_compression: bool = True
    #: Bytes read or written at a time while streaming.
    chunk_size: int = Field(default=MIB, ge=4096)

    def extract_limits(self) -> ExtractLimits:
        """What an upload may unpack to, from these settings."""
        return ExtractLimits(
            max_bytes=self.max_unpacked_bytes,
            max_ratio=self.max_ratio,
            max_members=self.max_members,
            reserve_bytes=self.reserve_bytes,
            require_manifest=self.require_manifest,
        )
