"""Finding and reading CT volumes in a plugin's input directory.

Two kinds of input are understood:

* NIfTI files (``*.nii``, ``*.nii.gz``), read with nibabel; the third voxel
  axis is taken as the slice axis (axial volumes, as pl-dcm2nifti writes them);
* DICOM series: every file under the input directory that pydicom reads as
  an image with ``ImagePositionPatient`` is grouped by ``SeriesInstanceUID``;
  a series' slices are sorted along the slice normal, rescaled to HU
  (``RescaleSlope``/``RescaleIntercept``) and given a RAS+ affine built from
  ``ImageOrientationPatient``, ``ImagePositionPatient`` and ``PixelSpacing``
  (DICOM's LPS+ flipped to NIfTI's RAS+), as a NIfTI converter would.

Library code: everything raises :class:`VolumeError`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class VolumeError(Exception):
    """An input volume cannot be read or makes no sense."""


@dataclass(frozen=True, slots=True)
class Volume:
    """A CT volume in HU, shaped (X, Y, Z) with Z the slice axis, and its RAS+ affine."""

    name: str  #: the output stem: the NIfTI file's stem, or the DICOM series' directory
    source: str  #: where it came from, relative to the input directory
    kind: str  #: ``nifti`` or ``dicom``
    hu: npt.NDArray[np.float32]
    affine: npt.NDArray[np.float64]


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_nifti(path: Path, inputdir: Path) -> Volume:
    """Read a 3D NIfTI volume (a 4D one with one frame is accepted). Raises ``VolumeError``."""
    try:
        image: Any = nib.load(path)  # type: ignore[attr-defined]
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises many kinds for a bad file
        raise VolumeError(f"cannot read NIfTI {path.relative_to(inputdir)}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(
            f"{path.relative_to(inputdir)}: expected a 3D volume, got shape {data.shape}"
        )
    rel = path.relative_to(inputdir)
    stem = (rel.parent / _nifti_stem(path)).as_posix()
    return Volume(stem, rel.as_posix(), "nifti", data, np.asarray(image.affine, dtype=np.float64))


def _dicom_series(inputdir: Path) -> dict[str, list[tuple[Path, Any]]]:
    """Image files under ``inputdir`` grouped by SeriesInstanceUID (non-DICOM files skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for path in sorted(inputdir.rglob("*")):
        if not path.is_file() or path.name.endswith(NIFTI_SUFFIXES):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue  # not DICOM: input directories hold other files too
        if "ImagePositionPatient" in ds and "SeriesInstanceUID" in ds and "PixelSpacing" in ds:
            series[str(ds.SeriesInstanceUID)].append((path, ds))
    return series


def read_dicom_series(files: list[Path], inputdir: Path) -> Volume:
    """One DICOM series as a volume (slices sorted along their normal). Raises ``VolumeError``."""
    import pydicom

    try:
        slices = [pydicom.dcmread(p) for p in files]
        iop = np.array([float(v) for v in slices[0].ImageOrientationPatient], dtype=np.float64)
        row, col = iop[:3], iop[3:]
        normal = np.cross(row, col)
        slices.sort(
            key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))
        )
        # pixel_array is (rows, columns): transpose to (columns, rows) = (i along row, j along col).
        frames = [
            ds.pixel_array.astype(np.float32).T * float(getattr(ds, "RescaleSlope", 1))
            + float(getattr(ds, "RescaleIntercept", 0))
            for ds in slices
        ]
        hu = np.stack(frames, axis=2).astype(np.float32)
        dr, dc = (float(v) for v in slices[0].PixelSpacing)  # row spacing, column spacing
        first = np.array([float(v) for v in slices[0].ImagePositionPatient])
        if len(slices) > 1:
            last = np.array([float(v) for v in slices[-1].ImagePositionPatient])
            step = (last - first) / (len(slices) - 1)
        else:
            step = normal * float(getattr(slices[0], "SliceThickness", 1.0))
    except Exception as exc:  # pydicom and numpy raise many kinds for a bad series
        raise VolumeError(f"cannot read the DICOM series in {files[0].parent}: {exc}") from exc
    lps = np.eye(4)
    lps[:3, 0] = row * dc  # i runs along a row: column spacing
    lps[:3, 1] = col * dr
    lps[:3, 2] = step
    lps[:3, 3] = first
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS+ → RAS+
    rel_dir = files[0].parent.relative_to(inputdir).as_posix()
    name = "series" if rel_dir == "." else rel_dir
    return Volume(name, rel_dir, "dicom", hu, affine)


def find_volumes(inputdir: Path) -> Iterator[Volume]:
    """The volumes under ``inputdir``: NIfTI files first (sorted), then DICOM series.

    Raises ``VolumeError`` for an unreadable volume; yields nothing when
    there is no input (the caller decides whether that is an error).
    """
    for path in sorted(inputdir.rglob("*")):
        if path.is_file() and path.name.endswith(NIFTI_SUFFIXES):
            yield read_nifti(path, inputdir)
    names: set[str] = set()
    for uid, members in sorted(_dicom_series(inputdir).items()):
        volume = read_dicom_series([p for p, _ in members], inputdir)
        if volume.name in names:
            # Two series in one directory: tell their outputs apart by UID.
            volume = replace(volume, name=f"{volume.name}/{uid}")
        names.add(volume.name)
        yield volume
