"""Container image references: ``[host[:port]/]path[:tag][@digest]``.

The grammar is the one of the distribution project's ``reference`` package
(what ``docker pull`` accepts), including its defaults: a name whose first
component is not a host (no ``.`` or ``:``, not ``localhost``, all lowercase)
lives on Docker Hub (``docker.io``), where a one-component path gets the
``library/`` prefix; neither tag nor digest means ``latest``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import NewType

from cube.errors import InvalidImageReference

#: An image reference as a user wrote it (``127.0.0.1:5000/chris/pl-dircopy:1.0.0``).
ImageName = NewType("ImageName", str)

#: Docker Hub's name in references, and the host its registry API is served from.
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
#: Names under which Docker Hub appears in references and credential files.
DOCKER_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_API})

# distribution/reference/regexp.go, spelled out
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
#: Longest repository name (host and path) the distribution spec allows.
MAX_NAME_LENGTH = 255


@dataclass(frozen=True, slots=True)
class ReferenceParts:
    """A reference split as written, before Docker Hub defaults are applied."""

    domain: str | None  #: ``host[:port]``, or None when the name has no host part
    path: str  #: e.g. ``chris/pl-dircopy`` or ``ubuntu``
    tag: str | None
    digest: str | None


def split_reference(text: str) -> ReferenceParts:
    """Split and validate a reference without applying defaults.

    Raises:
        InvalidImageReference: ``text`` is not a reference; the message says why.
    """

    def bad(why: str) -> InvalidImageReference:
        return InvalidImageReference(f"invalid image reference {text!r}: {why}")

    if not text or text != text.strip() or any(c.isspace() for c in text):
        raise bad("empty or contains whitespace")
    if "://" in text:
        raise bad("a reference has no scheme (write host[:port]/repository[:tag])")
    name, at, digest = text.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise bad(f"malformed digest {digest!r} (expected algorithm:hex)")
    if at and digest.startswith("sha256:") and len(digest) != len("sha256:") + 64:
        raise bad("a sha256 digest has 64 hexadecimal digits")
    # the tag is after the last ':' that follows the last '/' (a port precedes a '/')
    last = name.rsplit("/", 1)[-1]
    tag: str | None = None
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not _TAG.fullmatch(tag):
            raise bad(f"malformed tag {tag!r}")
    domain: str | None = None
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        domain, name = first, rest
        if not _DOMAIN.fullmatch(domain):
            raise bad(f"malformed registry host {domain!r}")
    if not name:
        raise bad("no repository name")
    for component in name.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            hint = " (repository names are lowercase)" if component != component.lower() else ""
            raise bad(f"malformed repository component {component!r}{hint}")
    if len(name) + (len(domain) + 1 if domain else 0) > MAX_NAME_LENGTH:
        raise bad(f"the repository name is longer than {MAX_NAME_LENGTH} characters")
    return ReferenceParts(domain, name, tag, digest or None)


def _host_of(registry: str) -> str:
    """``registry`` without its port (and without the brackets of an IPv6 address)."""
    if registry.startswith("["):
        return registry[1 : registry.index("]")]
    return registry.rsplit(":", 1)[0] if ":" in registry else registry


def is_loopback(registry: str) -> bool:
    """Whether a registry ``host[:port]`` is on this machine (``localhost``, 127/8, ``::1``).

    Docker engines reach those over plain http without configuration, and so does CUBE.
    """
    host = _host_of(registry)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_registry(name: str) -> str:
    """A registry's name as references spell it: Docker Hub's aliases become ``docker.io``;
    a scheme and path (as in ``https://index.docker.io/v1/``) are dropped; lowercase."""
    host = name.strip().lower()
    host = host.split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB if host in DOCKER_HUB_ALIASES else host


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed, normalised image reference.

    ``registry`` is ``host[:port]`` (``docker.io`` for Docker Hub), ``repository``
    the path within it (``library/ubuntu``); ``tag`` and ``digest`` may both be set,
    in which case the digest decides (as ``docker pull`` does).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Parse a reference, applying Docker Hub's defaults.

        Raises:
            InvalidImageReference: ``text`` is not a reference.
        """
        parts = split_reference(text)
        registry = normalize_registry(parts.domain) if parts.domain else DOCKER_HUB
        path = parts.path
        if registry == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        tag = parts.tag if parts.tag or parts.digest else "latest"
        return cls(registry, path, tag, parts.digest)

    @property
    def reference(self) -> str:
        """What the manifest endpoint is asked for: the digest, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        """The ``host[:port]`` serving the registry API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.registry}/{self.repository}{tag}{digest}"
