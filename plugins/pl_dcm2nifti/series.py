"""DICOM series: find, group, check and stack slices into a volume with its geometry.

Shared by ``pl-dcm2nifti`` and ``pl-lung-emphysema`` (which also reads DICOM
directly). Geometry follows PS3.3 C.7.6.2.1.1: the patient position (LPS, mm)
of pixel (column ``i``, row ``j``) of a slice is

    ImagePositionPatient + i · PixelSpacing[1] · rowCosine + j · PixelSpacing[0] · colCosine

and slices are ordered along the normal ``rowCosine × colCosine``. Errors are
:class:`SeriesError` with a message meant for the plugin's user.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

#: Tolerances for "the same" geometry across slices: direction cosines, mm.
COSINE_TOLERANCE = 1e-4
SPACING_TOLERANCE_MM = 1e-2

#: The patient and study attributes of a series (PS3.3 C.7.1.1, C.7.2.1): what
#: an output made from it copies to stay in the source study.
STUDY_TAGS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
)
#: Tags copied into the JSON sidecar (and used to reference the source study).
SIDECAR_TAGS = (
    *STUDY_TAGS,
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "FrameOfReferenceUID",
    "Modality",
    "SOPClassUID",
    "BodyPartExamined",
    "Manufacturer",
    "KVP",
    "ConvolutionKernel",
    "SliceThickness",
    "PixelSpacing",
    "ImageOrientationPatient",
    "RescaleSlope",
    "RescaleIntercept",
)


class SeriesError(Exception):
    """The input is not usable DICOM: no DICOM at all, or an inconsistent series."""


@dataclass(frozen=True, slots=True)
class Series:
    """The sorted slices of one series."""

    uid: str
    datasets: tuple[Dataset, ...]
    paths: tuple[Path, ...]

    @property
    def first(self) -> Dataset:
        return self.datasets[0]


@dataclass(frozen=True, slots=True)
class Volume:
    """A series as a volume and its geometry.

    ``values`` is indexed ``[column i, row j, slice k]`` (the NIfTI order) in
    rescaled units (HU for CT). ``affine_lps`` maps ``(i, j, k, 1)`` to the
    patient position in mm (LPS).
    """

    values: NDArray[np.float64]
    affine_lps: NDArray[np.float64]
    tags: dict[str, Any]
    sop_instances: tuple[tuple[str, str], ...]  #: (SOPClassUID, SOPInstanceUID) per slice

    @property
    def affine_ras(self) -> NDArray[np.float64]:
        """The affine in NIfTI's RAS+ world: LPS with x and y negated."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along i, j, k in mm."""
        sizes = np.linalg.norm(self.affine_lps[:3, :3], axis=0)
        return (float(sizes[0]), float(sizes[1]), float(sizes[2]))


def _json_value(value: Any) -> Any:
    """A DICOM element value as JSON (multi-values as lists, numbers as numbers)."""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, pydicom.valuerep.DSfloat | pydicom.valuerep.IS | float | int):
        return float(value) if not float(value).is_integer() else int(value)
    return str(value)


def read_dicom_files(root: Path) -> tuple[list[tuple[Path, Dataset]], list[Path]]:
    """Every DICOM file with pixel data under ``root``; and the files that are not DICOM.

    Files are recognised by content (the ``DICM`` preamble), not by name.
    """
    found: list[tuple[Path, Dataset]] = []
    skipped: list[Path] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            skipped.append(path)
            continue
        if "PixelData" not in ds:
            skipped.append(path)  # a DICOMDIR, a report, ...: nothing to stack
            continue
        found.append((path, ds))
    return found, skipped


def group_series(files: list[tuple[Path, Dataset]]) -> list[Series]:
    """Group by SeriesInstanceUID and sort each group along its slice normal.

    Raises :class:`SeriesError` when a file lacks the geometry tags, or when
    a series mixes orientations, sizes or spacings, repeats a position, or
    has uneven gaps between slices.
    """
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, ds in files:
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid:
            raise SeriesError(f"{path.name}: no SeriesInstanceUID")
        groups[uid].append((path, ds))
    return [_sorted_series(uid, members) for uid, members in sorted(groups.items())]


