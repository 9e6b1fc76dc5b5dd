"""pl-lung-emphysema: segment the lungs of a chest CT and quantify emphysema (a ds plugin).

Input: either one NIfTI volume (``.nii``/``.nii.gz``) with the JSON sidecar
pl-dcm2nifti writes beside it (same stem), or, when the input holds no NIfTI,
the DICOM files of exactly one CT series. Output:

* ``emphysema-report.json``: %LAA-950, lung volume (mL), mean lung density
  (HU), per-lung values, the method, the source series and the run time;
* ``emphysema-overlay.png``: a montage of slices with the lung mask and the
  low-attenuation voxels drawn in;
* ``emphysema-sc.dcm``: the montage as a DICOM Secondary Capture in the
  source study, ready to be sent back to a PACS.

``--fast`` segments and measures on every second voxel in-plane: about four
times less work, with %LAA then an estimate (see :mod:`pl_lung_emphysema.measure`).

Fails with a clear message (exit 1, nothing written) for input without a CT
volume, several volumes or series, a non-CT modality, a NIfTI without its
sidecar, or a volume where no lungs are found.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from chris_sdk import ChrisPlugin, Parameter, ParameterType, PluginFailure, PluginType
from numpy.typing import NDArray
from pl_dcm2nifti.series import SeriesError, load_series, to_volume

from pl_lung_emphysema.measure import LAA_THRESHOLD_HU, MeasureError, measure
from pl_lung_emphysema.outputs import montage, secondary_capture

REPORT = "emphysema-report.json"
OVERLAY = "emphysema-overlay.png"
SECONDARY_CAPTURE = "emphysema-sc.dcm"


@dataclass(frozen=True, slots=True)
class CtInput:
    """A CT volume in HU (``[i, j, k]``), its LPS affine, its source tags and instances."""

    hu: NDArray[np.float64]
    affine_lps: NDArray[np.float64]
    tags: dict[str, Any]
    instances: tuple[tuple[str, str], ...]
    origin: str  #: the input file(s), for the report


def _nifti_files(inputdir: Path) -> list[Path]:
    return sorted(
        p for p in inputdir.rglob("*") if p.is_file() and p.name.endswith((".nii", ".nii.gz"))
    )


def read_input(inputdir: Path) -> CtInput:
    """The one CT volume of ``inputdir`` (NIfTI with sidecar, else a DICOM series).

    Raises :class:`~chris_sdk.PluginFailure` (see the module docstring).
    """
    niftis = _nifti_files(inputdir)
    if len(niftis) > 1:
        names = ", ".join(str(p.relative_to(inputdir)) for p in niftis)
        raise PluginFailure(f"expected one CT volume, found {len(niftis)} NIfTI files: {names}")
    if niftis:
        path = niftis[0]
        stem = path.name.removesuffix(".gz").removesuffix(".nii")
        sidecar_path = path.with_name(f"{stem}.json")
        if not sidecar_path.is_file():
            raise PluginFailure(
                f"{path.name} has no JSON sidecar {sidecar_path.name} (as pl-dcm2nifti writes): "
                "the modality and the source study are unknown"
            )
        try:
            tags = json.loads(sidecar_path.read_text())
            image = nib.load(path)
            if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
                raise PluginFailure(f"{path.name} is not a NIfTI-1 or NIfTI-2 image")
            hu = np.asarray(image.get_fdata(dtype=np.float64))
            affine_ras = np.asarray(image.affine, dtype=np.float64)
        except (OSError, ValueError) as exc:
            raise PluginFailure(f"cannot read {path.name}: {exc}") from exc
        if hu.ndim != 3:
            raise PluginFailure(f"{path.name}: expected a 3D volume, got shape {hu.shape}")
        instances = tuple(
            (str(i["SOPClassUID"]), str(i["SOPInstanceUID"]))
            for i in tags.get("SourceInstances", [])
        )
        ct = CtInput(
            hu=hu,
            affine_lps=np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras,
            tags=tags,
            instances=instances,
            origin=str(path.relative_to(inputdir)),
        )
    else:
        try:
            series = load_series(inputdir)
            if len(series) > 1:
                raise PluginFailure(
                    f"expected one CT series, found {len(series)} "
                    f"(SeriesInstanceUIDs {', '.join(s.uid for s in series)}); "
                    "select one series, or convert with pl-dcm2nifti first"
                )
            volume = to_volume(series[0])
        except SeriesError as exc:
            raise PluginFailure(str(exc)) from exc
        ct = CtInput(
            hu=volume.values,
            affine_lps=volume.affine_lps,
            tags=volume.tags,
            instances=volume.sop_instances,
            origin=f"{len(series[0].paths)} DICOM files",
        )
    modality = ct.tags.get("Modality")
    if modality != "CT":
        raise PluginFailure(
            f"{ct.origin}: modality is {modality!r}, not CT: %LAA-950 needs Hounsfield units"
        )
    return ct


def quantify(options: argparse.Namespace, inputdir: Path | None, outputdir: Path) -> int:
    """Measure emphysema on the CT of ``inputdir``; write the report, montage and SC.

    Raises :class:`~chris_sdk.PluginFailure` for unusable input.
    """
    assert inputdir is not None  # a ds plugin always gets one
    started = time.monotonic()
    ct = read_input(inputdir)
    try:
        result = measure(ct.hu, ct.affine_lps, fast=options.fast)
    except MeasureError as exc:
        raise PluginFailure(f"{ct.origin}: {exc}") from exc
    outputdir.mkdir(parents=True, exist_ok=True)
    sheet = montage(result)
    sheet.save(outputdir / OVERLAY)
    sc = secondary_capture(sheet, ct.tags, ct.instances, result, outputdir / SECONDARY_CAPTURE)
    source: dict[str, Any] = {"input": ct.origin}
    source.update(
        (key, ct.tags[key])
        for key in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")
        if key in ct.tags
    )
    report: dict[str, Any] = {
        "laa950_percent": round(result.laa950_percent, 4),
        "lung_volume_ml": round(result.lung_volume_ml, 2),
        "mean_lung_density_hu": round(result.mean_lung_density_hu, 2),
        "threshold_hu": LAA_THRESHOLD_HU,
        "lung_voxels": result.lung_voxels,
        "laa_voxels": result.laa_voxels,
        "lungs": [
            {
                "side": lung.side,
                "volume_ml": round(lung.volume_ml, 2),
                "laa950_percent": round(lung.laa950_percent, 4),
                "mean_density_hu": round(lung.mean_density_hu, 2),
            }
            for lung in result.lungs
        ],
        "method": "fast" if options.fast else "accurate",
        "inplane_step": result.step,
        "source": source,
        "secondary_capture": {
            "file": SECONDARY_CAPTURE,
            "SOPInstanceUID": str(sc.SOPInstanceUID),
            "SeriesInstanceUID": str(sc.SeriesInstanceUID),
        },
        "overlay": OVERLAY,
        "runtime_seconds": round(time.monotonic() - started, 3),
    }
    (outputdir / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return 0


plugin = ChrisPlugin(
    name="pl-lung-emphysema",
    type=PluginType.DS,
    version="1.0.0",
    dock_image="chris-fabric/pl-lung-emphysema:1.0.0",
    title="Lung emphysema (%LAA-950)",
    category="Quantification",
    description=(
        "Segment the lungs of a chest CT and report %LAA-950, lung volume and mean lung "
        "density, with an overlay montage and a DICOM Secondary Capture"
    ),
    authors="chris-fabric developers",
    license="MIT",
    parameters=[
        Parameter(
            "--fast",
            "fast",
            ParameterType.BOOL,
            help="segment and measure on every second voxel in-plane (faster, less exact)",
            default=False,
            action="store_true",
        ),
    ],
    run=quantify,
    min_memory_limit="1Gi",
    min_cpu_limit="1000m",
)


def main() -> None:
    """Console script ``lungemphysema``."""
    sys.exit(plugin.main())
