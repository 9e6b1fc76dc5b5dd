"""The work of pl-infer: pick a device, run LungNet on every input volume, report.

For each volume found by :func:`pl_infer.volumes.find_volumes` it writes
``<name>_lungmask.nii.gz`` (uint8, 1 = lung, with the input's affine) into
the output directory, and once :data:`REPORT_FILE`, a JSON report of the
device used, the torch version, the model checksum, the shapes and timings.

Device selection (:func:`select_device`): ``auto`` takes the first visible
CUDA GPU, else the CPU; ``cuda`` insists on a GPU and fails clearly without
one; ``cpu`` never touches CUDA. "Visible" is what torch sees, so
``CUDA_VISIBLE_DEVICES`` (set by pman to the GPUs it gave the job, or empty
for a job that asked for none) is respected as is.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from pydantic import BaseModel

from pl_infer.model import MODEL_NAME, MODEL_SIZE, load_model, predict_volume
from pl_infer.volumes import Volume, VolumeError, find_volumes

REPORT_FILE = "infer.json"
MASK_SUFFIX = "_lungmask.nii.gz"
DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(Exception):
    """The requested device is unknown or not available here."""


def _cuda_visible() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def select_device(requested: str) -> torch.device:
    """The torch device for ``--device`` (``auto``, ``cpu`` or ``cuda``).

    Raises ``DeviceError`` for another value, or for ``cuda`` when torch sees
    no GPU (the message says why: a CPU-only torch build, or no GPU visible
    with the current ``CUDA_VISIBLE_DEVICES``).
    """
    if requested not in DEVICE_CHOICES:
        raise DeviceError(f"--device must be one of {', '.join(DEVICE_CHOICES)}; got {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if requested == "auto":
        return torch.device("cpu")
    if torch.version.cuda is None:
        why = f"this torch build ({torch.__version__}) has no CUDA support"
    else:
        visible = _cuda_visible()
        shown = "unset" if visible is None else repr(visible)
        why = f"no CUDA GPU is visible (CUDA_VISIBLE_DEVICES is {shown})"
    raise DeviceError(f"--device cuda: {why}; use --device auto or cpu to run on the CPU")


def device_name(device: torch.device) -> str:
    """A human name of ``device``: the GPU's name, or the CPU's model."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back to what platform knows
    return platform.processor() or platform.machine()


class VolumeReport(BaseModel):
    """What was done with one input volume."""

    source: str
    kind: str
    input_shape: list[int]
    voxel_mm: list[float]
    output: str
    output_shape: list[int]
    lung_voxels: int
    lung_volume_ml: float
    seconds: float


class InferReport(BaseModel):
    """The JSON report pl-infer writes (:data:`REPORT_FILE`)."""

    plugin: str
    version: str
    requested_device: str
    device: str
    device_name: str
    cuda_visible_devices: str | None
    torch_version: str
    torch_cuda: str | None
    cpu_threads: int
    model: dict[str, Any]
    volumes: list[VolumeReport]
    load_seconds: float
    total_seconds: float


def _segment(
    model: Any, volume: Volume, device: torch.device, batch: int, outputdir: Path
) -> VolumeReport:
    """Predict ``volume``'s mask, write it as NIfTI, and say what was done."""
    started = time.perf_counter()
    mask = predict_volume(model, torch.from_numpy(volume.hu), device, batch_size=batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    data = mask.numpy().astype(np.uint8)
    out = outputdir / f"{volume.name}{MASK_SUFFIX}"
    out.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data, volume.affine)  # type: ignore[attr-defined, no-untyped-call]
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, out)  # type: ignore[attr-defined]
    voxel_mm = [float(v) for v in np.linalg.norm(volume.affine[:3, :3], axis=0)]
    lung_voxels = int(data.sum())
    return VolumeReport(
        source=volume.source,
        kind=volume.kind,
        input_shape=list(volume.hu.shape),
        voxel_mm=[round(v, 4) for v in voxel_mm],
        output=out.relative_to(outputdir).as_posix(),
        output_shape=list(data.shape),
        lung_voxels=lung_voxels,
        lung_volume_ml=round(lung_voxels * float(np.prod(voxel_mm)) / 1000.0, 2),
        seconds=round(seconds, 4),
    )


def run_inference(
    inputdir: Path, outputdir: Path, *, requested_device: str, batch: int, plugin: str, version: str
) -> InferReport:
    """Segment every volume under ``inputdir`` into ``outputdir`` and write the report.

    Raises ``DeviceError`` (device), :class:`~pl_infer.model.ModelError`
    (weights), :class:`~pl_infer.volumes.VolumeError` (inputs, also when
    there is none) and ``OSError`` (writing).
    """
    started = time.perf_counter()
    device = select_device(requested_device)
    model, checksum = load_model(device)
    load_seconds = time.perf_counter() - started
    outputdir.mkdir(parents=True, exist_ok=True)
    reports = [_segment(model, v, device, batch, outputdir) for v in find_volumes(inputdir)]
    if not reports:
        raise VolumeError(f"no NIfTI file or DICOM series found in {inputdir}")
    report = InferReport(
        plugin=plugin,
        version=version,
        requested_device=requested_device,
        device=str(device),
        device_name=device_name(device),
        cuda_visible_devices=_cuda_visible(),
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
        cpu_threads=torch.get_num_threads(),
        model={
            "name": MODEL_NAME,
            "checksum": checksum,
            "parameters": sum(p.numel() for p in model.parameters()),
            "input_size": MODEL_SIZE,
        },
        volumes=reports,
        load_seconds=round(load_seconds, 4),
        total_seconds=round(time.perf_counter() - started, 4),
    )
    (outputdir / REPORT_FILE).write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return report