def _geometry(path: Path, ds: Dataset) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(ImageOrientationPatient as 6 floats, ImagePositionPatient as 3 floats)."""
    try:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        [float(v) for v in ds.PixelSpacing]
    except (AttributeError, TypeError, ValueError) as exc:
        raise SeriesError(
            f"{path.name}: missing or bad ImageOrientationPatient, ImagePositionPatient "
            f"or PixelSpacing ({exc})"
        ) from exc
    if iop.shape != (6,) or ipp.shape != (3,):
        raise SeriesError(f"{path.name}: malformed ImageOrientationPatient/ImagePositionPatient")
    return iop, ipp


def _sorted_series(uid: str, members: list[tuple[Path, Dataset]]) -> Series:
    first_path, first = members[0]
    iop0, _ = _geometry(first_path, first)
    row, col = iop0[:3], iop0[3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise SeriesError(f"series {uid}: ImageOrientationPatient is not two orthonormal vectors")
    keyed: list[tuple[float, Path, Dataset]] = []
    for path, ds in members:
        iop, ipp = _geometry(path, ds)
        if not np.allclose(iop, iop0, atol=COSINE_TOLERANCE):
            raise SeriesError(f"series {uid}: slices have different orientations ({path.name})")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise SeriesError(f"series {uid}: slices have different sizes ({path.name})")
        if not np.allclose(
            [float(v) for v in ds.PixelSpacing],
            [float(v) for v in first.PixelSpacing],
            atol=SPACING_TOLERANCE_MM,
        ):
            raise SeriesError(f"series {uid}: slices have different pixel spacings ({path.name})")
        keyed.append((float(np.dot(ipp, normal)), path, ds))
    keyed.sort(key=lambda t: t[0])
    positions = np.asarray([k for k, _, _ in keyed])
    if len(keyed) > 1:
        gaps = np.diff(positions)
        if np.any(gaps < SPACING_TOLERANCE_MM):
            raise SeriesError(f"series {uid}: two slices at the same position")
        if np.ptp(gaps) > max(SPACING_TOLERANCE_MM, 0.01 * float(np.median(gaps))):
            raise SeriesError(
                f"series {uid}: uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm); "
                "missing slices?"
            )
    return Series(
        uid=uid,
        datasets=tuple(ds for _, _, ds in keyed),
        paths=tuple(p for _, p, _ in keyed),
    )


def to_volume(series: Series) -> Volume:
    """Stack a sorted series into a :class:`Volume` (rescale applied).

    Raises :class:`SeriesError` for multi-frame or colour images, whose
    stacking this module does not do.
    """
    first = series.first
    if int(first.get("NumberOfFrames", 1) or 1) > 1 or int(first.get("SamplesPerPixel", 1)) != 1:
        raise SeriesError(f"series {series.uid}: multi-frame or colour images are not supported")
    slices: list[NDArray[np.float64]] = []
    for ds in series.datasets:
        try:
            pixels = ds.pixel_array.astype(np.float64)
        except (AttributeError, ValueError, RuntimeError) as exc:
            raise SeriesError(f"series {series.uid}: cannot decode pixel data ({exc})") from exc
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        # pixel_array is [row j, column i]; the volume is [i, j, k].
        slices.append((pixels * slope + intercept).T)
    values = np.stack(slices, axis=-1)
    iop, ipp0 = _geometry(series.paths[0], first)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * col_spacing
    affine[:3, 1] = iop[3:] * row_spacing
    if len(series.datasets) > 1:
        _, ipp_last = _geometry(series.paths[-1], series.datasets[-1])
        # The real step between slices (which may differ from SliceThickness).
        affine[:3, 2] = (ipp_last - ipp0) / (len(series.datasets) - 1)
    else:
        thickness = float(first.get("SliceThickness", 1.0) or 1.0)
        affine[:3, 2] = np.cross(iop[:3], iop[3:]) * thickness
    affine[:3, 3] = ipp0
    tags = {key: _json_value(first.get(key)) for key in SIDECAR_TAGS if first.get(key) is not None}
    return Volume(
        values=values,
        affine_lps=affine,
        tags=tags,
        sop_instances=tuple(
            (str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in series.datasets
        ),
    )


def load_series(root: Path) -> list[Series]:
    """All series under ``root``, grouped and sorted.

    Raises :class:`SeriesError` when ``root`` holds no DICOM image at all
    (the message counts the other files) or a series is inconsistent.
    """
    files, skipped = read_dicom_files(root)
    if not files:
        raise SeriesError(
            f"no DICOM images in {root} ({len(skipped)} other file(s), e.g. "
            f"{', '.join(p.name for p in skipped[:3]) or 'none'})"
        )
    return group_series(files)
