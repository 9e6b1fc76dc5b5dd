"""pl-infer at the SDK level: its descriptor, device selection, weights and real runs.

The plugin runs as a process (``python -m pl_infer``, what the console script
``infer`` calls) on synthetic chest CT phantoms whose lung mask is known, so
the Dice of the prediction checks that the shipped weights do their job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from chris_sdk import PluginType
from pl_infer import infer, model
from pl_infer.app import plugin
from pl_infer.phantom import chest_volume, dice

from tests.support.dicom import ct_slice
from tests.support.images import build_module

REPO = Path(__file__).resolve().parents[2]
#: The least Dice against the phantom's truth a run must reach (the shipped
#: weights score ~0.97 on held-out phantoms; a broken model scores near 0).
MIN_DICE = 0.9


def run_infer(
    *argv: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the plugin as a process, as pman would (argument list, bounded time)."""
    return subprocess.run(
        [sys.executable, "-m", "pl_infer", *(str(a) for a in argv)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


def write_nifti(path: Path, seed: int, size: int = 160, slices: int = 20) -> tuple[Any, Any]:
    """Write a phantom volume as NIfTI; return (truth mask, affine)."""
    volume, truth, affine = chest_volume(seed, size=size, slices=slices)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, affine), path)
    return truth, affine


def read_report(outputdir: Path) -> dict[str, Any]:
    return json.loads((outputdir / infer.REPORT_FILE).read_text())  # type: ignore[no-any-return]


# -- descriptor -----------------------------------------------------------------------------


def test_descriptor_declares_optional_single_gpu() -> None:
    desc = plugin.descriptor()
    assert desc.name == "pl-infer" and desc.type is PluginType.DS
    assert desc.min_gpu_limit == 0 and desc.max_gpu_limit == 1
    params = {p.name: p for p in desc.parameters}
    assert params["device"].default == "auto" and params["device"].optional


