"""The PACS bridge inside ``chris up``: a study sent by C-STORE lands in CUBE's pacsfiles."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pydicom
import pytest
from pacs_bridge.client import PacsBridgeClient

from cube.cli.stack import Stack
from cube.client import CubeClient
from tests.support.components import require
from tests.support.dicom import write_ct_series
from tests.support.pacs import dcmtk_available, storescu


@pytest.fixture(scope="module")
def dcmtk() -> None:
    """DCMTK's storescu; skipped locally, a failure under CI, when absent."""
    require(*dcmtk_available())


@pytest.mark.usefixtures("dcmtk")
async def test_storescu_into_the_stack_registers_the_series(
    local_stack: tuple[Stack, CubeClient], tmp_path: Path
) -> None:
    stack, client = local_stack
    cfg = stack.config
    series = write_ct_series(tmp_path / "ct", 6)
    proc = await asyncio.to_thread(
        storescu, "127.0.0.1", cfg.dicom_port, series.files, aet="SCANNER"
    )
    assert proc.returncode == 0, proc.stderr
    files = []
    for _ in range(100):  # completes after the release plus the quiet period
        files = await client.pacs_files(SeriesInstanceUID=series.series_uid)
        if len(files) == len(series.files):
            break
        await asyncio.sleep(0.1)
    assert len(files) == len(series.files)
    assert {f.pacs_identifier for f in files} == {"SCANNER"}

    # stored under CUBE's storage (as ChRIS lays PACS files out), the instances as sent
    def instances(paths: list[Path]) -> set[tuple[str, bytes]]:
        return {(str(d.SOPInstanceUID), d.PixelData) for d in map(pydicom.dcmread, paths)}

    stored = [cfg.cube_storage / f.fname for f in files]
    assert all(f.fname.startswith("SERVICES/PACS/") for f in files)
    assert instances(stored) == instances(list(series.files))

    # the bridge's API, through its client, as ``chris pacs status`` reads it; its
    # state file lies beside the services file in the stack's home
    async with PacsBridgeClient(f"http://127.0.0.1:{cfg.pacs_api_port}/") as bridge:
        status = await bridge.status()
        assert status.dicom_port == cfg.dicom_port
        assert status.files_registered == len(series.files)
        assert await bridge.retrieves() == []
    assert (cfg.home / "pacs-bridge" / "state.sqlite3").is_file()
