"""End to end with a PACS: a CT series from Orthanc runs emphysema-v1, the SC goes back.

The PACS path of the demo (issue 7): a phantom chest CT is stored in a test
Orthanc; Orthanc C-STOREs the series to the fabric's DICOM bridge, whose
routing rule turns it into a feed running the default ``emphysema-v1``
pipeline; the report's %LAA-950 is checked against the phantom's truth; then
the bridge exports the Secondary Capture back to Orthanc, where it must land
in the phantom's study, next to the CT series.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ct_phantom import PhantomSpec, make_phantom, write_series

from cube.cli.emphysema_demo import LAA_TOLERANCE
from cube.cli.stack import Stack
from cube.client import CubeClient
from cube.schema import InstanceStatus
from tests.e2e.conftest import running_stack, stack_config
from tests.support.components import require
from tests.support.pacs import dcmtk_available, orthanc_available, running_orthanc, storescu

pytestmark = pytest.mark.slow

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
RULES = [
    {
        "calling_aet": "ORTHANC",
        "modality": "CT",
        "series_description": "^Chest phantom",
        "pipeline": "emphysema-v1",
        "feed_title": "{PatientID} {SeriesDescription}",
    }
]


@pytest.fixture
async def pacs_stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, CubeClient]]:
    require(*dcmtk_available())
    require(*orthanc_available())
    env = {"CUBE_LEASE_SECONDS": "3", "PACS_BRIDGE_RULES": json.dumps(RULES)}
    async for pair in running_stack(stack_config(tmp_path / "stack", extra_env=env)):
        yield pair


async def bridge(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    url = f"http://127.0.0.1:{stack.config.pacs_api_port}/api/v1/{path}"
    async with aiohttp.ClientSession() as http, http.request(method, url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def routed(stack: Stack, series_uid: str, timeout: float = 60) -> dict[str, Any]:
    """The bridge's routing record of the series once it has left ``running``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        records = (await bridge(stack, "GET", "status/"))["routing"]["routed"]
        found = [r for r in records if r["series"] == series_uid]
        if found and found[0]["state"] != "running":
            return dict(found[0])
        await asyncio.sleep(0.2)
    raise AssertionError(f"series {series_uid} not routed within {timeout} s")


async def test_ct_from_pacs_runs_emphysema_and_the_sc_goes_back(
    pacs_stack: tuple[Stack, CubeClient], tmp_path: Path
) -> None:
    stack, client = pacs_stack
    phantom = make_phantom(PhantomSpec(emphysema_fraction=0.25, seed=21))
    study_uid, series_uid = "1.2.826.0.1.3680043.8.498.71", "1.2.826.0.1.3680043.8.498.72"
    files = write_series(phantom, tmp_path / "ct", study_uid=study_uid, series_uid=series_uid)
    peers = {"chris": ("CHRIS", stack.config.dicom_port)}
    with running_orthanc(tmp_path / "orthanc", peers) as orthanc:
        sent = await asyncio.to_thread(
            storescu, "127.0.0.1", orthanc.dicom_port, files, aec="ORTHANC"
        )
        assert sent.returncode == 0, sent.stderr
        [orthanc_series] = await asyncio.to_thread(orthanc.rest, "GET", "/series")
        # The PACS pushes the series to the fabric (as a PACS forwarding rule would).
        await asyncio.to_thread(
            orthanc.rest,
            "POST",
            "/modalities/chris/store",
            {"Resources": [orthanc_series], "Synchronous": True},
        )

        record = await routed(stack, series_uid)
        assert record["state"] == "started", record
        assert record["pipeline"] == "emphysema-v1"
        members = await client.workflow_instances(record["workflow_id"])
        [last] = [i for i in members if i.plugin_name == "pl-lung-emphysema"]
        final = await client.wait(last.id, timeout=600)
        assert final.status is InstanceStatus.FINISHED_SUCCESSFULLY, final.error_message
        outputs = {f.fname.rsplit("/", 1)[-1]: f for f in await client.instance_files(last.id)}
        report_path = tmp_path / "report.json"
        await client.download(outputs["emphysema-report.json"].file_resource, report_path)
        report = json.loads(report_path.read_text())
        assert abs(report["laa950_percent"] - phantom.laa950_percent) <= LAA_TOLERANCE
        assert report["source"]["StudyInstanceUID"] == study_uid

        # The Secondary Capture back to the PACS, through the bridge.
        service = {"aet": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}
        await bridge(stack, "PUT", "services/orthanc/", service)
        sc_file = outputs["emphysema-sc.dcm"].fname
        exported = await bridge(stack, "POST", "services/orthanc/export/", {"files": [sc_file]})
        assert exported["stored"] == [report["secondary_capture"]["SOPInstanceUID"]], exported
        assert not exported["failed"]

        [study] = await asyncio.to_thread(orthanc.rest, "GET", "/studies?expand")
        assert study["MainDicomTags"]["StudyInstanceUID"] == study_uid
        assert len(study["Series"]) == 2  # the CT and the SC, in one study
        classes = set()
        for sid in study["Series"]:
            instances = await asyncio.to_thread(orthanc.rest, "GET", f"/series/{sid}/instances")
            tags = await asyncio.to_thread(
                orthanc.rest, "GET", f"/instances/{instances[0]['ID']}/simplified-tags"
            )
            classes.add(tags["SOPClassUID"])
        assert classes == {"1.2.840.10008.5.1.4.1.1.2", SC_CLASS}
