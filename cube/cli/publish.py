"""Publish a local plugin image to a registry (``chris plugin publish``).

The image must carry its descriptor in the label ``org.chrisproject.descriptor``
(``make images`` adds it); it is tagged ``<registry>/<repository>:<tag>`` and
pushed with the Docker engine. Registering the pushed reference in CUBE is
the caller's next step (:meth:`cube.client.CubeClient.register_plugin_image`).

This module raises :class:`PublishError` and never prints.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests
from chris_sdk.descriptor import DescriptorError, PluginDescriptor

from cube.errors import CubeError, InvalidImageReference
from cube.registry import DESCRIPTOR_LABEL, split_reference

#: An image id as the engine accepts it (full, short, with or without ``sha256:``).
_IMAGE_ID = re.compile(r"(?:sha256:)?[0-9a-f]{12,64}")
#: Progress callback: one line per finished step of the push (``<layer>: Pushed``).
Progress = Callable[[str], None]


class PublishError(CubeError):
    """Publishing failed: no such local image, not a plugin image, or the push failed."""

    status = 400
    code = "publish_failed"


@dataclass(frozen=True, slots=True)
class Published:
    """A pushed plugin image."""

    image: str  #: the reference pushed, ``<registry>/<repository>:<tag>``
    digest: str | None  #: the manifest digest the registry stored, when the engine said
    descriptor: PluginDescriptor  #: the descriptor in the image's label


def target_reference(
    local: str | None, registry: str, repository: str | None = None, tag: str | None = None
) -> str:
    """The reference to push the local image named ``local`` as: ``<registry>/<repository>:<tag>``.

    ``repository`` defaults to the local name's path (without its registry
    host), ``tag`` to its tag, else ``latest``. ``local`` is None for an image
    named by its id, which has neither.

    Raises:
        PublishError: ``registry`` is not ``host[:port]``, no repository is
            known, or the result is no reference.
    """
    reg = registry.strip().rstrip("/")
    if "://" in reg or "/" in reg or not reg:
        raise PublishError(f"--registry takes host[:port], got {registry!r}")
    parts = None
    if local is not None and (repository is None or tag is None):
        try:
            parts = split_reference(local)
        except InvalidImageReference as exc:
            raise PublishError(f"{exc}; give --repository and --tag") from exc
    repository = repository or (parts.path if parts else None)
    tag = tag or (parts.tag if parts else None) or "latest"
    if repository is None:
        raise PublishError("the image is named by its id: give --repository")
    target = f"{reg}/{repository}:{tag}"
    try:
        parts = split_reference(target)
    except InvalidImageReference as exc:
        raise PublishError(str(exc)) from exc
    if parts.domain != reg:
        # "myhost/x" would land on Docker Hub: a registry needs a dot, a port or localhost
        raise PublishError(
            f"{reg!r} does not look like a registry host (write host.domain, host:port "
            "or localhost)"
        )
    return target


def _descriptor(labels: Mapping[str, str], local: str) -> PluginDescriptor:
    raw = labels.get(DESCRIPTOR_LABEL)
    if raw is None:
        raise PublishError(
            f"{local} is not a ChRIS plugin image: it has no {DESCRIPTOR_LABEL} label "
            "(build it with `make images`, or add the label with the plugin's --json output)"
        )
    try:
        return PluginDescriptor.parse(raw)
    except DescriptorError as exc:
        raise PublishError(f"the {DESCRIPTOR_LABEL} label of {local} is invalid: {exc}") from exc


def _check_push(events: Iterator[Mapping[str, Any]], target: str, progress: Progress | None) -> str:
    """Consume the engine's push stream; the manifest digest, or raise on an error event.

    The docker SDK does not raise when a push fails: the failure is an event
    carrying ``error``/``errorDetail`` in the stream (e.g. ``unauthorized``).
    """
    digest = ""
    for event in events:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            message = detail.get("message") if isinstance(detail, dict) else None
            raise PublishError(f"pushing {target} failed: {message or event.get('error')}")
        aux = event.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = str(aux["Digest"])
        if progress and event.get("status") in ("Pushed", "Layer already exists"):
            progress(f"{event.get('id', '')}: {event['status']}")
    return digest


def publish_image(
    local: str,
    registry: str,
    *,
    repository: str | None = None,
    tag: str | None = None,
    username: str | None = None,
    password: str | None = None,
    engine: docker.DockerClient | None = None,
    progress: Progress | None = None,
) -> Published:
    """Tag the local plugin image ``local`` for ``registry`` and push it.

    Without ``username``, the engine's own login for the registry is used
    (``docker login``), if any. Blocking: run it in a thread from async code.

    Raises:
        PublishError: no engine, no such local image, no valid descriptor
            label, a malformed target, or the push failed (its message says why).
    """
    try:
        client = engine or docker.from_env(timeout=600)
    except docker.errors.DockerException as exc:
        raise PublishError(f"no Docker engine: {exc}") from exc
    try:
        try:
            image = client.images.get(local)
        except docker.errors.ImageNotFound as exc:
            raise PublishError(f"no local image {local}; build it first (make images)") from exc
        descriptor = _descriptor(image.labels or {}, local)
        bare = local.removeprefix("sha256:")
        by_id = bool(_IMAGE_ID.fullmatch(local)) and image.id.split(":")[-1].startswith(bare)
        # an image named by its id has no tag to keep: its plugin version is one
        target = target_reference(
            None if by_id else local,
            registry,
            repository,
            tag or (descriptor.version if by_id else None),
        )
        name, _, target_tag = target.rpartition(":")
        image.tag(name, target_tag)
        auth = {"username": username, "password": password or ""} if username else None
        events = client.api.push(name, tag=target_tag, stream=True, decode=True, auth_config=auth)
        digest = _check_push(events, target, progress)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise PublishError(f"pushing {local} to {registry} failed: {exc}") from exc
    finally:
        if engine is None:
            client.close()
    return Published(target, digest or None, descriptor)
