"""Real PACS components for tests: DCMTK's tools and an Orthanc on loopback.

Both are Debian packages (``dcmtk``, ``orthanc``; ``.ci/components.sh``
installs them). DCMTK and Orthanc run with ``TCP_NODELAY=1`` in their
environment: without it DCMTK 3.6.7 leaves Nagle on and every instance waits
~45 ms for a delayed ACK (shared/reference/pacs.md §5).
:func:`running_orthanc` starts ``Orthanc <config>`` with its own storage in a
temporary directory on free ports, waits until its REST API answers, and
stops it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.components import free_port

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
#: How long Orthanc may take to answer ``/system`` (s).
STARTUP_TIMEOUT = 30.0


def nodelay_env() -> dict[str, str]:
    """The environment to start DCMTK tools and Orthanc with."""
    return {**os.environ, "TCP_NODELAY": "1"}


def dcmtk_available() -> tuple[bool, str]:
    """Whether DCMTK's storescu, findscu and movescu are on PATH, and why not."""
    missing = [t for t in ("storescu", "findscu", "movescu") if shutil.which(t) is None]
    if missing:
        return (
            False,
            f"DCMTK tools missing ({', '.join(missing)}): install the Debian package dcmtk",
        )
    return True, ""


def orthanc_available() -> tuple[bool, str]:
    """Whether Orthanc can be run here, and why not."""
    if not ORTHANC_BINARY.is_file():
        return False, f"{ORTHANC_BINARY} is missing: install the Debian package orthanc"
    return True, ""


def storescu(
    host: str, port: int, files: Sequence[Path], *, aet: str = "STORESCU", aec: str = "CHRIS"
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` in one association with DCMTK's storescu (not checked)."""
    return subprocess.run(
        ["storescu", "-aet", aet, "-aec", aec, host, str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        env=nodelay_env(),
    )


@dataclass(frozen=True)
class Orthanc:
    """A running test Orthanc."""

    aet: str
    dicom_port: int
    http_port: int
    root: Path

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        """Call Orthanc's REST API and decode its JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def add_modality(self, name: str, aet: str, port: int) -> None:
        """Register a DICOM peer on loopback (C-FIND/C-MOVE peers must be known)."""
        self.rest("PUT", f"/modalities/{name}", {"AET": aet, "Host": "127.0.0.1", "Port": port})


@contextlib.contextmanager
def running_orthanc(
    root: Path, modalities: dict[str, tuple[str, int]], **options: Any
) -> Iterator[Orthanc]:
    """Start an Orthanc with its own config and storage under ``root``; stop it after.

    ``modalities`` maps names to (AE title, port) of peers on 127.0.0.1;
    ``options`` are further configuration options (``SyncStorageArea=False`` ...).
    """
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
        "DicomModalities": {k: [a, "127.0.0.1", p] for k, (a, p) in modalities.items()},
        "StableAge": 1,
        "MaximumPduLength": 131072,
        **options,
    }
    cfg = root / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = (root / "orthanc.log").open("w")
    proc = subprocess.Popen(
        [str(ORTHANC_BINARY), str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=nodelay_env()
    )
    orthanc = Orthanc("ORTHANC", dicom_port, http_port, root)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited ({proc.returncode}): {(root / 'orthanc.log').read_text()}"
                )
            try:
                orthanc.rest("GET", "/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise RuntimeError("Orthanc did not answer in time") from None
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
