"""The factory that picks a compute backend by name.

Each backend module is imported only when chosen, so the local backend never
needs the docker library. A new backend adds a member to
:class:`~pman.settings.BackendName` and one entry to ``_FACTORIES``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from pman.backends.base import Backend
from pman.settings import BackendName, PmanSettings


def _local(settings: PmanSettings) -> Backend:
    from pman.backends.local import LocalBackend

    return LocalBackend(settings)


def _docker(settings: PmanSettings) -> Backend:
    from pman.backends.docker import DockerBackend

    return DockerBackend(settings)


def _swarm(settings: PmanSettings) -> Backend:
    from pman.backends.swarm import SwarmBackend

    return SwarmBackend(settings)


def _kubernetes(settings: PmanSettings) -> Backend:
    from pman.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(settings)


_FACTORIES: Final[Mapping[BackendName, Callable[[PmanSettings], Backend]]] = MappingProxyType(
    {
        BackendName.LOCAL: _local,
        BackendName.DOCKER: _docker,
        BackendName.SWARM: _swarm,
        BackendName.KUBERNETES: _kubernetes,
    }
)


def create_backend(settings: PmanSettings) -> Backend:
    """A new, not yet started backend as ``settings.backend`` names.

    Raises:
        ValueError: no backend has that name.
    """
    try:
        factory = _FACTORIES[settings.backend]
    except KeyError:
        raise ValueError(f"unknown backend {settings.backend!r}") from None
    return factory(settings)
