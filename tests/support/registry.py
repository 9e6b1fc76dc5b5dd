"""A real container registry for tests: Debian's ``docker-registry`` on loopback.

:func:`running_registry` starts ``/usr/bin/docker-registry serve <config>``
on ``127.0.0.1:<free port>`` with filesystem storage in a temporary directory
and htpasswd (bcrypt) authentication for one user, waits until ``/v2/``
answers 401 (up, and asking for credentials), and stops it afterwards.
Docker engines reach 127.0.0.0/8 registries over plain http without
configuration, so images can be pushed to it with the docker SDK.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.busybox import ensure_busybox_image
from tests.support.components import free_port

#: The label plugin images carry their descriptor in.
DESCRIPTOR_LABEL = "org.chrisproject.descriptor"
#: Debian's package ``docker-registry`` installs the binary here.
REGISTRY_BINARY = Path("/usr/bin/docker-registry")
#: How long the registry may take to answer ``/v2/`` (s).
STARTUP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Registry:
    """A running test registry and its one user."""

    host: str  #: ``127.0.0.1:<port>``, the registry part of image references
    username: str
    password: str
    root: Path  #: storage, config and log directory

    @property
    def url(self) -> str:
        """The API root, ``http://127.0.0.1:<port>/v2/``."""
        return f"http://{self.host}/v2/"

    @property
    def auth_config(self) -> dict[str, str]:
        """Credentials as the docker SDK's ``auth_config`` takes them."""
        return {"username": self.username, "password": self.password}


def registry_available() -> tuple[bool, str]:
    """Whether a registry can be run here (the binary and ``htpasswd``), and why not."""
    if not REGISTRY_BINARY.is_file():
        return False, (
            f"{REGISTRY_BINARY} is missing: install the Debian package docker-registry "
            "(.ci/components.sh does)"
        )
    if shutil.which("htpasswd") is None:
        return False, "htpasswd is missing: install the Debian package apache2-utils"
    return True, ""


def _htpasswd(path: Path, username: str, password: str) -> None:
    """Write a bcrypt htpasswd file, the only hash the registry accepts."""
    out = subprocess.run(
        ["htpasswd", "-nbB", username, password],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    path.write_text(out.strip() + "\n")


def _config(root: Path, port: int) -> dict[str, object]:
    # JSON is YAML, so the registry reads this as its config.yml
    return {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}", "net": "tcp", "secret": "test-registry-secret"},
        "auth": {"htpasswd": {"realm": "chris-test-registry", "path": str(root / "htpasswd")}},
    }


def _answers_401(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 401
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def running_registry(
    root: Path, username: str = "chris-test", password: str = "registry-secret-1"
) -> Iterator[Registry]:
    """Run a registry with its data under ``root`` until the block ends.

    Raises:
        RuntimeError: it exited or did not answer ``/v2/`` with 401 in time
            (the message holds its log).
    """
    root.mkdir(parents=True, exist_ok=True)
    _htpasswd(root / "htpasswd", username, password)
    port = free_port()
    config = root / "config.yml"
    config.write_text(json.dumps(_config(root, port)))
    log_path = root / "registry.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(REGISTRY_BINARY), "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _answers_401(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"docker-registry did not come up on 127.0.0.1:{port} "
                    f"(exit {proc.poll()}):\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.05)
        yield Registry(f"127.0.0.1:{port}", username, password, root)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_labelled_image(engine: Any, tag: str, descriptor: dict[str, Any] | None) -> str:
    """A tiny plugin image ``tag``: the busybox test image plus a descriptor label.

    Built by the engine's classic builder ``FROM`` the local busybox image, so
    nothing is pulled; it takes a second. ``descriptor=None`` adds no label.
    """
    base = ensure_busybox_image(engine)
    labels = {DESCRIPTOR_LABEL: json.dumps(descriptor)} if descriptor is not None else {}
    engine.images.build(
        fileobj=io.BytesIO(f"FROM {base}\n".encode()), tag=tag, labels=labels, rm=True
    )
    return tag


def push(engine: Any, local: str, target: str, registry: Registry) -> str:
    """Tag ``local`` as ``target`` and push it; returns the manifest digest.

    Raises:
        AssertionError: the engine streamed an error event (the docker SDK does
            not raise on a failed push) or reported no digest.
    """
    name, _, tag = target.rpartition(":")
    engine.images.get(local).tag(name, tag)
    digest = ""
    for event in engine.api.push(
        name, tag=tag, stream=True, decode=True, auth_config=registry.auth_config
    ):
        assert "error" not in event and "errorDetail" not in event, event
        digest = (event.get("aux") or {}).get("Digest", digest)
    assert digest, f"the engine reported no digest pushing {target}"
    return str(digest)
