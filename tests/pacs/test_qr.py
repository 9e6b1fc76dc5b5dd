"""Query/retrieve against a real Orthanc: C-FIND at three levels, C-MOVE and C-GET.

The test data goes into Orthanc with DCMTK's storescu; our AE (CHRIS) is
registered in Orthanc as a modality at the receiver's port, as a PACS must
know a C-MOVE destination (and Orthanc refuses C-FIND from unknown AEs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pacs_bridge.errors import DicomNetworkError, InvalidRequest
from pacs_bridge.receiver import Receiver
from pacs_bridge.registrar import JsonlRegistry
from pacs_bridge.schema import PacsService, QueryLevel, RetrieveIn, RetrieveState
from pacs_bridge.scu import DicomClient
from pacs_bridge.settings import BridgeSettings
from pydicom import dcmread

from tests.pacs.conftest import Pacs
from tests.support.components import free_port
from tests.support.dicom import write_ct_series

pytestmark = pytest.mark.usefixtures("dcmtk", "orthanc_binary")


@pytest.fixture
def service(pacs: Pacs) -> PacsService:
    return PacsService(
        name="orthanc", aet="ORTHANC", host="127.0.0.1", port=pacs.orthanc.dicom_port
    )


@pytest.fixture
async def bridge(pacs: Pacs, settings: BridgeSettings) -> AsyncIterator[Receiver]:
    settings.dicom_port = pacs.receiver_port
    async with Receiver(settings, JsonlRegistry(settings.resolved_registry_file())) as rx:
        yield rx


async def test_echo(service: PacsService) -> None:
    await DicomClient(service, "CHRIS").echo()


async def test_find_patient_study_series(pacs: Pacs, service: PacsService) -> None:
    client = DicomClient(service, "CHRIS")
    patients = await client.find(QueryLevel.PATIENT, {"PatientID": "PAT-A"})
    assert [(p["PatientID"], p["PatientName"]) for p in patients] == [("PAT-A", "Alpha^Ann")]
    studies = await client.find(QueryLevel.STUDY, {"PatientName": "*a*"})
    assert sorted(s["PatientID"] for s in studies) == ["PAT-A", "PAT-B"]
    [study] = [s for s in studies if s["PatientID"] == "PAT-A"]
    assert study["StudyInstanceUID"] == pacs.series[0].study_uid
    assert study["NumberOfStudyRelatedInstances"] == "7"
    assert study["StudyDescription"] == "Head^Routine"
    series = await client.find(QueryLevel.SERIES, {"StudyInstanceUID": study["StudyInstanceUID"]})
    got = {s["SeriesInstanceUID"]: s for s in series}
    assert set(got) == {pacs.series[0].series_uid, pacs.series[1].series_uid}
    assert got[pacs.series[1].series_uid]["NumberOfSeriesRelatedInstances"] == "3"
    assert got[pacs.series[1].series_uid]["SeriesDescription"] == "CORONAL"
    assert await client.find(QueryLevel.STUDY, {"PatientID": "NOBODY"}) == []


async def test_bad_query_keyword(service: PacsService) -> None:
    with pytest.raises(InvalidRequest, match="not a DICOM keyword"):
        await DicomClient(service, "CHRIS").find(QueryLevel.STUDY, {"PatientNam": "x"})


async def test_unknown_calling_ae_and_unreachable_pacs(service: PacsService) -> None:
    with pytest.raises(DicomNetworkError):
        await DicomClient(service, "STRANGER").find(QueryLevel.STUDY, {"PatientID": "*"})
    gone = service.model_copy(update={"port": free_port()})
    with pytest.raises(DicomNetworkError, match="aborted or unreachable"):
        await DicomClient(gone, "CHRIS").echo()


async def test_move_series_then_study_into_the_receiver(
    pacs: Pacs, service: PacsService, bridge: Receiver
) -> None:
    client = DicomClient(service, "CHRIS")
    a1, a2, _ = pacs.series
    status = await client.move(
        RetrieveIn(StudyInstanceUID=a1.study_uid, SeriesInstanceUID=a1.series_uid), "CHRIS"
    )
    assert status.state is RetrieveState.DONE, status
    assert (status.completed, status.failed, status.remaining) == (4, 0, 0)
    [reg] = await bridge.assembler.wait_for(4, timeout=15)
    assert reg.pacs_identifier == "ORTHANC"
    assert reg.meta.SeriesInstanceUID == a1.series_uid
    assert sorted(p.rsplit("-", 1)[1] for p in reg.files) == sorted(f"{u}.dcm" for u in a1.sop_uids)
    # the whole study: A1 again (duplicates, not registered twice) and A2
    status = await client.move(RetrieveIn(StudyInstanceUID=a1.study_uid), "CHRIS")
    assert status.state is RetrieveState.DONE and status.completed == 7
    regs = await bridge.assembler.wait_for(7, timeout=15)
    assert [len(r.files) for r in regs] == [4, 3]
    assert regs[1].meta.SeriesInstanceUID == a2.series_uid
    assert bridge.counts["duplicate"] == 4


async def test_move_to_an_unknown_destination_fails(pacs: Pacs, service: PacsService) -> None:
    status = await DicomClient(service, "CHRIS").move(
        RetrieveIn(StudyInstanceUID=pacs.series[0].study_uid), "NOWHERE"
    )
    assert status.state is RetrieveState.FAILED
    assert status.error and "status 0xC000" in status.error  # Orthanc: unknown modality


async def test_get_series(pacs: Pacs, service: PacsService, bridge: Receiver) -> None:
    b1 = pacs.series[2]
    status = await DicomClient(service, "CHRIS").get(
        RetrieveIn(StudyInstanceUID=b1.study_uid, SeriesInstanceUID=b1.series_uid), bridge
    )
    assert status.state is RetrieveState.DONE, status
    assert status.completed == 2
    [reg] = await bridge.assembler.wait_for(2, timeout=15)
    assert reg.meta.PatientID == "PAT-B"
    assert reg.pacs_identifier == "ORTHANC"
    assert len(reg.files) == 2


async def test_export_into_the_original_study_found_by_find(
    pacs: Pacs, service: PacsService, tmp_path: Path
) -> None:
    a1 = pacs.series[0]
    result = write_ct_series(tmp_path / "result", 2, patient_id="OTHER", description="RESULT")
    original = dcmread(a1.files[0], stop_before_pixels=True)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    client = DicomClient(service, "CHRIS")
    out = await client.export([*result.files, tmp_path / "junk.dcm"], study=original)
    assert sorted(out.stored) == sorted(result.sop_uids)
    assert list(out.failed) == [str(tmp_path / "junk.dcm")]
    found = await client.find(
        QueryLevel.SERIES,
        {"StudyInstanceUID": a1.study_uid, "SeriesInstanceUID": result.series_uid},
    )
    assert [(s["SeriesDescription"], s["NumberOfSeriesRelatedInstances"]) for s in found] == [
        ("RESULT", "2")
    ]
    [patient] = await client.find(QueryLevel.STUDY, {"StudyInstanceUID": a1.study_uid})
    assert patient["PatientID"] == "PAT-A"
