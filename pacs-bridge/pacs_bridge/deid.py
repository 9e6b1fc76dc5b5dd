"""De-identification: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

:data:`BASIC_PROFILE` lists every attribute handled, with its action from
Table E.1-1 (basic profile column). Where the table gives a choice (X/Z,
Z/D, X/Z/D, X/D) the weakest action is applied, except for attributes that
are Type 1 or 2 in the common image IODs (study date and time, content date
and time, study ID, referring physician, accession number, patient
attributes), which keep their element with an empty or dummy value.

* ``X`` removes the element; ``Z`` empties it; ``D`` puts a dummy of its VR;
* ``U`` maps the UID through :func:`remap_uid`, deterministic for a secret:
  the same original UID always gives the same new one, so a study sent over
  several associations (or re-sent later) stays one study, and references
  between instances (0008,1155 ...) stay valid;
* PatientID and PatientName (``Z`` in the table, which allows a dummy) get a
  pseudonym derived from the original PatientID and the secret, so the
  instances of one patient stay together;
* every private element, curve (50xx) and overlay data or comment (60xx,3000
  and 60xx,4000) is removed;
* the rules apply inside sequences too, at every depth, and the file meta's
  MediaStorageSOPInstanceUID follows the new SOPInstanceUID;
* PatientIdentityRemoved (0012,0062) = YES, DeidentificationMethod
  (0012,0063), DeidentificationMethodCodeSequence (0012,0064) = DCM 113100
  and LongitudinalTemporalInformationModified (0028,0303) = REMOVED are added.

Pixel data is not cleaned (burned-in text needs the Clean Pixel option).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from enum import StrEnum
from io import BytesIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from pacs_bridge.errors import InvalidDicom

#: The value of DeidentificationMethod (0012,0063).
METHOD = "chris-fabric pacs-bridge: PS 3.15 Table E.1-1 Basic Profile"


class Action(StrEnum):
    """Actions of PS3.15 Table E.1-1."""

    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    UID = "U"


@dataclass(frozen=True)
class Rule:
    """One row of the profile: an attribute and what is done to it."""

    keyword: str
    action: Action

    @property
    def tag(self) -> BaseTag:
        """The attribute's tag."""
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return Tag(tag)


_X, _Z, _D, _U = Action.REMOVE, Action.EMPTY, Action.DUMMY, Action.UID

