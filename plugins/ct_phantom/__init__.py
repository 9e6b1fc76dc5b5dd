"""A synthetic chest CT phantom written as a DICOM CT series, with its truth.

Used by the tests of ``pl-dcm2nifti`` and ``pl-lung-emphysema`` and by
``chris demo``. The phantom is a volume of Hounsfield units (HU):

* air outside the body, about -1000 HU;
* an elliptic body cylinder of soft tissue (about 40 HU) under a thin fat
  layer (about -100 HU), with a trachea (air) in the upper slices that
  touches neither lung;
* two ellipsoid lungs of normal parenchyma (about -850 HU) crossed by a few
  vessels (about 40 HU), with emphysematous patches (about -980 HU) covering
  a chosen fraction of the lung: the patches are the top of a smooth random
  field, so they form clusters, as real emphysema does;
* the blur of a CT's point spread function (so tissue boundaries have
  partial-volume voxels), then Gaussian noise everywhere.

The truth (:attr:`Phantom.laa950_percent`, :attr:`Phantom.lung_volume_ml`,
:attr:`Phantom.mean_lung_density_hu`) is measured on the final noisy voxels
inside the phantom's own lung mask, with the same definition the plugin uses:
the percentage of lung voxels below -950 HU.

:func:`write_series` stores the volume as a CT series with the geometry of
PS3.3 C.7.6.2 (ImagePositionPatient, ImageOrientationPatient, PixelSpacing)
and stored values ``HU = stored * RescaleSlope + RescaleIntercept``; the
orientation may be oblique.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

#: The %LAA threshold (HU): lung voxels strictly below it count as low attenuation.
LAA_THRESHOLD_HU = -950

AIR_HU = -1000
FAT_HU = -100
SOFT_TISSUE_HU = 40
LUNG_HU = -850
EMPHYSEMA_HU = -980


@dataclass(frozen=True, slots=True)
class PhantomSpec:
    """What to build.

    ``shape`` is (slices, rows, columns); ``pixel_spacing`` (row spacing,
    column spacing) and ``slice_spacing`` are in mm. ``emphysema_fraction``
    (0 to 0.9) is the fraction of lung voxels made emphysematous before noise.
    ``row_cosine``/``column_cosine`` are ImageOrientationPatient's two
    direction cosines (LPS); the slice normal is their cross product.
    ``blur_mm`` is the standard deviation of the in-plane Gaussian blur (the
    scanner's point spread function; 0 for crisp edges) and ``noise_hu`` that
    of the Gaussian noise.
    """

    emphysema_fraction: float = 0.15
    shape: tuple[int, int, int] = (56, 144, 160)
    pixel_spacing: tuple[float, float] = (2.0, 2.0)
    slice_spacing: float = 5.0
    blur_mm: float = 1.2
    noise_hu: float = 15.0
    seed: int = 0
    origin: tuple[float, float, float] = (-160.0, -144.0, -140.0)
    row_cosine: tuple[float, float, float] = (1.0, 0.0, 0.0)
    column_cosine: tuple[float, float, float] = (0.0, 1.0, 0.0)


@dataclass(frozen=True, slots=True)
class Phantom:
    """A built phantom: HU volume (slices, rows, columns), lung mask and truth."""

    spec: PhantomSpec
    hu: NDArray[np.int16]
    lung_mask: NDArray[np.bool_]
    laa950_percent: float
    lung_volume_ml: float
    mean_lung_density_hu: float


def _ellipsoid(
    grid: tuple[NDArray[np.float64], ...],
    center: tuple[float, float, float],
    semi_axes: tuple[float, float, float],
) -> NDArray[np.bool_]:
    """Voxels inside an axis-aligned ellipsoid (all in mm, order z, y, x)."""
    total = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, center, semi_axes, strict=True))
    return np.asarray(total <= 1.0)


def make_phantom(spec: PhantomSpec = PhantomSpec()) -> Phantom:
    """Build the phantom of ``spec`` and measure its truth.

    Raises ``ValueError`` for a fraction outside [0, 0.9] or a volume too
    small to hold the anatomy (fewer than 16 slices or 64 pixels a side).
    """
    if not 0.0 <= spec.emphysema_fraction <= 0.9:
        raise ValueError(f"emphysema_fraction must be in [0, 0.9], got {spec.emphysema_fraction}")
    nz, ny, nx = spec.shape
    if nz < 16 or ny < 64 or nx < 64:
        raise ValueError(f"shape {spec.shape} is too small for the phantom's anatomy")
    rng = np.random.default_rng(spec.seed)
    dy, dx = spec.pixel_spacing
    dz = spec.slice_spacing
    # Coordinates in mm about the volume's centre, so the anatomy scales with the field of view.
    z = (np.arange(nz) - (nz - 1) / 2) * dz
    y = (np.arange(ny) - (ny - 1) / 2) * dy
    x = (np.arange(nx) - (nx - 1) / 2) * dx
    grid = np.meshgrid(z, y, x, indexing="ij")
    half_x, half_y, half_z = nx * dx / 2, ny * dy / 2, nz * dz / 2

    hu = np.full(spec.shape, AIR_HU, dtype=np.float64)
    body_a, body_b = 0.92 * half_x, 0.78 * half_y  # body semi-axes (x, y), mm
    in_body = ((grid[2] / body_a) ** 2 + (grid[1] / body_b) ** 2) <= 1.0
    inner = ((grid[2] / (body_a - 8)) ** 2 + (grid[1] / (body_b - 8)) ** 2) <= 1.0
    hu[in_body] = FAT_HU
    hu[inner] = SOFT_TISSUE_HU

    lung_axes = (0.72 * half_z, 0.55 * body_b, 0.36 * body_a)
    lung_dx = 0.5 * body_a
    lungs = _ellipsoid(grid, (0.0, 0.0, -lung_dx), lung_axes) | _ellipsoid(
        grid, (0.0, 0.0, lung_dx), lung_axes
    )
    # A trachea from the top slice down to above the lungs' apex, between them.
    trachea = (((grid[2] / 8.0) ** 2 + ((grid[1] + 0.3 * body_b) / 8.0) ** 2) <= 1.0) & (
        grid[0] > 0.5 * half_z
    )
    hu[trachea] = AIR_HU

    # Emphysema: the top ``fraction`` of a smooth random field inside the lungs.
    field = ndimage.gaussian_filter(rng.standard_normal(spec.shape), sigma=(1.0, 3.0, 3.0))
    emphysema = np.zeros(spec.shape, dtype=bool)
    if spec.emphysema_fraction > 0:
        cut = np.quantile(field[lungs], 1.0 - spec.emphysema_fraction)
        emphysema = lungs & (field > cut)
    hu[lungs] = LUNG_HU
    hu[emphysema] = EMPHYSEMA_HU
    # Vessels: thin cylinders along z, well inside each lung (holes the segmentation must fill).
    for side in (-1.0, 1.0):
        for off_x, off_y in ((0.0, 0.0), (0.4, -0.35), (-0.35, 0.4)):
            cx = side * lung_dx + off_x * lung_axes[2]
            cy = off_y * lung_axes[1]
            vessel = ((grid[2] - cx) ** 2 + (grid[1] - cy) ** 2) <= 3.0**2
            hu[vessel & lungs & (np.abs(grid[0]) < 0.5 * lung_axes[0])] = SOFT_TISSUE_HU

    if spec.blur_mm > 0:
        # In-plane only: across 5 mm slices the scanner's blur is well under a voxel.
        hu = ndimage.gaussian_filter(hu, sigma=(0.0, spec.blur_mm / dy, spec.blur_mm / dx))
    hu += rng.normal(0.0, spec.noise_hu, spec.shape)
    volume = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    lung_values = volume[lungs]
    voxel_ml = dx * dy * dz / 1000.0
    return Phantom(
        spec=spec,
        hu=volume,
        lung_mask=lungs,
        laa950_percent=float(100.0 * np.count_nonzero(lung_values < LAA_THRESHOLD_HU))
        / max(lung_values.size, 1),
        lung_volume_ml=float(lung_values.size * voxel_ml),
        mean_lung_density_hu=float(lung_values.mean()),
    )


def slice_normal(spec: PhantomSpec) -> NDArray[np.float64]:
    """The unit slice normal (row cosine × column cosine), LPS."""
    normal = np.cross(np.asarray(spec.row_cosine), np.asarray(spec.column_cosine))
    return np.asarray(normal / np.linalg.norm(normal), dtype=np.float64)


def slice_position(spec: PhantomSpec, index: int) -> NDArray[np.float64]:
    """ImagePositionPatient (mm, LPS) of slice ``index``: origin + index × spacing × normal."""
    return np.asarray(spec.origin, dtype=np.float64) + index * spec.slice_spacing * slice_normal(
        spec
    )


def write_series(
    phantom: Phantom,
    outdir: Path,
    *,
    patient_id: str = "PHANTOM-001",
    patient_name: str = "Phantom^Chest",
    study_uid: str | None = None,
    series_uid: str | None = None,
    modality: str = "CT",
    rescale_intercept: float = -1024.0,
    shuffle: bool = True,
) -> list[Path]:
    """Write the phantom as one DICOM series (one file per slice) into ``outdir``.

    Stored values are ``HU - rescale_intercept`` (unsigned 16 bit, slope 1).
    File names are random when ``shuffle`` (so readers must sort by position,
    not by name). Returns the files written. ``modality`` other than CT is for
    tests of the plugins' refusal of non-CT input.
    """
    spec = phantom.spec
    outdir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    now = dt.datetime.now(dt.UTC)
    stored = (phantom.hu.astype(np.int32) - int(rescale_intercept)).clip(0, 65535).astype(np.uint16)
    order = list(range(spec.shape[0]))
    if shuffle:
        random.Random(spec.seed).shuffle(order)
    written: list[Path] = []
    for rank, k in enumerate(order):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = modality
        ds.PatientID = patient_id
        ds.PatientName = patient_name
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyID = "1"
        ds.AccessionNumber = "PHANTOM1"
        ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic chest CT phantom"
        ds.SeriesDescription = f"Chest phantom LAA {spec.emphysema_fraction:.2f}"
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        ds.BodyPartExamined = "CHEST"
        ds.Manufacturer = "chris-fabric ct_phantom"
        ds.KVP = 120
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.SliceThickness = spec.slice_spacing
        ds.ImagePositionPatient = [round(float(v), 4) for v in slice_position(spec, k)]
        ds.ImageOrientationPatient = [float(v) for v in (*spec.row_cosine, *spec.column_cosine)]
        ds.SliceLocation = round(float(np.dot(slice_position(spec, k), slice_normal(spec))), 4)
        ds.PixelSpacing = [float(spec.pixel_spacing[0]), float(spec.pixel_spacing[1])]
        ds.Rows, ds.Columns = spec.shape[1], spec.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = rescale_intercept
        ds.RescaleSlope = 1.0
        ds.RescaleType = "HU"
        ds.WindowCenter = -600
        ds.WindowWidth = 1600
        ds.PixelData = stored[k].tobytes()
        path = outdir / (f"{rank:04d}-{sop_uid[-8:]}.dcm" if shuffle else f"slice-{k:04d}.dcm")
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        written.append(path)
    return written


__all__ = [
    "LAA_THRESHOLD_HU",
    "Phantom",
    "PhantomSpec",
    "make_phantom",
    "slice_normal",
    "slice_position",
    "write_series",
]
