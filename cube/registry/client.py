"""A typed async client of the OCI distribution API that reads an image's labels.

CUBE uses it to register a plugin from an image reference alone: the
plugin's descriptor is the image label ``org.chrisproject.descriptor``, which
lives in the image's configuration blob. Reading it takes three requests and
no layer: the manifest (an index is resolved to its ``linux/amd64`` entry,
or its only one), then the config blob.

Authentication follows the registry's ``WWW-Authenticate`` challenge
(distribution spec, "token authentication"): ``Basic`` sends the configured
credentials; ``Bearer`` asks the challenge's ``realm`` for a token with its
``service`` and ``scope`` (anonymously when no credentials are configured, as
Docker Hub allows for public images). Loopback registries and the configured
insecure ones are spoken to over plain http, every other one over https.

Every failure leaves as a :class:`cube.errors.CubeError` subclass:
:class:`~cube.errors.RegistryUnreachable`, :class:`~cube.errors.RegistryUnauthorized`,
:class:`~cube.errors.ImageNotFound` or :class:`~cube.errors.RegistryError`;
aiohttp's exceptions never escape.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError
from yarl import URL

from cube.errors import ImageNotFound, RegistryError, RegistryUnauthorized, RegistryUnreachable
from cube.registry import schema
from cube.registry.reference import ImageRef, is_loopback, normalize_registry

#: The platform picked from an index with several entries (compute sites run amd64).
DEFAULT_PLATFORM = ("linux", "amd64")
#: Largest manifest read (bytes); the distribution spec lets registries refuse larger ones.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: Largest image configuration read (bytes); a descriptor label is at most 1 MiB.
MAX_CONFIG_BYTES = 8 * 1024 * 1024
#: Largest token service answer read (bytes).
MAX_TOKEN_BYTES = 1024 * 1024

M = TypeVar("M", bound=BaseModel)

_MANIFEST_ACCEPT = ", ".join((*schema.MANIFEST_TYPES, *schema.INDEX_TYPES))
_CHALLENGE_PARAM = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """A ``WWW-Authenticate`` header as (lowercase scheme, parameters).

    ``Bearer realm="https://auth/token",service="reg",scope="repository:a/b:pull"``
    gives ``("bearer", {"realm": ..., "service": ..., "scope": ...})``.
    """
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for m in _CHALLENGE_PARAM.finditer(rest):
        quoted = m.group(2)
        params[m.group(1).lower()] = (
            re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else m.group(3)
        )
    return scheme.lower(), params


@dataclass
class _Authorization:
    """The ``Authorization`` header earned for one image's requests.

    It lives for one :meth:`RegistryClient.image_labels` call only, so no
    token outlives the few requests it was asked for.
    """

    header: str | None = None


class RegistryClient:
    """Reads manifests and image configurations from container registries.

    ``credentials`` maps a registry (``host[:port]``; Docker Hub as
    ``docker.io``) to its user and password; ``insecure`` lists registries
    (``host`` or ``host:port``) spoken to over plain http besides loopback
    ones. ``timeout`` bounds each request (s). ``async with`` it, or call
    :meth:`close`.
    """

    def __init__(
        self,
        *,
        credentials: Mapping[str, schema.RegistryCredentials] | None = None,
        insecure: Iterable[str] = (),
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._credentials = {normalize_registry(k): v for k, v in (credentials or {}).items()}
        self._insecure = frozenset(normalize_registry(h) for h in insecure)
        self._own = session is None
        self._session = session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._own:
            await self._session.close()

    # -- public ------------------------------------------------------------------

    def plain_http(self, registry: str) -> bool:
        """Whether ``registry`` (``host[:port]``) is spoken to over http rather than https."""
        name = normalize_registry(registry)
        host = name.rsplit(":", 1)[0] if not name.endswith("]") else name
        return is_loopback(name) or name in self._insecure or host in self._insecure

    def base_url(self, ref: ImageRef) -> URL:
        """The API root of ``ref``'s registry, e.g. ``http://127.0.0.1:5000/v2/``."""
        scheme = "http" if self.plain_http(ref.registry) else "https"
        return URL(f"{scheme}://{ref.api_host}/v2/")

    async def manifest(self, ref: ImageRef) -> schema.Manifest:
        """The image manifest of ``ref``; an index is resolved to its platform's entry.

        Raises:
            ImageNotFound: no such repository, tag or digest, or no usable platform.
            RegistryUnauthorized: the registry refused access.
            RegistryUnreachable: the registry could not be reached.
            RegistryError: the registry answered something malformed.
        """
        return await self._manifest(ref, _Authorization())

    async def image_config(self, ref: ImageRef) -> schema.ImageConfig:
        """The image configuration of ``ref`` (architecture, os, labels).

        Raises: as :meth:`manifest`.
        """
        auth = _Authorization()
        manifest = await self._manifest(ref, auth)
        body = await self._get(
            ref,
            f"blobs/{manifest.config.digest}",
            auth,
            accept="application/json, */*",
            limit=MAX_CONFIG_BYTES,
            what="image configuration",
        )
        _verify_digest(ref, manifest.config.digest, body, "image configuration")
        return _model(ref, schema.ImageConfig, body, "image configuration")

    async def image_labels(self, ref: ImageRef) -> dict[str, str]:
        """The labels of ``ref`` (empty when it has none).

        Raises: as :meth:`manifest`.
        """
        config = await self.image_config(ref)
        return dict(config.config.labels or {})

    # -- manifests -----------------------------------------------------------------

    async def _manifest(self, ref: ImageRef, auth: _Authorization) -> schema.Manifest:
        body = await self._get(
            ref,
            f"manifests/{ref.reference}",
            auth,
            accept=_MANIFEST_ACCEPT,
            limit=MAX_MANIFEST_BYTES,
            what="manifest",
        )
        if ref.digest:
            _verify_digest(ref, ref.digest, body, "manifest")
        data = _json_object(ref, body, "manifest")
        if _is_index(data):
            index = _model(ref, schema.Index, body, "image index")
            entry = _pick_platform(ref, index)
            body = await self._get(
                ref,
                f"manifests/{entry.digest}",
                auth,
                accept=_MANIFEST_ACCEPT,
                limit=MAX_MANIFEST_BYTES,
                what="manifest",
            )
            _verify_digest(ref, entry.digest, body, "manifest")
            data = _json_object(ref, body, "manifest")
            if _is_index(data):
                raise RegistryError(f"{ref}: an image index points at another index")
        if data.get("schemaVersion") == 1:
            raise RegistryError(
                f"{ref}: a schema 1 manifest is not supported; push the image with a current docker"
            )
        return _model(ref, schema.Manifest, body, "manifest")

    # -- HTTP and authentication ------------------------------------------------------

    async def _get(
        self,
        ref: ImageRef,
        path: str,
        auth: _Authorization,
        *,
        accept: str,
        limit: int,
        what: str,
    ) -> bytes:
        """GET ``/v2/<repository>/<path>``, answering one authentication challenge."""
        # the repository and the path are validated, so plain text is a safe URL path
        url = URL(f"{self.base_url(ref)}{ref.repository}/{path}")
        try:
            for attempt in (1, 2):
                headers = {"Accept": accept}
                if auth.header:
                    headers["Authorization"] = auth.header
                async with self._session.get(url, headers=headers) as resp:
                    if resp.status == 401 and attempt == 1:
                        challenge = resp.headers.get("WWW-Authenticate", "")
                        await resp.read()
                        auth.header = await self._authorize(ref, challenge)
                        continue
                    body = await _read_limited(ref, resp, limit, what)
                    _raise_for_status(ref, resp.status, body, what)
                    return body
        except aiohttp.ClientError as exc:
            raise RegistryUnreachable(
                f"registry {ref.registry} unreachable at {self.base_url(ref)}: {exc}"
            ) from exc
        except TimeoutError as exc:
            raise RegistryUnreachable(
                f"registry {ref.registry} timed out at {self.base_url(ref)}"
            ) from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _authorize(self, ref: ImageRef, challenge: str) -> str:
        """The ``Authorization`` header answering ``challenge`` for ``ref``.

        Raises:
            RegistryUnauthorized: no credentials where they are required, or refused.
            RegistryError: a malformed challenge or token answer.
        """
        scheme, params = parse_challenge(challenge)
        creds = self._credentials.get(ref.registry)
        if scheme == "basic":
            if creds is None:
                raise RegistryUnauthorized(
                    f"registry {ref.registry} requires authentication and CUBE has no "
                    "credentials for it (set CUBE_REGISTRY_CREDENTIALS)"
                )
            return _basic(creds)
        if scheme != "bearer":
            raise RegistryUnauthorized(
                f"registry {ref.registry} asks for unsupported authentication {challenge!r}"
            )
        realm = URL(params.get("realm", ""))
        if realm.scheme not in ("http", "https") or not realm.host:
            raise RegistryError(f"registry {ref.registry} sent a bearer challenge without a realm")
        query = {"scope": params.get("scope") or f"repository:{ref.repository}:pull"}
        if "service" in params:
            query["service"] = params["service"]
        headers: dict[str, str] = {}
        if creds is not None:
            if realm.scheme == "http" and not self.plain_http(f"{realm.host}:{realm.port}"):
                # the password would cross the network in clear text
                raise RegistryUnauthorized(
                    f"registry {ref.registry}'s token service {realm} is plain http; "
                    "refusing to send credentials there"
                )
            headers["Authorization"] = _basic(creds)
            query["account"] = creds.username
        async with self._session.get(realm.update_query(query), headers=headers) as resp:
            body = await _read_limited(ref, resp, MAX_TOKEN_BYTES, "token")
            if resp.status in (401, 403):
                raise RegistryUnauthorized(
                    f"the token service of registry {ref.registry} refused "
                    f"{'the credentials' if creds else 'anonymous access'} "
                    f"for {ref.repository} (HTTP {resp.status})"
                )
            _raise_for_status(ref, resp.status, body, "token")
        token = _model(ref, schema.TokenResponse, body, "token answer").bearer
        if not token:
            raise RegistryError(f"the token service of registry {ref.registry} sent no token")
        return f"Bearer {token}"


