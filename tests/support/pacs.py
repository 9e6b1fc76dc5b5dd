"""Real PACS components for tests: DCMTK's tools and an Orthanc on loopback.

Both are Debian packages (``dcmtk``, ``orthanc``; ``.ci/components.sh``
installs them). DCMTK runs with ``TCP_NODELAY=1`` in its environment: without
it DCMTK 3.6.7 leaves Nagle on and every instance waits ~45 ms for a delayed
ACK (shared/reference/pacs.md §5). The throwaway Orthanc
(:func:`running_orthanc`, :class:`Orthanc`) lives in :mod:`cube.cli.orthanc`,
which ``chris demo --pacs`` uses too; it is re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cube.cli.orthanc import Orthanc, find_orthanc, nodelay_env
from cube.cli.orthanc import running_orthanc as _running_orthanc

__all__ = [
    "Orthanc",
    "dcmtk_available",
    "nodelay_env",
    "orthanc_available",
    "orthanc_binary",
    "running_orthanc",
    "storescu",
]

#: Where the Debian package puts Orthanc: tests find it there even when ``PATH``
#: lacks ``/usr/sbin`` (a non-root CI user).
DEBIAN_SBIN = "/usr/sbin"


def dcmtk_available() -> tuple[bool, str]:
    """Whether DCMTK's storescu, findscu and movescu are on PATH, and why not."""
    missing = [t for t in ("storescu", "findscu", "movescu") if shutil.which(t) is None]
    if missing:
        return (
            False,
            f"DCMTK tools missing ({', '.join(missing)}): install the Debian package dcmtk",
        )
    return True, ""


def orthanc_binary() -> Path | None:
    """Orthanc on ``PATH``, else in ``/usr/sbin``."""
    return find_orthanc(os.environ.get("PATH", "") + os.pathsep + DEBIAN_SBIN)


def orthanc_available() -> tuple[bool, str]:
    """Whether Orthanc can be run here, and why not."""
    if orthanc_binary() is None:
        return (
            False,
            f"Orthanc is missing (PATH, {DEBIAN_SBIN}): install the Debian package orthanc",
        )
    return True, ""


def running_orthanc(
    root: Path, modalities: dict[str, tuple[str, int]] | None = None, **options: Any
) -> contextlib.AbstractContextManager[Orthanc]:
    """:func:`cube.cli.orthanc.running_orthanc` with :func:`orthanc_binary`."""
    return _running_orthanc(root, modalities, binary=orthanc_binary(), **options)


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
