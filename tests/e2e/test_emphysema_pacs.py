"""End to end with a PACS: a CT series from Orthanc runs emphysema-v1, the SC goes back.

The PACS path of the demo (issue 7), through
:func:`cube.cli.emphysema_pacs_demo.run_emphysema_pacs_demo` (what
``chris demo --pacs`` runs): a phantom chest CT is stored in a test Orthanc;
Orthanc C-STOREs the series to the fabric's DICOM bridge, whose routing rule
turns it into a feed running the default ``emphysema-v1`` pipeline; the
report's %LAA-950 is checked against the phantom's truth; then the bridge
exports the Secondary Capture back to Orthanc, where it must land in the
phantom's study, next to the CT series. ``chris demo`` itself, with Orthanc
and without, is in tests/e2e/test_demo_pacs.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pacs_bridge.client import PacsBridgeClient
from pacs_bridge.schema import RouteState

from cube.cli.emphysema_demo import LAA_TOLERANCE, PIPELINE
from cube.cli.emphysema_pacs_demo import (
    CT_CLASS,
    SC_CLASS,
    rules_env,
    run_emphysema_pacs_demo,
)
from cube.cli.stack import Stack
from cube.client import CubeClient
from cube.schema import InstanceStatus
from tests.e2e.conftest import running_stack, stack_config
from tests.support.components import require
from tests.support.pacs import orthanc_available, running_orthanc

pytestmark = pytest.mark.slow


@pytest.fixture
async def pacs_stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, CubeClient]]:
    require(*orthanc_available())
    env = {"CUBE_LEASE_SECONDS": "3", **rules_env()}
    async for pair in running_stack(stack_config(tmp_path / "stack", extra_env=env)):
        yield pair


async def test_ct_from_pacs_runs_emphysema_and_the_sc_goes_back(
    pacs_stack: tuple[Stack, CubeClient], tmp_path: Path
) -> None:
    stack, client = pacs_stack
    bridge_url = f"http://127.0.0.1:{stack.config.pacs_api_port}/"
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        async with PacsBridgeClient(bridge_url) as bridge:
            result = await run_emphysema_pacs_demo(client, bridge, orthanc, tmp_path / "demo")
        # What the result's checks rest on, seen in Orthanc directly.
        [study] = orthanc.rest("GET", "/studies?expand")
        sc = orthanc.lookup(result.sc_uid, "Instance")
        assert sc is not None
        sc_tags = orthanc.rest("GET", f"/instances/{sc}/simplified-tags")

    assert result.route.state is RouteState.STARTED
    assert result.route.pipeline == PIPELINE
    assert result.route.calling_aet == "ORTHANC"
    assert all(i.status is InstanceStatus.FINISHED_SUCCESSFULLY for i in result.instances)
    assert {i.plugin_name for i in result.instances} >= {"pl-dcm2nifti", "pl-lung-emphysema"}
    assert result.error <= LAA_TOLERANCE, result.report
    assert result.report["source"]["StudyInstanceUID"] == result.study_uid
    assert result.sc_uid == result.report["secondary_capture"]["SOPInstanceUID"]
    # The CT and the SC, in one study.
    assert study["MainDicomTags"]["StudyInstanceUID"] == result.study_uid
    assert len(study["Series"]) == 2
    assert sorted(result.study_classes) == sorted([CT_CLASS, SC_CLASS])
    assert sc_tags["StudyInstanceUID"] == result.study_uid
    assert sc_tags["SOPClassUID"] == SC_CLASS
    assert result.ok
