"""End to end: the default ``emphysema-v1`` pipeline on a synthetic chest CT in a feed.

The embedded stack (pman's ``local`` backend) registers pl-dcm2nifti,
pl-lung-emphysema and the pipeline on bootstrap. A phantom DICOM series is
uploaded, pl-dircopy makes a feed of it, the pipeline runs as a workflow on
that feed, and the downloaded report's %LAA-950 is checked against the
phantom's truth; the Secondary Capture is downloaded and must belong to the
phantom's study.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from cube.cli.emphysema_demo import LAA_TOLERANCE, run_emphysema_demo
from cube.cli.stack import Stack
from cube.client import CubeClient
from cube.schema import InstanceStatus

pytestmark = pytest.mark.slow


async def test_emphysema_pipeline_in_a_feed(
    local_stack: tuple[Stack, CubeClient], tmp_path: Path
) -> None:
    client = local_stack[1]
    pipeline = await client.pipeline_by_name("emphysema-v1")
    pipings = await client.pipeline_pipings(pipeline.id)
    assert [(p.title, p.plugin_name) for p in sorted(pipings, key=lambda p: p.id)] == [
        ("dcm2nifti", "pl-dcm2nifti"),
        ("emphysema", "pl-lung-emphysema"),
    ]

    result = await run_emphysema_demo(client, tmp_path / "work", "home/chris/uploads/emphysema")

    names = sorted(i.plugin_name for i in result.instances)
    assert names == ["pl-dcm2nifti", "pl-dircopy", "pl-lung-emphysema"]
    assert {i.status for i in result.instances} == {InstanceStatus.FINISHED_SUCCESSFULLY}
    assert result.error <= LAA_TOLERANCE, (result.report, result.true_laa950_percent)
    assert result.report["method"] == "accurate"
    assert result.ok

    by_plugin = {i.plugin_name: i for i in result.instances}
    converted = [f.fname for f in await client.instance_files(by_plugin["pl-dcm2nifti"].id)]
    assert sum(f.endswith(".nii.gz") for f in converted) == 1
    assert sum(f.endswith(".json") for f in converted) == 1
    outputs = {
        f.fname.rsplit("/", 1)[-1]: f
        for f in await client.instance_files(by_plugin["pl-lung-emphysema"].id)
    }
    assert set(outputs) == {"emphysema-report.json", "emphysema-overlay.png", "emphysema-sc.dcm"}
    sc_path = tmp_path / "sc.dcm"
    await client.download(outputs["emphysema-sc.dcm"].file_resource, sc_path)
    sc = pydicom.dcmread(sc_path)
    source = pydicom.dcmread(next((tmp_path / "work" / "dicom").glob("*.dcm")))
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
