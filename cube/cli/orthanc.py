"""A throwaway Orthanc on loopback: the test PACS of ``chris demo --pacs`` and of the tests.

Orthanc is a Debian package (``orthanc``, binary ``/usr/sbin/Orthanc``);
:func:`find_orthanc` looks it up on ``PATH`` only, so what runs is what the
user's ``PATH`` says (and a test can hide it by narrowing ``PATH``).
:func:`running_orthanc` writes a configuration with its own storage under a
directory, on free ports, starts ``Orthanc <config>``, waits until its REST
API answers, and stops it afterwards. Orthanc runs with ``TCP_NODELAY=1``:
without it its DICOM connections leave Nagle on and every instance waits for
a delayed ACK (shared/reference/pacs.md §5).

Errors: :class:`OrthancError` (an error answer, a start that failed), with
:class:`OrthancUnreachable` for a REST API that does not answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The executable's name (the Debian package installs ``/usr/sbin/Orthanc``).
ORTHANC = "Orthanc"
#: How long Orthanc may take to answer ``/system`` (s).
STARTUP_TIMEOUT = 30.0
#: How long one REST call may take (s); a synchronous C-STORE of a series is one call.
REST_TIMEOUT = 120.0


class OrthancError(RuntimeError):
    """Orthanc did not start, or answered a REST call with an error."""


class OrthancUnreachable(OrthancError):
    """Orthanc's REST API did not answer (not up yet, or gone)."""


def find_orthanc(path: str | None = None) -> Path | None:
    """The Orthanc executable on ``path`` (default: ``$PATH``), or None."""
    found = shutil.which(ORTHANC, path=path)
    return Path(found) if found else None


def orthanc_missing_reason() -> str:
    """Why :func:`find_orthanc` found nothing, with what to do about it."""
    hint = "install the Debian package orthanc"
    if Path("/usr/sbin", ORTHANC).is_file():
        # Debian's default PATH of a non-root user lacks /usr/sbin.
        hint = "/usr/sbin/Orthanc exists: add /usr/sbin to PATH"
    return f"no {ORTHANC} executable on PATH ({hint})"


def nodelay_env() -> dict[str, str]:
    """The environment to start Orthanc (and DCMTK's tools) with: ``TCP_NODELAY=1``."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc on 127.0.0.1: its AE title, ports and directory."""

    aet: str
    dicom_port: int
    http_port: int
    root: Path

    def _request(self, method: str, path: str, data: bytes | None, ctype: str) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method
        )
        if data is not None:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=REST_TIMEOUT) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")[:500]
            raise OrthancError(f"Orthanc: {method} {path} answered {exc.code}: {body}") from exc
        except (urllib.error.URLError, OSError) as exc:
            # URLError wraps refused connections; a bare OSError is a reset mid-answer.
            raise OrthancUnreachable(f"Orthanc: {method} {path}: {exc}") from exc

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        """Call Orthanc's REST API with a JSON ``body`` and decode its JSON answer.

        Raises :class:`OrthancError` for an error status,
        :class:`OrthancUnreachable` when nothing answers.
        """
        data = None if body is None else json.dumps(body).encode()
        return self._request(method, path, data, "application/json")

    def upload(self, file: Path) -> dict[str, Any]:
        """Store one DICOM file through the REST API (``POST /instances``), no DICOM network.

        Returns Orthanc's answer (``ID``, ``ParentSeries``, ``Status`` ...);
        raises as :meth:`rest`.
        """
        answer: dict[str, Any] = self._request(
            "POST", "/instances", file.read_bytes(), "application/dicom"
        )
        return answer

    def lookup(self, uid: str, level: str) -> str | None:
        """Orthanc's identifier of the resource of DICOM ``uid`` at ``level``
        (``Study``, ``Series``, ``Instance``), or None when it holds none."""
        found = self._request("POST", "/tools/lookup", uid.encode(), "text/plain")
        ids = [r["ID"] for r in found if r["Type"] == level]
        return ids[0] if ids else None

    def add_modality(self, name: str, aet: str, port: int) -> None:
        """Register a DICOM peer on loopback (C-STORE, C-FIND and C-MOVE peers must be known)."""
        self.rest("PUT", f"/modalities/{name}", {"AET": aet, "Host": "127.0.0.1", "Port": port})


@contextlib.contextmanager
def running_orthanc(
    root: Path,
    modalities: dict[str, tuple[str, int]] | None = None,
    *,
    binary: Path | None = None,
    **options: Any,
) -> Iterator[Orthanc]:
    """Start an Orthanc with its own config and storage under ``root``; stop it after.

    ``modalities`` maps names to (AE title, port) of peers on 127.0.0.1;
    ``binary`` defaults to :func:`find_orthanc`; ``options`` are further
    configuration options (``SyncStorageArea=False`` ...). Its AE title is
    ``ORTHANC``; it does not check the called AE title.

    Raises :class:`OrthancError` when there is no executable, or when Orthanc
    exits or does not answer within :data:`STARTUP_TIMEOUT` (with its log).
    """
    binary = binary or find_orthanc()
    if binary is None:
        raise OrthancError(orthanc_missing_reason())
    http_port, dicom_port = free_port(), free_port()
    db = root / "db"
    db.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "test-pacs",
        "StorageDirectory": str(db),
        "IndexDirectory": str(db),
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomModalities": {k: [a, "127.0.0.1", p] for k, (a, p) in (modalities or {}).items()},
        "StableAge": 1,
        "MaximumPduLength": 131072,
        **options,
    }
    cfg = root / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log_path = root / "orthanc.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [str(binary), str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=nodelay_env()
    )
    orthanc = Orthanc("ORTHANC", dicom_port, http_port, root)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            # Polled: Orthanc gives no readiness signal but its answering API.
            if proc.poll() is not None:
                raise OrthancError(f"Orthanc exited ({proc.returncode}): {log_path.read_text()}")
            try:
                orthanc.rest("GET", "/system")
                break
            except OrthancUnreachable:
                if time.monotonic() > deadline:
                    raise OrthancError(
                        f"Orthanc did not answer within {STARTUP_TIMEOUT} s: {log_path.read_text()}"
                    ) from None
                time.sleep(0.2)
        yield orthanc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