# -- helpers ------------------------------------------------------------------------


def _basic(creds: schema.RegistryCredentials) -> str:
    """An ``Authorization: Basic`` value (RFC 7617, UTF-8)."""
    pair = f"{creds.username}:{creds.password.get_secret_value()}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


async def _read_limited(
    ref: ImageRef, resp: aiohttp.ClientResponse, limit: int, what: str
) -> bytes:
    """The body of ``resp``, refusing more than ``limit`` bytes."""
    if resp.content_length is not None and resp.content_length > limit:
        raise RegistryError(f"{ref}: the {what} is larger than {limit} bytes")
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        buf += chunk
        if len(buf) > limit:
            raise RegistryError(f"{ref}: the {what} is larger than {limit} bytes")
    return bytes(buf)


def _raise_for_status(ref: ImageRef, status: int, body: bytes, what: str) -> None:
    """Translate a registry's error status into CUBE's exceptions."""
    if status < 400:
        return
    try:
        detail = schema.ErrorBody.model_validate_json(body).summary()
    except ValidationError:
        detail = ""
    detail = detail or body[:200].decode(errors="replace").strip() or f"HTTP {status}"
    if status in (401, 403):
        raise RegistryUnauthorized(
            f"registry {ref.registry} refused access to {ref.repository} ({detail}); "
            "check CUBE's credentials for it (CUBE_REGISTRY_CREDENTIALS)"
        )
    if status == 404 and what == "manifest":
        raise ImageNotFound(f"image {ref} not found in registry {ref.registry} ({detail})")
    raise RegistryError(f"registry {ref.registry} answered HTTP {status} for the {what} of {ref}")


