"""End to end: pl-infer in a feed on the embedded stack (pman's ``local`` backend).

A phantom chest CT uploaded to CUBE goes through ``pl-dircopy → pl-infer``;
the lung mask and report come back through pfcon and CUBE's storage, and the
mask is checked against the phantom's truth.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from pl_infer import infer
from pl_infer.app import plugin as infer_plugin
from pl_infer.phantom import chest_volume, dice

from cube import schema
from cube.cli.stack import Stack
from cube.client import CubeClient, CubeClientError
from cube.schema import InstanceStatus

pytestmark = pytest.mark.slow

PLUGINS_DIR = Path(__file__).resolve().parents[2] / "plugins"


def console_script(directory: Path) -> Path:
    """A launcher equal to pip's ``infer`` console script, importing this checkout.

    The local backend gives a job only ``PATH`` and ``HOME``, so the job finds
    the plugin by the path written here (the installed ``infer`` may belong to
    another checkout).
    """
    script = directory / "infer"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(PLUGINS_DIR)!r})\n"
        "from pl_infer.app import main\n"
        "sys.exit(main())\n"
    )
    script.chmod(0o755)
    return script


async def infer_plugin_on(stack: Stack, client: CubeClient, tmp_path: Path) -> schema.Plugin:
    """pl-infer as the stack registered it (an optional plugin), or registered here.

    The stack registers it when the console script ``infer`` is installed
    beside this interpreter; otherwise the launcher of :func:`console_script`
    stands in for it.
    """
    installed = (Path(sys.executable).parent / "infer").exists()
    try:
        found = await client.plugin_by_name("pl-infer")
    except CubeClientError:
        assert not installed, "the stack did not register the installed pl-infer"
        desc = infer_plugin.descriptor_dict(script=console_script(tmp_path))
        return await client.register_plugin(desc, [stack.config.compute_name])
    assert installed, "pl-infer registered though its console script is not installed"
    return found


async def test_infer_in_a_feed(local_stack: tuple[Stack, CubeClient], tmp_path: Path) -> None:
    stack, client = local_stack
    registered = await infer_plugin_on(stack, client, tmp_path)
    assert (registered.min_gpu_limit, registered.max_gpu_limit) == (0, 1)

    volume, truth, affine = chest_volume(5, size=128, slices=16)
    local = tmp_path / "upload" / "chest.nii.gz"
    local.parent.mkdir()
    nib.save(nib.Nifti1Image(volume, affine), local)
    folder = "home/chris/uploads/ct"
    await client.upload(local, f"{folder}/chest.nii.gz")

    dircopy = await client.plugin_by_name("pl-dircopy")
    root = await client.create_instance(dircopy.id, {"dir": folder}, title="infer e2e")
    inst = await client.create_instance(registered.id, {"device": "auto"}, previous_id=root.id)
    final = await client.wait(inst.id, timeout=300)
    assert final.status is InstanceStatus.FINISHED_SUCCESSFULLY, (
        final.error_code,
        final.error_message,
        final.summary,
    )
    assert final.gpu_limit == 0

    files = {
        f.fname.removeprefix(final.output_path + "/"): f
        for f in await client.instance_files(inst.id)
    }
    mask_name = f"chest{infer.MASK_SUFFIX}"
    assert set(files) == {infer.REPORT_FILE, mask_name}
    got: dict[str, Path] = {}
    for rel, f in files.items():
        got[rel] = tmp_path / "download" / rel
        await client.download(f.file_resource, got[rel])

    report: dict[str, Any] = json.loads(got[infer.REPORT_FILE].read_text())
    # a job that asked for no GPU sees none: pman hides them (or there are none)
    assert report["device"] == "cpu"
    mask_img: Any = nib.load(got[mask_name])
    np.testing.assert_allclose(mask_img.affine, affine)
    assert dice(np.asarray(mask_img.dataobj).astype(bool), truth) >= 0.9