def test_json_does_not_import_torch() -> None:
    # Registration runs `infer --json` on every embedded install: it must stay light.
    code = (
        "import sys; from pl_infer.app import plugin; plugin.descriptor_json(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_console_script_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["infer"] == "pl_infer.app:main"
    assert "torch==2.13.0" in project["optional-dependencies"]["infer"]
    result = run_infer("--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["max_gpu_limit"] == 1


def test_image_recipe_is_on_request_with_the_hosts_torch() -> None:
    build = build_module()
    recipe = build.PLUGINS["pl-infer"]
    assert not recipe.by_default and recipe.dockerfile.exists()
    # torch pinned to exactly the host's build (the wheel pip installed here)
    assert f"torch=={torch.__version__}" in build._pinned(recipe.extra)
    with pytest.raises(build.ImageBuildError, match="not installed on the host"):
        build._pinned(["no-such-distribution-here"])


# -- device selection -----------------------------------------------------------------------


def test_auto_takes_the_gpu_only_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert infer.select_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert infer.select_device("auto") == torch.device("cuda", 0)
    assert infer.select_device("cuda") == torch.device("cuda", 0)
    assert infer.select_device("cpu") == torch.device("cpu")


def test_unknown_device_is_refused() -> None:
    with pytest.raises(infer.DeviceError, match="auto, cpu, cuda"):
        infer.select_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_cuda_without_gpu_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    write_nifti(tmp_path / "in" / "ct.nii.gz", seed=1, size=64, slices=4)
    out = tmp_path / "out"
    out.mkdir()
    result = run_infer("--device", "cuda", tmp_path / "in", out)
    assert result.returncode == 1
    assert "--device cuda" in result.stderr and "Traceback" not in result.stderr
    if torch.version.cuda is None:
        assert "no CUDA support" in result.stderr
    assert list(out.iterdir()) == []


def test_hidden_gpus_mean_cpu(tmp_path: Path) -> None:
    # pman gives a job that asked for no GPU an empty CUDA_VISIBLE_DEVICES.
    write_nifti(tmp_path / "in" / "ct.nii.gz", seed=2, size=64, slices=4)
    result = run_infer(tmp_path / "in", tmp_path / "out", env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "out")
    assert report["device"] == "cpu" and report["requested_device"] == "auto"
    assert report["cuda_visible_devices"] == ""


# -- weights --------------------------------------------------------------------------------


def test_shipped_weights_match_their_manifest() -> None:
    manifest = model.read_manifest()
    state = torch.load(model.weights_dir() / model.WEIGHTS_FILE, weights_only=True)
    assert model.weights_checksum(state) == manifest["checksum"]
    assert (model.weights_dir() / model.WEIGHTS_FILE).stat().st_size < 1_000_000
    assert manifest["validation_dice"] >= MIN_DICE
    net, checksum = model.load_model(torch.device("cpu"))
    assert checksum == manifest["checksum"]
    assert sum(p.numel() for p in net.parameters()) == manifest["parameters"]


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    src = model.weights_dir()
    state = torch.load(src / model.WEIGHTS_FILE, weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1e-3
    torch.save(state, tmp_path / model.WEIGHTS_FILE)
    (tmp_path / model.MANIFEST_FILE).write_bytes((src / model.MANIFEST_FILE).read_bytes())
    with pytest.raises(model.ModelError, match="differs from the manifest"):
        model.load_model(torch.device("cpu"), tmp_path)


def _retrain(out: Path, seed: int, steps: int) -> str:
    """Run the training script; the checksum it writes in its manifest."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pl_infer.train",
            "--out",
            str(out),
            "--seed",
            str(seed),
            "--steps",
            str(steps),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return str(json.loads((out / model.MANIFEST_FILE).read_text())["checksum"])


def test_training_is_deterministic(tmp_path: Path) -> None:
    """Two short runs with the same seed give bit-identical weights (what makes
    the shipped ones reproducible); another seed gives others."""
    seed = int(model.read_manifest()["seed"])
    first = _retrain(tmp_path / "a", seed, 4)
    assert _retrain(tmp_path / "b", seed, 4) == first
    assert _retrain(tmp_path / "c", seed + 1, 4) != first


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("PL_INFER_RETRAIN") != "1",
    reason="the full retraining takes minutes: set PL_INFER_RETRAIN=1 to run it",
)
def test_training_script_reproduces_the_shipped_weights(tmp_path: Path) -> None:
    """Retrain with the manifest's settings: the checksum must be the shipped one.

    Bit-identical on the same torch build and CPU kind (see pl_infer.train);
    opt-in, as it takes minutes (the short determinism test above runs always).
    """
    manifest = model.read_manifest()
    assert _retrain(tmp_path, manifest["seed"], manifest["steps"]) == manifest["checksum"]


# -- runs on phantoms -----------------------------------------------------------------------


def test_nifti_phantom_segmented_on_cpu(tmp_path: Path) -> None:
    truth, affine = write_nifti(tmp_path / "in" / "sub" / "chest.nii.gz", seed=11)
    out = tmp_path / "out"
    result = run_infer("--device", "auto", tmp_path / "in", out)
    assert result.returncode == 0, result.stderr

    mask_img: Any = nib.load(out / "sub" / f"chest{infer.MASK_SUFFIX}")
    mask = np.asarray(mask_img.dataobj)
    assert mask.dtype == np.uint8 and mask.shape == truth.shape
    np.testing.assert_allclose(mask_img.affine, affine)
    score = dice(mask.astype(bool), truth)
    assert score >= MIN_DICE, score

    report = read_report(out)
    assert report["device"] == "cpu"
    assert report["torch_version"] == torch.__version__
    assert report["model"]["checksum"] == model.read_manifest()["checksum"]
    (vol,) = report["volumes"]
    assert vol["source"] == "sub/chest.nii.gz" and vol["kind"] == "nifti"
    assert vol["input_shape"] == vol["output_shape"] == list(truth.shape)
    assert vol["output"] == f"sub/chest{infer.MASK_SUFFIX}"
    assert vol["lung_voxels"] == int(mask.sum())
    assert vol["voxel_mm"] == [2.0, 2.0, 5.0]
    assert vol["seconds"] > 0 and report["total_seconds"] >= vol["seconds"]


def write_dicom_series(folder: Path, volume: Any, spacing: float, thickness: float) -> None:
    """Write an (X, Y, Z) HU volume as an axial CT series (slices in reverse file order)."""
    size, _, slices = volume.shape
    stored = np.clip(np.rint(volume + 1024), 0, 4095).astype(np.uint16)
    folder.mkdir(parents=True)
    uids = {"study_uid": "1.2.3.4", "series_uid": "1.2.3.4.5", "frame_uid": "1.2.3.4.6"}
    for k in range(slices):
        ds = ct_slice(**uids, index=k, size=size, patient_id="P1", patient_name="Doe^Jane")
        ds.ImagePositionPatient = [-100.0, -120.0, k * thickness]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = thickness
        # pixel rows run along y: the (X, Y) slice transposed to (rows, columns)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        ds.save_as(folder / f"img{slices - k:03d}.dcm", enforce_file_format=True)


def test_dicom_series_segmented_with_its_geometry(tmp_path: Path) -> None:
    volume, truth, _ = chest_volume(21, size=128, slices=16)
    write_dicom_series(tmp_path / "in" / "series1", volume, spacing=2.5, thickness=4.0)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    out = tmp_path / "out"
    result = run_infer(tmp_path / "in", out)
    assert result.returncode == 0, result.stderr

    mask_img: Any = nib.load(out / f"series1{infer.MASK_SUFFIX}")
    mask = np.asarray(mask_img.dataobj).astype(bool)
    assert mask.shape == truth.shape
    assert dice(mask, truth) >= MIN_DICE
    # LPS (-100, -120, 0) at voxel 0 → RAS (100, 120, 0); i along -x, j along -y in RAS.
    expected = np.array([[-2.5, 0, 0, 100.0], [0, -2.5, 0, 120.0], [0, 0, 4.0, 0.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(mask_img.affine, expected, atol=1e-4)
    (vol,) = read_report(out)["volumes"]
    assert vol["kind"] == "dicom" and vol["source"] == "series1"


def test_empty_input_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("nothing to see")
    result = run_infer(tmp_path / "in", tmp_path / "out")
    assert result.returncode == 1
    assert "no NIfTI file or DICOM series" in result.stderr


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"no CUDA GPU visible to torch {torch.__version__} "
    f"({'CPU-only build' if torch.version.cuda is None else 'CUDA ' + torch.version.cuda})",
)
def test_runs_on_the_gpu_when_one_is_visible(tmp_path: Path) -> None:
    truth, _ = write_nifti(tmp_path / "in" / "chest.nii.gz", seed=31)
    results = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / device
        result = run_infer("--device", device, tmp_path / "in", out)
        assert result.returncode == 0, result.stderr
        results[device] = read_report(out)
        mask = np.asarray(nib.load(out / f"chest{infer.MASK_SUFFIX}").dataobj).astype(bool)  # type: ignore[attr-defined]
        assert dice(mask, truth) >= MIN_DICE
        results[device]["mask"] = mask
    gpu = results["cuda"]
    assert gpu["device"] == "cuda:0"
    assert gpu["device_name"] == torch.cuda.get_device_name(0)
    assert gpu["torch_cuda"] == torch.version.cuda
    # the same weights on both devices: masks agree but for rounding at the edges
    assert dice(gpu["mask"], results["cpu"]["mask"]) > 0.99
