"""Synthetic chest CT phantoms with a known lung mask, for training and testing.

A phantom is deliberately simple and made only of ellipses, in Hounsfield
units (HU): air outside the body (-1000 HU), a body ellipse of soft tissue
(~40 HU) holding two lung ellipses (~-850 HU) with emphysematous blobs
(~-980 HU) and a few vessels (~40 HU), plus Gaussian noise. The truth mask
is the two lung ellipses (vessels and blobs included), which is what a lung
segmentation is expected to return.

The hard part for a model is that emphysema (-980 HU) looks like the air
outside the body (-1000 HU): only the context (enclosed by tissue) tells them
apart, so a plain threshold does not solve the task.

:func:`random_slice` draws training slices (2D); :func:`chest_volume` draws a
3D volume (the lungs are ellipsoids, the body a cylinder) with its affine.
Everything is drawn from a ``numpy.random.Generator``, so a seed reproduces it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

AIR_HU = -1000.0
TISSUE_HU = 40.0
LUNG_HU = -850.0
EMPHYSEMA_HU = -980.0
#: Standard deviation of the added noise, HU.
NOISE_HU = 20.0

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


def _ellipse(
    yy: FloatArray, xx: FloatArray, cy: float, cx: float, ry: float, rx: float
) -> BoolArray:
    """Pixels inside the ellipse centred at (``cy``, ``cx``) with semi-axes ``ry``, ``rx``."""
    return np.asarray(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0)


@dataclass(frozen=True, slots=True)
class ChestLayout:
    """The in-plane geometry of a phantom, in pixels of its grid.

    ``lungs`` holds (cy, cx, ry, rx) per lung at its widest (the mid slice).
    """

    size: int
    body: tuple[float, float, float, float]
    lungs: tuple[tuple[float, float, float, float], ...]


def random_layout(rng: np.random.Generator, size: int) -> ChestLayout:
    """A random but plausible body and pair of lungs on a ``size``² grid."""
    c = size / 2
    # Field of view varies: the body fills 55 to 95 % of the width.
    brx = c * rng.uniform(0.55, 0.95)
    bry = brx * rng.uniform(0.6, 0.85)
    bcy = c + rng.uniform(-0.05, 0.05) * size
    bcx = c + rng.uniform(-0.05, 0.05) * size
    lungs = []
    for side in (-1.0, 1.0):
        lrx = brx * rng.uniform(0.28, 0.38)
        lry = bry * rng.uniform(0.55, 0.75)
        lcx = bcx + side * brx * rng.uniform(0.42, 0.52)
        lcy = bcy + rng.uniform(-0.08, 0.04) * bry
        lungs.append((lcy, lcx, lry, lrx))
    return ChestLayout(size=size, body=(bcy, bcx, bry, brx), lungs=tuple(lungs))


def render_slice(
    rng: np.random.Generator, layout: ChestLayout, lung_scale: float = 1.0
) -> tuple[FloatArray, BoolArray]:
    """Draw one axial slice of ``layout``: (HU image, lung truth mask), both ``size``².

    ``lung_scale`` (0..1) shrinks the lungs, as in slices towards the apex
    and the base; at 0 the slice has no lung.
    """
    size = layout.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.full((size, size), AIR_HU, dtype=np.float32)
    body = _ellipse(yy, xx, *layout.body)
    image[body] = TISSUE_HU
    truth = np.zeros((size, size), dtype=bool)
    if lung_scale > 0.05:
        for cy, cx, ry, rx in layout.lungs:
            lung = _ellipse(yy, xx, cy, cx, ry * lung_scale, rx * lung_scale) & body
            image[lung] = LUNG_HU
            truth |= lung
            area_r = min(ry, rx) * lung_scale
            # Emphysematous blobs: air-like holes inside the lung.
            for _ in range(int(rng.integers(0, 6))):
                by = cy + rng.uniform(-0.7, 0.7) * ry * lung_scale
                bx = cx + rng.uniform(-0.7, 0.7) * rx * lung_scale
                r = area_r * rng.uniform(0.08, 0.35)
                image[_ellipse(yy, xx, by, bx, r, r * rng.uniform(0.7, 1.4)) & lung] = EMPHYSEMA_HU
            # Vessels: small tissue-dense dots inside the lung.
            for _ in range(int(rng.integers(0, 8))):
                vy = cy + rng.uniform(-0.8, 0.8) * ry * lung_scale
                vx = cx + rng.uniform(-0.8, 0.8) * rx * lung_scale
                r = max(0.8, area_r * rng.uniform(0.02, 0.06))
                image[_ellipse(yy, xx, vy, vx, r, r) & lung] = TISSUE_HU
    image += rng.normal(0.0, NOISE_HU, image.shape).astype(np.float32)
    return image, truth


def random_slice(rng: np.random.Generator, size: int) -> tuple[FloatArray, BoolArray]:
    """A random training slice: (HU image, truth), with a random orientation.

    One slice in eight has no lung (a slice below the diaphragm), so that the
    model learns to return an empty mask.
    """
    layout = random_layout(rng, size)
    scale = 0.0 if rng.uniform() < 0.125 else float(rng.uniform(0.3, 1.0))
    image, truth = render_slice(rng, layout, scale)
    # Volumes come in any in-plane orientation: train on all eight.
    if rng.uniform() < 0.5:
        image, truth = image.T, truth.T
    k = int(rng.integers(0, 4))
    return np.ascontiguousarray(np.rot90(image, k)), np.ascontiguousarray(np.rot90(truth, k))


def chest_volume(
    seed: int,
    size: int = 160,
    slices: int = 32,
    spacing: tuple[float, float, float] = (2.0, 2.0, 5.0),
) -> tuple[FloatArray, BoolArray, npt.NDArray[np.float64]]:
    """A 3D phantom: (HU volume, truth mask, 4×4 affine), arrays shaped (size, size, slices).

    The lungs are ellipsoids whose cross-section shrinks towards both ends;
    the first and last few slices hold no lung. ``spacing`` is the voxel size
    in mm along the three array axes (the affine is diagonal, RAS+).
    """
    rng = np.random.default_rng(seed)
    layout = random_layout(rng, size)
    volume = np.empty((size, size, slices), dtype=np.float32)
    truth = np.empty((size, size, slices), dtype=bool)
    for k in range(slices):
        # Position along the lungs' long axis, -1..1 over 90 % of the volume.
        t = (k - (slices - 1) / 2) / (0.45 * slices)
        scale = float(np.sqrt(max(0.0, 1.0 - t * t)))
        volume[:, :, k], truth[:, :, k] = render_slice(rng, layout, scale)
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = [-spacing[0] * size / 2, -spacing[1] * size / 2, -spacing[2] * slices / 2]
    return volume, truth, affine


def dice(a: BoolArray, b: BoolArray) -> float:
    """The Dice coefficient of two masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
