"""The pl-infer image: built locally (torch from the host's wheel), run as pman runs it.

Built only on request (``build.py --plugins pl-infer``): it is heavy, so the
default image set leaves it out; this module asks for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from chris_sdk import PluginDescriptor
from pl_infer import infer
from pl_infer.phantom import chest_volume, dice

from tests.support.images import build_module

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TAG = "chris-fabric/pl-infer:1.0.0"


@pytest.fixture(scope="module")
def image(docker_engine: Any) -> str:
    """The pl-infer image, built if missing or stale."""
    built: dict[str, str] = build_module().ensure_images(docker_engine, plugins=["pl-infer"])
    assert built == {"pl-infer": TAG}
    return TAG


def test_image_segments_a_phantom_on_the_cpu(
    docker_engine: Any, image: str, tmp_path: Path
) -> None:
    labels = docker_engine.images.get(image).labels
    descriptor = PluginDescriptor.parse(labels[build_module().DESCRIPTOR_LABEL])
    assert (descriptor.min_gpu_limit, descriptor.max_gpu_limit) == (0, 1)
    assert descriptor.selfpath == "/opt/venv/bin" and descriptor.selfexec == "infer"

    volume, truth, affine = chest_volume(41, size=128, slices=12)
    incoming, outgoing = tmp_path / "in", tmp_path / "out"
    incoming.mkdir()
    outgoing.mkdir()
    nib.save(nib.Nifti1Image(volume, affine), incoming / "chest.nii.gz")
    # The command pfcon/pman build: entrypoint, options, then the two directories.
    command = [*descriptor.entrypoint, "--device", "auto", "/share/incoming", "/share/outgoing"]
    docker_engine.containers.run(
        image,
        command,
        volumes={
            str(incoming): {"bind": "/share/incoming", "mode": "ro"},
            str(outgoing): {"bind": "/share/outgoing", "mode": "rw"},
        },
        user=f"{os.getuid()}:{os.getgid()}",
        environment={"HOME": "/tmp"},
        network_disabled=True,
        remove=True,
    )
    report = json.loads((outgoing / infer.REPORT_FILE).read_text())
    assert report["device"] == "cpu"
    assert report["torch_version"].startswith("2.13.0")
    mask_img: Any = nib.load(outgoing / f"chest{infer.MASK_SUFFIX}")
    np.testing.assert_allclose(mask_img.affine, affine)
    assert dice(np.asarray(mask_img.dataobj).astype(bool), truth) >= 0.9
