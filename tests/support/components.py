"""Availability of external components (Docker engine, ...) for tests.

Locally a missing component skips the tests that need it, with the reason.
Under ``CI=true`` a missing component is a failure, never a skip.
"""

from __future__ import annotations

import os
import socket

import pytest


def in_ci() -> bool:
    """True when running under CI (``CI=true``)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) when a component is not available."""
    if available:
        return
    if in_ci():
        pytest.fail(f"required component missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker_available() -> tuple[bool, str]:
    """Whether a Docker engine answers, and why not."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        client.close()
        return True, ""
    except Exception as exc:  # any failure means "no usable engine"
        return False, f"no Docker engine reachable ({exc.__class__.__name__}: {exc})"
