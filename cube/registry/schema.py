"""Wire models of the OCI distribution API that CUBE reads (manifests, config, tokens).

Only the fields CUBE uses are declared; everything else in a registry's
answer is ignored, so Docker's v2 schema and OCI's image spec parse alike.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

#: ``Accept`` media types of image manifests and of indexes (manifest lists).
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Platform(_Wire):
    """The platform of one index entry (``unknown`` for attestations)."""

    os: str = ""
    architecture: str = ""
    variant: str | None = None


class Descriptor(_Wire):
    """A content descriptor: what a manifest or index points at."""

    media_type: str = Field(default="", alias="mediaType")
    digest: str
    size: int = 0
    platform: Platform | None = None


class Manifest(_Wire):
    """An image manifest (Docker v2 schema 2 or OCI): its config blob and layers."""

    schema_version: int = Field(default=2, alias="schemaVersion")
    media_type: str = Field(default="", alias="mediaType")
    config: Descriptor


class Index(_Wire):
    """An image index (OCI) or manifest list (Docker): one manifest per platform."""

    schema_version: int = Field(default=2, alias="schemaVersion")
    media_type: str = Field(default="", alias="mediaType")
    manifests: list[Descriptor]


class ContainerConfig(_Wire):
    """The ``config`` part of an image configuration; labels may be absent or null."""

    labels: dict[str, str] | None = Field(default=None, alias="Labels")


class ImageConfig(_Wire):
    """An image configuration blob (``application/vnd.oci.image.config.v1+json``)."""

    architecture: str = ""
    os: str = ""
    config: ContainerConfig = Field(default_factory=ContainerConfig)


class TokenResponse(_Wire):
    """A token service's answer (distribution token auth); either field may carry it."""

    token: str | None = None
    access_token: str | None = None

    @property
    def bearer(self) -> str | None:
        """The token to send, whichever field held it."""
        return self.token or self.access_token


class ErrorBody(_Wire):
    """A registry's error body: ``{"errors": [{"code", "message"}]}``."""

    class Item(_Wire):
        code: str = ""
        message: str = ""

    errors: list[Item] = []

    def summary(self) -> str:
        """``CODE: message; ...`` of every error, for messages to people."""
        return "; ".join(f"{e.code}: {e.message}".strip(": ") for e in self.errors)


class RegistryCredentials(BaseModel):
    """A user and password (or token) for one registry, as in ``CUBE_REGISTRY_CREDENTIALS``."""

    model_config = ConfigDict(extra="forbid")

    username: str
    password: SecretStr
