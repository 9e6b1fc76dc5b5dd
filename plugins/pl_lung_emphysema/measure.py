"""Lung segmentation and emphysema measures on a CT volume in HU.

The segmentation is classical (no model, nothing downloaded):

1. voxels below :data:`LOW_DENSITY_HU` are air or lung;
2. 3D connected components (6-connectivity) that touch the in-plane border
   of the volume are the air around the patient, and are dropped;
3. of the rest, the two largest are the lungs (only the largest when the
   second is under :data:`SECOND_LUNG_MIN_RATIO` of it: lungs touching at
   the anterior junction); the trachea and bowel gas are smaller and go;
4. a small closing and a slice-by-slice hole fill put vessels and airway
   walls inside the lungs back into the mask, as %LAA definitions expect.

%LAA-950 is the percentage of lung-mask voxels strictly below -950 HU; lung
volume is the mask's voxel count times the voxel volume; mean lung density
is the mean HU inside the mask. ``fast`` segments and measures on every
second voxel in-plane (a quarter of the voxels): %LAA is then an estimate
from that sample and the volume is coarser at the lung boundary.

The volume is indexed ``[i, j, k]`` with ``k`` across slices (the NIfTI
order written by pl-dcm2nifti). Errors are :class:`MeasureError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

#: %LAA threshold (HU): lung voxels strictly below it are low-attenuation areas.
LAA_THRESHOLD_HU = -950
#: Air and lung are below this; soft tissue, fat and vessels are above.
LOW_DENSITY_HU = -500
#: A second component smaller than this fraction of the largest is not a lung.
SECOND_LUNG_MIN_RATIO = 0.1
#: Total lung volume below which the input is not taken for a chest CT (mL).
MIN_LUNG_VOLUME_ML = 100.0


class MeasureError(Exception):
    """The volume does not give a lung segmentation (no lungs found, too small)."""


@dataclass(frozen=True, slots=True)
class LungComponent:
    """One segmented lung: side (``right``/``left``/``unknown``) and its measures."""

    side: str
    volume_ml: float
    laa950_percent: float
    mean_density_hu: float


@dataclass(frozen=True, slots=True)
class Measurement:
    """The result of :func:`measure`.

    ``hu`` and ``mask`` are the (possibly subsampled) grids the measures were
    taken on; ``step`` is the in-plane subsampling (1 accurate, 2 fast).
    """

    laa950_percent: float
    lung_volume_ml: float
    mean_lung_density_hu: float
    lung_voxels: int
    laa_voxels: int
    lungs: tuple[LungComponent, ...]
    hu: NDArray[np.float64]
    mask: NDArray[np.bool_]
    step: int


def segment_lungs(hu: NDArray[np.float64]) -> NDArray[np.int32]:
    """Label the lungs of ``hu`` (indexed ``[i, j, k]``): 0 background, 1 and 2 lungs.

    Raises :class:`MeasureError` when no component is left after the air
    around the body is removed.
    """
    if hu.ndim != 3 or min(hu.shape[:2]) < 8:
        raise MeasureError(f"expected a 3D volume with slices of 8×8 or more, got {hu.shape}")
    low = hu < LOW_DENSITY_HU
    labels, count = ndimage.label(low)
    if count == 0:
        raise MeasureError("no voxel below -500 HU: no air or lung in this volume")
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    border = np.unique(
        np.concatenate(
            [
                labels[0, :, :].ravel(),
                labels[-1, :, :].ravel(),
                labels[:, 0, :].ravel(),
                labels[:, -1, :].ravel(),
            ]
        )
    )
    sizes[border] = 0
    order = np.argsort(sizes)[::-1]
    if sizes[order[0]] == 0:
        raise MeasureError("every low-density region touches the image border: no lungs found")
    keep = [int(order[0])]
    if count > 1 and sizes[order[1]] >= SECOND_LUNG_MIN_RATIO * sizes[order[0]]:
        keep.append(int(order[1]))
    result = np.zeros(hu.shape, dtype=np.int32)
    ball = ndimage.generate_binary_structure(3, 1)
    for value, label in enumerate(keep, start=1):
        lung = labels == label
        # Padding: scipy's closing erodes from a zero border, which would eat
        # lung voxels on the first and last slices.
        padded = np.pad(lung, 2)
        closed = ndimage.binary_closing(padded, structure=ball, iterations=2)[2:-2, 2:-2, 2:-2]
        for k in range(closed.shape[2]):
            closed[:, :, k] = ndimage.binary_fill_holes(closed[:, :, k])
        # Never take voxels already given to the other lung.
        result[closed & (result == 0)] = value
    return result


def measure(
    hu: NDArray[np.float64], affine_lps: NDArray[np.float64], *, fast: bool = False
) -> Measurement:
    """Segment the lungs of ``hu`` and measure %LAA-950, volume (mL) and density (HU).

    ``affine_lps`` maps voxel index to patient position (mm, LPS); it gives
    the voxel volume and which lung is on the patient's right. Raises
    :class:`MeasureError` when no lungs are found or they are implausibly
    small (under :data:`MIN_LUNG_VOLUME_ML`).
    """
    step = 2 if fast else 1
    grid = hu[::step, ::step, :]
    affine = affine_lps.copy()
    affine[:3, :2] *= step
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    labels = segment_lungs(grid)
    mask = labels > 0
    values = grid[mask]
    volume_ml = values.size * voxel_ml
    if volume_ml < MIN_LUNG_VOLUME_ML:
        raise MeasureError(
            f"segmented lungs are {volume_ml:.0f} mL, under {MIN_LUNG_VOLUME_ML:.0f} mL: "
            "is this a chest CT?"
        )
    laa = int(np.count_nonzero(values < LAA_THRESHOLD_HU))
    lungs = []
    for value in (1, 2):
        part = labels == value
        if not part.any():
            continue
        centre = affine @ np.append(np.argwhere(part).mean(axis=0), 1.0)
        inside = grid[part]
        lungs.append(
            LungComponent(
                # LPS: x grows towards the patient's left.
                side="right" if centre[0] < 0 else "left",
                volume_ml=float(inside.size * voxel_ml),
                laa950_percent=float(100.0 * np.count_nonzero(inside < LAA_THRESHOLD_HU))
                / inside.size,
                mean_density_hu=float(inside.mean()),
            )
        )
    if len(lungs) == 2 and lungs[0].side == lungs[1].side:
        # Both centres on one side of x = 0 (an off-centre patient): sides are unknown.
        lungs = [
            LungComponent("unknown", c.volume_ml, c.laa950_percent, c.mean_density_hu)
            for c in lungs
        ]
    return Measurement(
        laa950_percent=float(100.0 * laa / values.size),
        lung_volume_ml=float(volume_ml),
        mean_lung_density_hu=float(values.mean()),
        lung_voxels=int(values.size),
        laa_voxels=laa,
        lungs=tuple(lungs),
        hu=grid,
        mask=mask,
        step=step,
    )
