"""Fixtures of the PACS bridge tests: DCMTK, a receiver on a free port, a JSON-lines registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pacs_bridge.receiver import Receiver
from pacs_bridge.registrar import JsonlRegistry
from pacs_bridge.settings import BridgeSettings

from tests.support.components import free_port, require
from tests.support.dicom import Series, write_ct_series
from tests.support.pacs import (
    Orthanc,
    dcmtk_available,
    orthanc_available,
    running_orthanc,
    storescu,
)


@pytest.fixture(scope="session")
def dcmtk() -> None:
    """DCMTK's tools; skipped locally, a failure under CI, when absent."""
    require(*dcmtk_available())


@pytest.fixture(scope="session")
def orthanc_binary() -> None:
    """Orthanc; skipped locally, a failure under CI, when absent."""
    require(*orthanc_available())


@pytest.fixture
def settings(tmp_path: Path) -> BridgeSettings:
    """Receiver settings on loopback, a free port, storage under ``tmp_path``."""
    return BridgeSettings(
        dicom_host="127.0.0.1",
        dicom_port=0,
        calling_aets=["STORESCU", "ORTHANC", "OTHER"],
        storage_root=tmp_path / "storage",
        registry_file=tmp_path / "registrations.jsonl",
        reserve_bytes=0,
        quiet_seconds=0.3,
    )


@pytest.fixture
async def receiver(settings: BridgeSettings) -> AsyncIterator[Receiver]:
    """A running receiver registering into a JSON-lines registry."""
    registry = JsonlRegistry(settings.resolved_registry_file())
    async with Receiver(settings, registry) as rx:
        yield rx


@dataclass
class Pacs:
    orthanc: Orthanc
    series: list[Series]  # A1, A2 (one study of PAT-A), B1 (PAT-B)
    receiver_port: int


@pytest.fixture(scope="module")
def pacs(
    tmp_path_factory: pytest.TempPathFactory, dcmtk: None, orthanc_binary: None
) -> Iterator[Pacs]:
    """An Orthanc per test module holding series A1 and A2 (one study of PAT-A) and B1.

    Our AE title CHRIS is a known modality at ``receiver_port`` (C-FIND and
    C-MOVE need it).
    """
    root = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    with running_orthanc(root, {"chris": ("CHRIS", port)}) as orthanc:
        a1 = write_ct_series(root / "a1", 4, patient_id="PAT-A", patient_name="Alpha^Ann")
        a2 = write_ct_series(
            root / "a2",
            3,
            patient_id="PAT-A",
            patient_name="Alpha^Ann",
            study_uid=a1.study_uid,
            description="CORONAL",
        )
        b1 = write_ct_series(root / "b1", 2, patient_id="PAT-B", patient_name="Beta^Bob")
        for s in (a1, a2, b1):
            proc = storescu("127.0.0.1", orthanc.dicom_port, s.files, aec="ORTHANC")
            assert proc.returncode == 0, proc.stderr
        yield Pacs(orthanc, [a1, a2, b1], port)
