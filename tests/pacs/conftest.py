"""Fixtures of the PACS bridge tests: DCMTK, a receiver on a free port, a JSON-lines registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pacs_bridge.receiver import Receiver
from pacs_bridge.registrar import JsonlRegistry
from pacs_bridge.settings import BridgeSettings

from tests.support.components import require
from tests.support.pacs import dcmtk_available, orthanc_available


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