#: Every attribute handled (besides private, curve and overlay groups; see the docstring).
BASIC_PROFILE: tuple[Rule, ...] = tuple(
    Rule(k, a)
    for k, a in (
        # identifying UIDs: U
        ("StudyInstanceUID", _U),
        ("SeriesInstanceUID", _U),
        ("SOPInstanceUID", _U),
        ("FrameOfReferenceUID", _U),
        ("SynchronizationFrameOfReferenceUID", _U),
        ("ReferencedSOPInstanceUID", _U),
        ("ReferencedFrameOfReferenceUID", _U),
        ("RelatedFrameOfReferenceUID", _U),
        ("InstanceCreatorUID", _U),
        ("ConcatenationUID", _U),
        ("DimensionOrganizationUID", _U),
        ("IrradiationEventUID", _U),
        ("StorageMediaFileSetUID", _U),
        ("ReferencedSOPInstanceUIDInFile", _U),
        ("PaletteColorLookupTableUID", _U),
        ("FailedSOPInstanceUIDList", _U),
        ("DeviceUID", _U),
        ("UID", _U),
        ("TargetUID", _U),
        ("TemplateExtensionCreatorUID", _U),
        ("TemplateExtensionOrganizationUID", _U),
        ("FiducialUID", _U),
        ("DoseReferenceUID", _U),
        ("LargePaletteColorLookupTableUID", _U),
        ("ReferencedGeneralPurposeScheduledProcedureStepTransactionUID", _U),
        ("MediaStorageSOPInstanceUID", _U),
        # patient: the pseudonym (D) for the IDs, Z or X for the rest
        ("PatientName", _D),
        ("PatientID", _D),
        ("PatientBirthDate", _Z),
        ("PatientSex", _Z),
        ("IssuerOfPatientID", _X),
        ("PatientBirthTime", _X),
        ("OtherPatientIDs", _X),
        ("OtherPatientNames", _X),
        ("OtherPatientIDsSequence", _X),
        ("PatientBirthName", _X),
        ("PatientAge", _X),
        ("PatientSize", _X),
        ("PatientWeight", _X),
        ("PatientAddress", _X),
        ("PatientMotherBirthName", _X),
        ("MilitaryRank", _X),
        ("BranchOfService", _X),
        ("MedicalRecordLocator", _X),
        ("MedicalAlerts", _X),
        ("Allergies", _X),
        ("CountryOfResidence", _X),
        ("RegionOfResidence", _X),
        ("PatientTelephoneNumbers", _X),
        ("EthnicGroup", _X),
        ("Occupation", _X),
        ("SmokingStatus", _X),
        ("AdditionalPatientHistory", _X),
        ("PregnancyStatus", _X),
        ("LastMenstrualDate", _X),
        ("PatientReligiousPreference", _X),
        ("PatientComments", _X),
        ("PatientInsurancePlanCodeSequence", _X),
        ("PatientPrimaryLanguageCodeSequence", _X),
        ("PatientPrimaryLanguageModifierCodeSequence", _X),
        ("ReferencedPatientSequence", _X),
        ("ResponsibleOrganization", _X),
        ("ResponsiblePerson", _X),
        ("PatientState", _X),
        ("AdmissionID", _X),
        ("AdmittingDiagnosesDescription", _X),
        ("AdmittingDiagnosesCodeSequence", _X),
        ("CurrentPatientLocation", _X),
        ("PatientInstitutionResidence", _X),
        # study, series and instance dates, times, identifiers and descriptions
        ("StudyDate", _Z),
        ("StudyTime", _Z),
        ("ContentDate", _Z),
        ("ContentTime", _Z),
        ("StudyID", _Z),
        ("AccessionNumber", _Z),
        ("ReferringPhysicianName", _Z),
        ("SeriesDate", _X),
        ("SeriesTime", _X),
        ("AcquisitionDate", _X),
        ("AcquisitionTime", _X),
        ("AcquisitionDateTime", _X),
        ("OverlayDate", _X),
        ("OverlayTime", _X),
        ("CurveDate", _X),
        ("CurveTime", _X),
        ("InstanceCreationDate", _X),
        ("InstanceCreationTime", _X),
        ("TimezoneOffsetFromUTC", _X),
        ("StudyDescription", _X),
        ("SeriesDescription", _X),
        ("ImageComments", _X),
        ("StudyComments", _X),
        ("DerivationDescription", _X),
        ("ProtocolName", _X),
        ("AcquisitionComments", _X),
        ("AcquisitionDeviceProcessingDescription", _X),
        ("ReferencedStudySequence", _X),
        ("ReferencedPerformedProcedureStepSequence", _X),
        ("RequestAttributesSequence", _X),
        ("ContentSequence", _X),
        ("OriginalAttributesSequence", _X),
        # people and places
        ("InstitutionName", _X),
        ("InstitutionAddress", _X),
        ("InstitutionCodeSequence", _X),
        ("InstitutionalDepartmentName", _X),
        ("ReferringPhysicianAddress", _X),
        ("ReferringPhysicianTelephoneNumbers", _X),
        ("ReferringPhysicianIdentificationSequence", _X),
        ("ConsultingPhysicianName", _X),
        ("PhysiciansOfRecord", _X),
        ("PhysiciansOfRecordIdentificationSequence", _X),
        ("PerformingPhysicianName", _X),
        ("PerformingPhysicianIdentificationSequence", _X),
        ("NameOfPhysiciansReadingStudy", _X),
        ("PhysiciansReadingStudyIdentificationSequence", _X),
        ("OperatorsName", _X),
        ("OperatorIdentificationSequence", _X),
        ("RequestingPhysician", _X),
        ("RequestingService", _X),
        ("ScheduledPerformingPhysicianName", _X),
        ("ContentCreatorName", _Z),
        ("VerifyingObserverName", _D),
        ("VerifyingOrganization", _X),
        ("PersonName", _D),
        ("AuthorObserverSequence", _X),
        ("ParticipantSequence", _X),
        ("CustodialOrganizationSequence", _X),
        # devices and stations
        ("StationName", _X),
        ("DeviceSerialNumber", _X),
        ("DetectorID", _X),
        ("PlateID", _X),
        ("GantryID", _X),
        ("CassetteID", _X),
        ("GeneratorID", _X),
        ("PerformedStationAETitle", _X),
        ("PerformedStationName", _X),
        ("PerformedLocation", _X),
        ("ScheduledStationAETitle", _X),
        ("ScheduledStationName", _X),
        ("ScheduledProcedureStepLocation", _X),
        # procedure steps and orders
        ("PerformedProcedureStepStartDate", _X),
        ("PerformedProcedureStepStartTime", _X),
        ("PerformedProcedureStepEndDate", _X),
        ("PerformedProcedureStepEndTime", _X),
        ("PerformedProcedureStepID", _X),
        ("PerformedProcedureStepDescription", _X),
        ("CommentsOnThePerformedProcedureStep", _X),
        ("ScheduledProcedureStepStartDate", _X),
        ("ScheduledProcedureStepStartTime", _X),
        ("ScheduledProcedureStepEndDate", _X),
        ("ScheduledProcedureStepEndTime", _X),
        ("ScheduledProcedureStepDescription", _X),
        ("ScheduledProcedureStepID", _X),
        ("RequestedProcedureID", _X),
        ("RequestedProcedureDescription", _X),
        ("RequestedProcedureComments", _X),
        ("RequestedContrastAgent", _X),
        ("PreMedication", _X),
        ("PlacerOrderNumberImagingServiceRequest", _X),
        ("FillerOrderNumberImagingServiceRequest", _X),
        ("VerificationDateTime", _D),
        ("TextString", _X),
        ("TextComments", _X),
    )
)

