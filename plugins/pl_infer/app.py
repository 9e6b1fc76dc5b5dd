"""pl-infer: segment the lungs of CT volumes with a small PyTorch network (a ds plugin).

Every NIfTI file and DICOM series in the input directory goes through
LungNet (:mod:`pl_infer.model`, weights shipped in the package); the output
directory receives one ``<name>_lungmask.nii.gz`` per volume (the input's
affine) and ``infer.json``, which records the device used (``cpu`` or
``cuda:N`` with the GPU's name), the torch version, the model checksum, the
shapes and the timings.

``--device auto`` (the default) runs on the first visible GPU, else on the
CPU; ``--device cuda`` fails with a clear message where no GPU is visible.
The descriptor asks for no GPU and accepts one (``min_gpu_limit`` 0,
``max_gpu_limit`` 1): given one, pman sets ``CUDA_VISIBLE_DEVICES`` and torch
sees it.

torch is imported only when the plugin runs, so ``infer --json`` (plugin
registration) stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chris_sdk import ChrisPlugin, Parameter, ParameterType, PluginFailure, PluginType

VERSION = "1.0.0"


def segment_lungs(options: argparse.Namespace, inputdir: Path | None, outputdir: Path) -> int:
    """Segment every volume of ``inputdir`` into ``outputdir`` (see the module docstring).

    Raises :class:`~chris_sdk.PluginFailure` for a bad option, an unavailable
    device, no or unreadable input, bad weights, and I/O failures.
    """
    if options.batchSize < 1:
        raise PluginFailure(f"--batchSize must be at least 1, got {options.batchSize}")
    if inputdir is None:
        raise PluginFailure("pl-infer needs an input directory")
    from pl_infer.infer import DeviceError, run_inference
    from pl_infer.model import ModelError
    from pl_infer.volumes import VolumeError

    try:
        run_inference(
            inputdir,
            outputdir,
            requested_device=options.device,
            batch=options.batchSize,
            plugin=plugin.name,
            version=VERSION,
        )
    except (DeviceError, ModelError, VolumeError, OSError) as exc:
        raise PluginFailure(str(exc)) from exc
    return 0


plugin = ChrisPlugin(
    name="pl-infer",
    type=PluginType.DS,
    version=VERSION,
    dock_image=f"chris-fabric/pl-infer:{VERSION}",
    title="Lung segmentation with a small CNN (GPU when available)",
    category="Segmentation",
    description=(
        "Predict a lung mask from CT volumes (NIfTI or DICOM) with a tiny 2D U-Net; "
        "runs on a GPU when one is visible, else on the CPU"
    ),
    authors="chris-fabric developers",
    license="MIT",
    parameters=[
        Parameter(
            "--device",
            "device",
            ParameterType.STR,
            help="auto (a GPU when visible, else the CPU), cpu or cuda (fails without a GPU)",
            default="auto",
        ),
        Parameter(
            "--batchSize",
            "batchSize",
            ParameterType.INT,
            help="slices per forward pass",
            default=16,
        ),
    ],
    run=segment_lungs,
    min_memory_limit="1Gi",
    min_cpu_limit="1000m",
    min_gpu_limit=0,
    max_gpu_limit=1,
)


def main() -> None:
    """Console script ``infer``."""
    sys.exit(plugin.main())
