"""Where received instances are written, laid out as ChRIS lays out PACS files.

``SERVICES/PACS/<pacs>/<PatientID>-<PatientName>-<BirthDate>/
<StudyDescription>-<AccessionNumber>-<StudyDate>/
<SeriesNumber:05>-<SeriesDescription>-<hash(SeriesUID)[:7]>/<InstanceNumber:04>-<SOPInstanceUID>.dcm``
(the layout of FNNDSC oxidicom, so ChRIS tools find files where they expect
them), relative to CUBE's storage root. Every path component is sanitised:
DICOM values may hold ``/``, ``^`` or spaces.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from pacs_bridge.errors import InvalidDicom, StorageFull
from pacs_bridge.schema import SeriesMeta, StoragePath

#: The folder of PACS files under CUBE's storage root (ChRIS's ``SERVICES/PACS``).
PACS_ROOT = "SERVICES/PACS"
#: Attributes read from each received instance (everything else stays unparsed).
META_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "SeriesDescription",
    "SeriesNumber",
    "InstanceNumber",
    "Modality",
    "ProtocolName",
    "SpecificCharacterSet",
)
#: Attributes without which an instance cannot be filed (oxidicom requires the same UIDs).
REQUIRED = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize(value: str, limit: int = 64) -> str:
    """A path component from a DICOM value: unsafe runs become ``_``, at most ``limit`` chars."""
    clean = _UNSAFE.sub("_", value.strip()).strip("._")
    return clean[:limit]


@dataclass(frozen=True)
class Instance:
    """The parts of a received instance the bridge files it by."""

    sop_class_uid: str
    sop_instance_uid: str
    series_number: int | None
    instance_number: int | None
    meta: SeriesMeta


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def instance_of(ds: Dataset) -> Instance:
    """The filing attributes of a (partially) read dataset.

    Raises:
        InvalidDicom: a required UID is missing or empty.
    """
    missing = [k for k in REQUIRED if not _text(ds, k)]
    if missing:
        raise InvalidDicom(f"the dataset lacks {', '.join(missing)}")
    meta = SeriesMeta(
        PatientID=_text(ds, "PatientID"),
        PatientName=_text(ds, "PatientName"),
        PatientBirthDate=_text(ds, "PatientBirthDate"),
        PatientSex=_text(ds, "PatientSex"),
        StudyInstanceUID=_text(ds, "StudyInstanceUID"),
        StudyDate=_text(ds, "StudyDate"),
        StudyDescription=_text(ds, "StudyDescription"),
        AccessionNumber=_text(ds, "AccessionNumber"),
        SeriesInstanceUID=_text(ds, "SeriesInstanceUID"),
        SeriesDescription=_text(ds, "SeriesDescription"),
        Modality=_text(ds, "Modality"),
        ProtocolName=_text(ds, "ProtocolName"),
    )
    return Instance(
        sop_class_uid=_text(ds, "SOPClassUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        meta=meta,
    )


def read_instance(encoded: bytes) -> Instance:
    """Parse only the filing attributes of an encoded DICOM file (preamble and file meta).

    Raises:
        InvalidDicom: the bytes are not a parseable DICOM file, or lack a required UID.
    """
    try:
        ds = dcmread(BytesIO(encoded), stop_before_pixels=True, specific_tags=list(META_TAGS))
        return instance_of(ds)
    except InvalidDicom:
        raise
    except (InvalidDicomError, ValueError, KeyError, EOFError, OverflowError, TypeError) as exc:
        # pydicom raises a variety of exceptions on malformed element headers
        raise InvalidDicom(f"unparseable dataset: {exc}") from exc


def relative_path(pacs_name: str, inst: Instance) -> StoragePath:
    """The instance's path relative to the storage root (see the module docstring)."""
    m = inst.meta
    digest = hashlib.sha256(m.SeriesInstanceUID.encode()).hexdigest()[:7]
    patient = "-".join(
        (sanitize(m.PatientID), sanitize(m.PatientName), sanitize(m.PatientBirthDate))
    )
    study = "-".join(
        (sanitize(m.StudyDescription), sanitize(m.AccessionNumber), sanitize(m.StudyDate))
    )
    series = f"{inst.series_number or 0:05d}-{sanitize(m.SeriesDescription)}-{digest}"
    name = f"{inst.instance_number or 0:04d}-{sanitize(inst.sop_instance_uid, 80)}.dcm"
    return StoragePath("/".join((PACS_ROOT, sanitize(pacs_name, 20), patient, study, series, name)))


class InstanceStore:
    """Writes encoded instances under a storage root; thread-safe (one per receiver).

    An instance already on disk at its path, or being written by another
    association, is a duplicate and is not written again. Files appear
    atomically (written to a temporary name, then renamed), so a registration
    never sees half a file.
    """

    def __init__(self, root: Path, reserve_bytes: int, *, fsync: bool = True) -> None:
        self.root = root
        self.reserve_bytes = reserve_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._writing: set[str] = set()

    def check_space(self, size: int) -> None:
        """Raise :class:`StorageFull` if writing ``size`` bytes would eat into the reserve."""
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if free - size < self.reserve_bytes:
            raise StorageFull(
                f"{free} bytes free, storing {size} would leave less than the "
                f"reserve of {self.reserve_bytes}"
            )

    def write(self, path: StoragePath, encoded: bytes) -> bool:
        """Write ``encoded`` at ``path``; False if it is a duplicate (nothing written).

        Raises:
            StorageFull: not enough free space above the reserve.
            OSError: the filesystem failed.
        """
        with self._lock:
            if path in self._writing:
                return False
            self._writing.add(path)
        try:
            dest = self.root / path
            if dest.exists():
                return False
            self.check_space(len(encoded))
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(encoded)
                    if self.fsync:
                        # the C-STORE-RSP tells the sender it may delete its copy
                        os.fsync(f.fileno())
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return True
        finally:
            with self._lock:
                self._writing.discard(path)
