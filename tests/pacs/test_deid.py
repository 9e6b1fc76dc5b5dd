"""De-identification: every attribute of the basic profile, at the top level and in sequences."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pacs_bridge.deid import (
    BASIC_PROFILE,
    METHOD,
    Action,
    deidentify,
    deidentify_encoded,
    pseudonym,
    remap_uid,
)
from pacs_bridge.errors import InvalidDicom
from pacs_bridge.receiver import Receiver
from pacs_bridge.registrar import JsonlRegistry
from pacs_bridge.settings import BridgeSettings, Route
from pydantic import SecretStr
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.support.dicom import write_ct_series
from tests.support.pacs import storescu

SECRET = "test-secret"

#: The attributes of PS3.15 Table E.1-1 the profile must handle, with their actions.
EXPECTED = {
    "X": """IssuerOfPatientID PatientBirthTime OtherPatientIDs OtherPatientNames
        OtherPatientIDsSequence PatientBirthName PatientAge PatientSize PatientWeight
        PatientAddress PatientMotherBirthName MilitaryRank BranchOfService MedicalRecordLocator
        MedicalAlerts Allergies CountryOfResidence RegionOfResidence PatientTelephoneNumbers
        EthnicGroup Occupation SmokingStatus AdditionalPatientHistory PregnancyStatus
        LastMenstrualDate PatientReligiousPreference PatientComments
        PatientInsurancePlanCodeSequence PatientPrimaryLanguageCodeSequence
        PatientPrimaryLanguageModifierCodeSequence ReferencedPatientSequence
        ResponsibleOrganization ResponsiblePerson PatientState AdmissionID
        AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence CurrentPatientLocation
        PatientInstitutionResidence SeriesDate SeriesTime AcquisitionDate AcquisitionTime
        AcquisitionDateTime OverlayDate OverlayTime CurveDate CurveTime InstanceCreationDate
        InstanceCreationTime TimezoneOffsetFromUTC StudyDescription SeriesDescription
        ImageComments StudyComments DerivationDescription ProtocolName AcquisitionComments
        AcquisitionDeviceProcessingDescription ReferencedStudySequence
        ReferencedPerformedProcedureStepSequence RequestAttributesSequence ContentSequence
        OriginalAttributesSequence InstitutionName InstitutionAddress InstitutionCodeSequence
        InstitutionalDepartmentName ReferringPhysicianAddress ReferringPhysicianTelephoneNumbers
        ReferringPhysicianIdentificationSequence ConsultingPhysicianName PhysiciansOfRecord
        PhysiciansOfRecordIdentificationSequence PerformingPhysicianName
        PerformingPhysicianIdentificationSequence NameOfPhysiciansReadingStudy
        PhysiciansReadingStudyIdentificationSequence OperatorsName
        OperatorIdentificationSequence RequestingPhysician RequestingService
        ScheduledPerformingPhysicianName VerifyingOrganization AuthorObserverSequence
        ParticipantSequence CustodialOrganizationSequence StationName DeviceSerialNumber
        DetectorID PlateID GantryID CassetteID GeneratorID PerformedStationAETitle
        PerformedStationName PerformedLocation ScheduledStationAETitle ScheduledStationName
        ScheduledProcedureStepLocation PerformedProcedureStepStartDate
        PerformedProcedureStepStartTime PerformedProcedureStepEndDate
        PerformedProcedureStepEndTime PerformedProcedureStepID
        PerformedProcedureStepDescription CommentsOnThePerformedProcedureStep
        ScheduledProcedureStepStartDate ScheduledProcedureStepStartTime
        ScheduledProcedureStepEndDate ScheduledProcedureStepEndTime
        ScheduledProcedureStepDescription ScheduledProcedureStepID RequestedProcedureID
        RequestedProcedureDescription RequestedProcedureComments RequestedContrastAgent
        PreMedication PlacerOrderNumberImagingServiceRequest
        FillerOrderNumberImagingServiceRequest TextString TextComments""",
    "Z": """PatientBirthDate PatientSex StudyDate StudyTime ContentDate ContentTime StudyID
        AccessionNumber ReferringPhysicianName ContentCreatorName""",
    "D": "PatientName PatientID VerifyingObserverName PersonName VerificationDateTime",
    "U": """StudyInstanceUID SeriesInstanceUID SOPInstanceUID FrameOfReferenceUID
        SynchronizationFrameOfReferenceUID ReferencedSOPInstanceUID
        ReferencedFrameOfReferenceUID RelatedFrameOfReferenceUID InstanceCreatorUID
        ConcatenationUID DimensionOrganizationUID IrradiationEventUID StorageMediaFileSetUID
        ReferencedSOPInstanceUIDInFile PaletteColorLookupTableUID FailedSOPInstanceUIDList
        DeviceUID UID TargetUID TemplateExtensionCreatorUID TemplateExtensionOrganizationUID
        FiducialUID DoseReferenceUID LargePaletteColorLookupTableUID
        ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
        MediaStorageSOPInstanceUID""",
}


def test_profile_is_exactly_the_listed_attributes() -> None:
    profile = {r.keyword: r.action.value for r in BASIC_PROFILE}
    expected = {k: a for a, names in EXPECTED.items() for k in names.split()}
    assert profile == expected


def _sample(vr: str, n: int) -> object:
    vr = vr.split(" or ")[0]
    return {
        "DA": "20240101",
        "TM": "101010",
        "DT": "20240101101010",
        "PN": "Doe^John",
        "AS": "045Y",
        "CS": "VALUE",
        "UI": f"1.2.826.0.1.3680043.9.{n}",
        "IS": "5",
        "DS": "5.5",
        "US": 5,
        "SS": 5,
        "UL": 5,
        "SL": 5,
        "FL": 5.0,
        "FD": 5.0,
    }.get(vr, "identifying text")


def _dataset() -> Dataset:
    ds = Dataset()
    for n, rule in enumerate(BASIC_PROFILE):
        vr = dictionary_VR(rule.tag)
        if vr == "SQ":
            item = Dataset()
            item.CodeValue = "X1"
            ds.add_new(rule.tag, "SQ", Sequence([item]))
        else:
            ds.add_new(rule.tag, vr.split(" or ")[0], _sample(vr, n))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality = "CT"
    return ds


@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "in-a-sequence"])
def test_every_attribute_gets_its_action(nested: bool) -> None:
    original = _dataset()
    if nested:
        outer = Dataset()
        outer.PatientID = "outer"
        outer.SourceImageSequence = Sequence([original])
        deidentify(outer, SECRET)
        ds = outer.SourceImageSequence[0]
    else:
        ds = deidentify(_dataset(), SECRET)
    for rule in BASIC_PROFILE:
        before = _dataset()[rule.tag]
        if rule.action is Action.REMOVE:
            assert rule.tag not in ds, rule.keyword
            continue
        after = ds[rule.tag]
        if rule.action is Action.EMPTY:
            assert after.value in (None, "", []) or len(after.value) == 0, rule.keyword
        elif rule.action is Action.UID:
            assert after.value == remap_uid(str(before.value), SECRET), rule.keyword
            assert after.value.startswith("2.25.")
        else:
            assert after.value and after.value != before.value, rule.keyword
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # not an identifier: kept
    assert ds.Modality == "CT"


def test_private_curves_overlays_and_markers(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "in", 1)
    ds = dcmread(series.files[0])
    block = ds.private_block(0x0009, "HOSPITAL", create=True)
    block.add_new(0x01, "LO", "private identifier")
    ds.add_new(0x50000010, "US", 1)
    ds.add_new(0x60003000, "OW", b"\0\0")
    ds.add_new(0x60004000, "LT", "overlay comment")
    ds.add_new(0x60000010, "US", 4)  # overlay rows: not an identifier
    deidentify(ds, SECRET)
    assert not any(e.tag.is_private for e in ds)
    assert 0x50000010 not in ds and 0x60003000 not in ds and 0x60004000 not in ds
    assert ds[0x60000010].value == 4
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethod == METHOD
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert ds.PatientID == ds.PatientName == pseudonym(series.patient_id, SECRET)


def test_uids_are_consistent_across_a_study_and_the_file_meta(tmp_path: Path) -> None:
    a = write_ct_series(tmp_path / "a", 2)
    b = write_ct_series(tmp_path / "b", 1, study_uid=a.study_uid)
    outs = [dcmread(_deid_file(p)) for p in [*a.files, *b.files]]
    assert len({str(d.StudyInstanceUID) for d in outs}) == 1
    assert outs[0].StudyInstanceUID == remap_uid(a.study_uid, SECRET)
    assert outs[0].SeriesInstanceUID == outs[1].SeriesInstanceUID != outs[2].SeriesInstanceUID
    for d, sop in zip(outs, [*a.sop_uids, *b.sop_uids], strict=True):
        assert d.SOPInstanceUID == remap_uid(sop, SECRET) == d.file_meta.MediaStorageSOPInstanceUID
    # deterministic per secret, different under another secret
    again = dcmread(_deid_file(a.files[0]))
    assert again.SOPInstanceUID == outs[0].SOPInstanceUID
    assert remap_uid(a.sop_uids[0], "other") != outs[0].SOPInstanceUID
    src = dcmread(a.files[0])
    assert outs[0].PixelData == src.PixelData
    assert outs[0].file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID


def _deid_file(path: Path) -> Path:
    out = path.with_suffix(".deid")
    out.write_bytes(deidentify_encoded(path.read_bytes(), SECRET))
    return out


def test_unparseable_bytes() -> None:
    with pytest.raises(InvalidDicom):
        deidentify_encoded(b"\0" * 10, SECRET)


@pytest.mark.usefixtures("dcmtk")
async def test_route_deidentifies_before_storing(settings: BridgeSettings, tmp_path: Path) -> None:
    settings.routes = [Route(calling_aet="STORESCU", deidentify=True, pacs_name="RESEARCH")]
    settings.deid_secret = SecretStr(SECRET)
    series = write_ct_series(tmp_path / "in", 3)
    async with Receiver(settings, JsonlRegistry(tmp_path / "r.jsonl")) as rx:
        proc = await asyncio.to_thread(storescu, "127.0.0.1", rx.port, series.files)
        assert proc.returncode == 0, proc.stderr
        [reg] = await rx.assembler.wait_for(3, timeout=10)
    assert reg.pacs_identifier == "RESEARCH"
    assert reg.meta.PatientID == reg.meta.PatientName == pseudonym("PAT001", SECRET)
    assert reg.meta.SeriesInstanceUID == remap_uid(series.series_uid, SECRET)
    assert reg.meta.StudyDescription == reg.meta.SeriesDescription == ""
    assert reg.meta.StudyDate == reg.meta.PatientBirthDate == ""
    for f in reg.files:
        raw = (settings.storage_root / f).read_bytes()
        assert b"Doe^Jane" not in raw and b"PAT001" not in raw
        assert series.study_uid.encode() not in raw
        ds = dcmread(settings.storage_root / f)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