def _verify_digest(ref: ImageRef, digest: str, body: bytes, what: str) -> None:
    """Check content against the digest it was fetched by (a registry must not lie)."""
    algorithm, _, expected = digest.partition(":")
    if algorithm not in ("sha256", "sha512"):
        return  # an algorithm hashlib may lack; the registry vouches for it
    if hashlib.new(algorithm, body).hexdigest() != expected.lower():
        raise RegistryError(f"{ref}: the {what} does not match its digest {digest}")


def _json_object(ref: ImageRef, body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{ref}: the {what} is not JSON") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{ref}: the {what} is not a JSON object")
    return data


def _model(ref: ImageRef, model: type[M], body: bytes, what: str) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RegistryError(f"{ref}: malformed {what}: {exc.errors()[0]['msg']}") from exc


def _is_index(data: dict[str, Any]) -> bool:
    return data.get("mediaType") in schema.INDEX_TYPES or (
        "manifests" in data and "config" not in data
    )


def _pick_platform(ref: ImageRef, index: schema.Index) -> schema.Descriptor:
    """The index entry for ``linux/amd64``, or the only image entry.

    Attestation entries (platform ``unknown/unknown``, as buildx pushes them)
    are not images and never picked.
    """
    images = [m for m in index.manifests if m.platform is None or m.platform.os != "unknown"]
    wanted = [
        m
        for m in images
        if m.platform and (m.platform.os, m.platform.architecture) == DEFAULT_PLATFORM
    ]
    if wanted:
        return wanted[0]
    if len(images) == 1:
        return images[0]
    found = (
        ", ".join(f"{m.platform.os}/{m.platform.architecture}" for m in images if m.platform)
        or "none"
    )
    raise ImageNotFound(f"image {ref} has no {'/'.join(DEFAULT_PLATFORM)} entry (has: {found})")
