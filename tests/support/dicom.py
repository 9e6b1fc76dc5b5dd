"""Synthetic DICOM for the PACS tests and benchmark: small CT series made with pydicom.

Nothing is downloaded; every series has its own Study, Series and
FrameOfReference UIDs and one SOPInstanceUID per slice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass(frozen=True)
class Series:
    """A written series: its files and UIDs."""

    files: list[Path]
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    patient_id: str


#: Keeps the low 4 bits of a byte: little-endian high bytes of 12-bit samples.
_HIGH_NIBBLE = bytes(b & 0x0F for b in range(256))


def pixels(size: int, seed: int) -> bytes:
    """``size`` × ``size`` random 12-bit samples in 16-bit little-endian words."""
    data = bytearray(random.Random(seed).randbytes(size * size * 2))
    data[1::2] = bytes(data[1::2]).translate(_HIGH_NIBBLE)
    return bytes(data)


def ct_slice(
    *,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    index: int,
    size: int,
    patient_id: str,
    patient_name: str,
    series_number: int = 1,
    description: str = "AXIAL CT",
) -> Dataset:
    """One CT slice (16-bit, ``size`` × ``size``) as a dataset with its file meta."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.StudyID = "1"
    ds.StudyDescription = "Head^Routine"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = "Doctor^Who"
    ds.InstitutionName = "Test Hospital"
    ds.Modality = "CT"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0, 0, index * 2.5]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = 2.5
    ds.PixelSpacing = [0.5, 0.5]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = pixels(size, index)
    return ds


def write_ct_series(
    folder: Path,
    count: int,
    size: int = 32,
    *,
    patient_id: str = "PAT001",
    patient_name: str = "Doe^Jane",
    study_uid: str | None = None,
    description: str = "AXIAL CT",
) -> Series:
    """Write ``count`` slices of a new CT series into ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    files, sops = [], []
    for i in range(count):
        ds = ct_slice(
            study_uid=study_uid,
            series_uid=series_uid,
            frame_uid=frame_uid,
            index=i,
            size=size,
            patient_id=patient_id,
            patient_name=patient_name,
            description=description,
        )
        path = folder / f"ct{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        sops.append(str(ds.SOPInstanceUID))
    return Series(files, study_uid, series_uid, sops, patient_id)