_RULES: dict[BaseTag, Rule] = {r.tag: r for r in BASIC_PROFILE}

#: Dummies by VR for ``D`` (PS3.5 Table 6.2-1 formats).
_DUMMY: dict[str, object] = {
    "DA": "19000101",
    "TM": "000000.00",
    "DT": "19000101000000",
    "PN": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMOUS",
    "IS": "0",
    "DS": "0",
}


def remap_uid(uid: str, secret: str) -> str:
    """The replacement of ``uid``: ``2.25.<int>`` (PS3.5 B.2) of a name-based UUID.

    The UUID's 128 bits come from HMAC-SHA256 of the UID under ``secret`` (version
    bits as a SHA-1 name-based UUID's), so the mapping is deterministic and cannot be
    inverted without the secret. pydicom's ``generate_uid(prefix=None, ...)`` ignores
    its entropy sources and is random, so it cannot serve here.
    """
    digest = hmac.new(secret.encode(), uid.strip("\0 ").encode(), hashlib.sha256).digest()
    return f"2.25.{uuid.UUID(bytes=digest[:16], version=5).int}"


def pseudonym(patient_id: str, secret: str) -> str:
    """The patient's replacement ID and name: ``ANON-`` and 12 hex digits of an HMAC."""
    digest = hmac.new(secret.encode(), patient_id.encode(), hashlib.sha256).hexdigest()
    return f"ANON-{digest[:12].upper()}"


def _apply(ds: Dataset, secret: str, alias: str) -> None:
    for elem in list(ds):
        tag = elem.tag
        if (
            tag.is_private
            or (tag.group & 0xFF00) == 0x5000
            or ((tag.group & 0xFF00) == 0x6000 and tag.element in (0x3000, 0x4000))
        ):
            del ds[tag]
            continue
        rule = _RULES.get(tag)
        if rule is None:
            if elem.VR == "SQ":
                for item in elem.value:
                    _apply(item, secret, alias)
            continue
        _act(ds, elem, rule.action, secret, alias)


def _act(ds: Dataset, elem: DataElement, action: Action, secret: str, alias: str) -> None:
    if action is Action.REMOVE:
        del ds[elem.tag]
    elif action is Action.EMPTY:
        elem.value = Sequence() if elem.VR == "SQ" else None
    elif action is Action.UID:
        if elem.VM > 1:
            elem.value = [remap_uid(str(u), secret) for u in elem.value]
        elif elem.value:
            elem.value = remap_uid(str(elem.value), secret)
    elif elem.tag in (Tag(0x00100010), Tag(0x00100020)):
        elem.value = alias
    else:
        vr = elem.VR if elem.VR in _DUMMY else dictionary_VR(elem.tag)
        elem.value = _DUMMY.get(vr, "ANONYMOUS")


def deidentify(ds: Dataset, secret: str) -> Dataset:
    """Apply the basic profile to ``ds`` and its file meta, in place; returns ``ds``."""
    alias = pseudonym(str(ds.get("PatientID", "")), secret)
    _apply(ds, secret, alias)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    return ds


def deidentify_encoded(encoded: bytes, secret: str) -> bytes:
    """De-identify an encoded DICOM file (preamble and file meta), keeping its transfer syntax.

    Raises:
        InvalidDicom: the bytes are not a parseable DICOM file.
    """
    try:
        ds = dcmread(BytesIO(encoded))
        deidentify(ds, secret)
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
    except (InvalidDicomError, ValueError, KeyError, EOFError, TypeError) as exc:
        raise InvalidDicom(f"cannot de-identify: {exc}") from exc
    return out.getvalue()
