"""Query/retrieve against a PACS: C-ECHO, C-FIND (patient, study, series), C-MOVE and C-GET.

pynetdicom's SCU calls block, so each operation runs in a worker thread
behind an async method of :class:`DicomClient`. pynetdicom's failures
(association refused or aborted, DIMSE timeouts, failure statuses) become
:class:`~pacs_bridge.errors.DicomNetworkError` here; bad queries become
:class:`~pacs_bridge.errors.InvalidRequest` before any network traffic.

Retrieved instances arrive at the bridge's receiver: by C-MOVE (the PACS opens
an association to our AE title, which it must know) or, with C-GET, on the
query association itself, through the receiver's C-STORE handler.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacs_bridge.errors import DicomNetworkError, InvalidRequest
from pacs_bridge.schema import (
    PacsService,
    QueryLevel,
    RetrieveIn,
    RetrieveMethod,
    RetrieveState,
    RetrieveStatus,
)

if TYPE_CHECKING:
    from pacs_bridge.receiver import Receiver

#: Attributes returned at each level besides those queried (PS3.4 C.6.1.1 and C.6.2.1).
RETURN_KEYS: dict[QueryLevel, tuple[str, ...]] = {
    QueryLevel.PATIENT: (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
    ),
    QueryLevel.STUDY: (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "AccessionNumber",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    QueryLevel.SERIES: (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "SeriesDescription",
        "Modality",
        "NumberOfSeriesRelatedInstances",
    ),
}
#: Patient and study attributes an export copies from the original study (PS3.3 C.7.1.1, C.7.2.1).
STUDY_KEYS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
    "ReferringPhysicianName",
)
#: Most presentation contexts one association may request (PS3.8 9.3.2.2: odd IDs 1-255).
MAX_CONTEXTS = 128

#: DIMSE statuses (PS3.7 C): pending, success and cancel.
PENDING = (0xFF00, 0xFF01)
SUCCESS = 0x0000
CANCEL = 0xFE00
WARNING = 0xB000


def identifier(level: QueryLevel, query: dict[str, str]) -> Dataset:
    """The C-FIND identifier: ``query``'s matches plus the level's return keys.

    Raises:
        InvalidRequest: an unknown keyword, or a sequence attribute.
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    for keyword in (*RETURN_KEYS[level], *query):
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise InvalidRequest(f"{keyword!r} is not a DICOM keyword")
        vr = dictionary_VR(tag)
        if vr == "SQ":
            raise InvalidRequest(f"{keyword!r} is a sequence; it cannot be matched")
        ds.add_new(tag, vr.split(" or ")[0], query.get(keyword, ""))
    return ds


@dataclass(frozen=True)
class ExportResult:
    """What a C-STORE export sent: SOPInstanceUIDs stored, and failures by file."""

    stored: list[str]
    failed: dict[str, str]


def _as_dict(ds: Dataset) -> dict[str, str]:
    out = {}
    for elem in ds:
        if elem.keyword and elem.keyword != "QueryRetrieveLevel" and elem.VR != "SQ":
            value = elem.value
            if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
                out[elem.keyword] = "\\".join(str(v) for v in value)
            else:
                out[elem.keyword] = "" if value is None else str(value)
    return out


