"""pl-dcm2nifti: convert each DICOM series of the input into a NIfTI volume (a ds plugin).

Every file under the input directory is tried as DICOM (by content; other
files are skipped and listed in the log). Image files are grouped by
SeriesInstanceUID and each series, sorted along its slice normal, becomes
``<name>.nii.gz`` with a JSON sidecar ``<name>.json`` where ``<name>`` is
``<SeriesNumber>_<SeriesDescription>`` made file-name safe. The NIfTI affine
(qform and sform, code 1 "scanner") maps a voxel index to its RAS+ position,
which is the DICOM LPS position with x and y negated; voxels hold rescaled
values (HU for CT), as int16 when they are whole numbers in its range, else
float32. The sidecar holds key DICOM tags, the voxel spacing and the SOP
instances of the slices (so that derived objects can reference them).

Fails (exit 1, nothing written) when there is no DICOM image at all or a
series is inconsistent (mixed orientations, sizes or spacings, duplicate
positions, uneven gaps).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from chris_sdk import ChrisPlugin, PluginFailure, PluginType

from pl_dcm2nifti.series import SeriesError, Volume, load_series, to_volume


def output_name(tags: dict[str, Any], taken: set[str]) -> str:
    """A file-name-safe, unique stem from SeriesNumber and SeriesDescription."""
    number = tags.get("SeriesNumber")
    description = str(tags.get("SeriesDescription", "") or "series")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", description).strip("._-") or "series"
    if number is not None:
        stem = f"{number}_{stem}"
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


def to_nifti(volume: Volume) -> nib.Nifti1Image:
    """The NIfTI-1 image of ``volume`` (RAS+ affine as qform and sform)."""
    values = volume.values
    rounded = np.rint(values)
    as_int16 = (
        np.array_equal(rounded, values)
        and values.min(initial=0) >= np.iinfo(np.int16).min
        and values.max(initial=0) <= np.iinfo(np.int16).max
    )
    # Whole HU fit int16 losslessly at half the size of float32.
    data = rounded.astype(np.int16) if as_int16 else values.astype(np.float32)
    image = nib.Nifti1Image(data, volume.affine_ras)
    image.set_qform(volume.affine_ras, code=1)
    image.set_sform(volume.affine_ras, code=1)
    image.header.set_xyzt_units(xyz="mm")
    return image


def sidecar(volume: Volume, source_files: int) -> dict[str, Any]:
    """The JSON sidecar of ``volume``: key tags, geometry and the source instances."""
    return {
        **volume.tags,
        "NumberOfSlices": int(volume.values.shape[2]),
        "VoxelSpacingMM": [round(v, 6) for v in volume.spacing_mm],
        "AffineRAS": [[round(float(v), 6) for v in row] for row in volume.affine_ras],
        "SourceFiles": source_files,
        "SourceInstances": [
            {"SOPClassUID": cls, "SOPInstanceUID": uid} for cls, uid in volume.sop_instances
        ],
    }


def convert(options: argparse.Namespace, inputdir: Path | None, outputdir: Path) -> int:
    """Write one NIfTI and one sidecar per DICOM series of ``inputdir``.

    Raises :class:`~chris_sdk.PluginFailure` for input without DICOM images
    or with an inconsistent series; nothing is written then.
    """
    assert inputdir is not None  # a ds plugin always gets one
    try:
        series = load_series(inputdir)
        volumes = [(s, to_volume(s)) for s in series]
    except SeriesError as exc:
        raise PluginFailure(str(exc)) from exc
    outputdir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for s, volume in volumes:
        name = output_name(volume.tags, taken)
        nib.save(to_nifti(volume), outputdir / f"{name}.nii.gz")
        (outputdir / f"{name}.json").write_text(
            json.dumps(sidecar(volume, len(s.paths)), indent=2) + "\n"
        )
    return 0


plugin = ChrisPlugin(
    name="pl-dcm2nifti",
    type=PluginType.DS,
    version="1.0.0",
    dock_image="chris-fabric/pl-dcm2nifti:1.0.0",
    title="DICOM to NIfTI",
    category="Conversion",
    description="Group DICOM files into series and write each as NIfTI with a JSON sidecar",
    authors="chris-fabric developers",
    license="MIT",
    run=convert,
    min_memory_limit="500Mi",
    min_cpu_limit="500m",
)


def main() -> None:
    """Console script ``dcm2nifti``."""
    sys.exit(plugin.main())