class DicomClient:
    """Query/retrieve with one PACS service as ``our_aet`` (the service's ``our_aet`` wins)."""

    def __init__(
        self, service: PacsService, our_aet: str, *, dimse_timeout: float | None = 120.0
    ) -> None:
        self.service = service
        self.our_aet = service.our_aet or our_aet
        self.dimse_timeout = dimse_timeout

    def _associate(
        self, contexts: list[Any], *, roles: list[Any] | None = None, handlers: Any = None
    ) -> Any:
        ae = AE(ae_title=self.our_aet)
        ae.maximum_pdu_size = 0
        ae.dimse_timeout = self.dimse_timeout
        ae.acse_timeout = 30
        ae.network_timeout = 60
        for cx in contexts:
            ae.add_requested_context(cx)
        svc = self.service
        try:
            assoc = ae.associate(
                svc.host,
                svc.port,
                ae_title=svc.aet,
                ext_neg=roles,
                evt_handlers=handlers or [],
            )
        except (OSError, ValueError) as exc:
            raise DicomNetworkError(f"{svc.name}: cannot associate: {exc}") from exc
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted or unreachable"
            raise DicomNetworkError(
                f"{svc.name} ({svc.aet}@{svc.host}:{svc.port}) {why} the association "
                f"from {self.our_aet}"
            )
        return assoc

    def _echo(self) -> None:
        assoc = self._associate([Verification])
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or int(status.get("Status", -1)) != SUCCESS:
            raise DicomNetworkError(f"{self.service.name}: C-ECHO failed ({status!r})")

    async def echo(self) -> None:
        """C-ECHO the PACS.

        Raises:
            DicomNetworkError: no association or a failure status.
        """
        await asyncio.to_thread(self._echo)

    def _find(self, level: QueryLevel, query: dict[str, str]) -> list[dict[str, str]]:
        ds = identifier(level, query)
        model = (
            PatientRootQueryRetrieveInformationModelFind
            if level is QueryLevel.PATIENT
            else StudyRootQueryRetrieveInformationModelFind
        )
        assoc = self._associate([model])
        results: list[dict[str, str]] = []
        try:
            for status, found in assoc.send_c_find(ds, model):
                if not status:
                    raise DicomNetworkError(f"{self.service.name}: C-FIND timed out or aborted")
                code = int(status.Status)
                if code in PENDING:
                    if found is not None:
                        results.append(_as_dict(found))
                elif code != SUCCESS:
                    raise DicomNetworkError(
                        f"{self.service.name}: C-FIND failed with status 0x{code:04X}"
                    )
        finally:
            if assoc.is_established:
                assoc.release()
        return results

    async def find(self, level: QueryLevel, query: dict[str, str]) -> list[dict[str, str]]:
        """C-FIND at ``level``; one dict (DICOM keyword → value) per match.

        Patient level uses the Patient Root model, study and series levels the
        Study Root model (a series query should give its StudyInstanceUID).

        Raises:
            InvalidRequest: a bad keyword.
            DicomNetworkError: no association, a failure status or a timeout.
        """
        identifier(level, query)  # reject bad keywords before any network traffic
        return await asyncio.to_thread(self._find, level, query)

    def _retrieve_identifier(self, what: RetrieveIn) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES" if what.SeriesInstanceUID else "STUDY"
        ds.StudyInstanceUID = what.StudyInstanceUID
        if what.SeriesInstanceUID:
            ds.SeriesInstanceUID = what.SeriesInstanceUID
        return ds

    @staticmethod
    def _progress(status: Dataset, into: RetrieveStatus) -> None:
        for attr, keyword in (
            ("remaining", "NumberOfRemainingSuboperations"),
            ("completed", "NumberOfCompletedSuboperations"),
            ("failed", "NumberOfFailedSuboperations"),
            ("warning", "NumberOfWarningSuboperations"),
        ):
            value = status.get(keyword)
            if value is not None:
                setattr(into, attr, int(value))

    def _drive(self, responses: Any, into: RetrieveStatus, op: str) -> RetrieveStatus:
        for status, _ in responses:
            if not status:
                raise DicomNetworkError(f"{self.service.name}: {op} timed out or aborted")
            code = int(status.Status)
            self._progress(status, into)
            if code in PENDING:
                continue
            if code == SUCCESS or (code & 0xF000) == WARNING:
                into.state = RetrieveState.DONE if not into.failed else RetrieveState.FAILED
                into.remaining = 0
                if into.failed:
                    into.error = f"{into.failed} sub-operations failed"
            else:
                into.state = RetrieveState.FAILED
                comment = status.get("ErrorComment", "")
                into.error = f"{op} failed with status 0x{code:04X} {comment}".strip()
        return into

    def _move(self, what: RetrieveIn, dest_aet: str, into: RetrieveStatus) -> RetrieveStatus:
        model = StudyRootQueryRetrieveInformationModelMove
        assoc = self._associate([model])
        try:
            responses = assoc.send_c_move(self._retrieve_identifier(what), dest_aet, model)
            return self._drive(responses, into, "C-MOVE")
        finally:
            if assoc.is_established:
                assoc.release()

    async def move(
        self, what: RetrieveIn, dest_aet: str, into: RetrieveStatus | None = None
    ) -> RetrieveStatus:
        """C-MOVE a study or series to ``dest_aet`` (our receiver, known to the PACS).

        ``into`` is updated with the progress of pending responses while it runs.
        A failure status ends in state ``failed`` with the status in ``error``.

        Raises:
            DicomNetworkError: no association, or it was aborted or timed out.
        """
        into = into or RetrieveStatus(id=0, service=self.service.name, method=RetrieveMethod.MOVE)
        return await asyncio.to_thread(self._move, what, dest_aet, into)

    def _get(self, what: RetrieveIn, receiver: Receiver, into: RetrieveStatus) -> RetrieveStatus:
        model = StudyRootQueryRetrieveInformationModelGet
        storage = [cx.abstract_syntax for cx in StoragePresentationContexts if cx.abstract_syntax]
        # 120 storage contexts + the C-GET one: within the 128 an association may request
        contexts = [model, *storage]
        roles = [build_role(uid, scp_role=True) for uid in storage]
        handlers = [(evt.EVT_C_STORE, receiver.handle_store)]
        assoc = self._associate(contexts, roles=roles, handlers=handlers)
        try:
            responses = assoc.send_c_get(self._retrieve_identifier(what), model)
            return self._drive(responses, into, "C-GET")
        finally:
            if assoc.is_established:
                assoc.release()
            receiver.association_ended(assoc)

    async def get(
        self, what: RetrieveIn, receiver: Receiver, into: RetrieveStatus | None = None
    ) -> RetrieveStatus:
        """C-GET a study or series; instances are filed and registered by ``receiver``.

        Raises:
            DicomNetworkError: no association, or it was aborted or timed out.
        """
        into = into or RetrieveStatus(id=0, service=self.service.name, method=RetrieveMethod.GET)
        return await asyncio.to_thread(self._get, what, receiver, into)

    def _export(self, files: list[Path], study: Dataset | None) -> ExportResult:
        datasets: list[tuple[Path, Dataset]] = []
        failed: dict[str, str] = {}
        for path in files:
            try:
                ds = dcmread(path)
            except (OSError, InvalidDicomError, ValueError) as exc:
                failed[str(path)] = f"unreadable: {exc}"
                continue
            if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
                failed[str(path)] = "no SOPClassUID or SOPInstanceUID"
                continue
            if study is not None:
                for keyword in STUDY_KEYS:
                    if keyword in study:
                        setattr(ds, keyword, study.get(keyword))
            datasets.append((path, ds))
        pairs = sorted(
            {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets}
        )
        syntaxes: dict[str, list[str]] = {}
        for sop, ts in pairs:
            syntaxes.setdefault(sop, [ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            if ts not in syntaxes[sop]:
                syntaxes[sop].insert(0, ts)
        if len(syntaxes) > MAX_CONTEXTS:
            raise InvalidRequest(f"{len(syntaxes)} SOP classes: at most {MAX_CONTEXTS} per export")
        stored: list[str] = []
        if not datasets:
            return ExportResult(stored, failed)
        ae = AE(ae_title=self.our_aet)
        ae.maximum_pdu_size = 0
        ae.dimse_timeout = self.dimse_timeout
        for sop, tss in syntaxes.items():
            ae.add_requested_context(sop, list(dict.fromkeys(tss)))
        svc = self.service
        try:
            assoc = ae.associate(svc.host, svc.port, ae_title=svc.aet)
        except (OSError, ValueError) as exc:
            raise DicomNetworkError(f"{svc.name}: cannot associate: {exc}") from exc
        if not assoc.is_established:
            raise DicomNetworkError(f"{svc.name} refused the association from {self.our_aet}")
        try:
            for path, outgoing in datasets:
                try:
                    status = assoc.send_c_store(outgoing)
                except ValueError as exc:  # no accepted context for this SOP class
                    failed[str(path)] = str(exc)
                    continue
                if not status:
                    raise DicomNetworkError(f"{svc.name}: C-STORE timed out or aborted")
                code = int(status.Status)
                if code == SUCCESS or (code & 0xF000) == WARNING:
                    stored.append(str(outgoing.SOPInstanceUID))
                else:
                    failed[str(path)] = f"status 0x{code:04X}"
        finally:
            if assoc.is_established:
                assoc.release()
        return ExportResult(stored, failed)

    async def export(self, files: list[Path], study: Dataset | None = None) -> ExportResult:
        """C-STORE DICOM ``files`` (results of a feed) to the PACS in one association.

        With ``study``, each dataset takes its patient and study attributes
        (:data:`STUDY_KEYS`) so it files into the original study at the PACS.
        Unreadable files and failure statuses are reported per file.

        Raises:
            InvalidRequest: more SOP classes than an association can carry.
            DicomNetworkError: no association, or it was aborted or timed out.
        """
        return await asyncio.to_thread(self._export, files, study)
