"""pl-dcm2nifti: series grouping and sorting, NIfTI geometry against the DICOM geometry."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from chris_sdk import PluginDescriptor, PluginType
from ct_phantom import Phantom, PhantomSpec, make_phantom, slice_position, write_series
from pl_dcm2nifti.app import plugin


def small(**kwargs: Any) -> PhantomSpec:
    """A small phantom (20 slices of 72 × 80) with anisotropic pixels."""
    return PhantomSpec(shape=(20, 72, 80), pixel_spacing=(1.5, 1.25), slice_spacing=3.0, **kwargs)


def oblique_cosines(degrees: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Row and column cosines of an axial plane tilted by ``degrees`` about x then z."""
    a, b = math.radians(degrees), math.radians(degrees / 2)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rz = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    rot = rz @ rx
    return tuple(rot @ [1.0, 0, 0]), tuple(rot @ [0, 1.0, 0])


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(small(emphysema_fraction=0.2, seed=3))


def run(inputdir: Path, outputdir: Path) -> int:
    return plugin.main([str(inputdir), str(outputdir)])


def check_geometry(image: nib.Nifti1Image, dicom_dir: Path) -> None:
    """The affine maps (i, j, k) to each slice's position, and voxels hold its HU."""
    data = np.asarray(image.dataobj)
    for path in dicom_dir.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ipp_lps = np.array([float(v) for v in ds.ImagePositionPatient])
        row = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        col = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
        # Find this slice's k: the one whose voxel (0, 0, k) lands on its position.
        ras = image.affine @ np.array([[0, 0, k, 1] for k in range(data.shape[2])]).T
        lps = ras[:3].T * [-1, -1, 1]
        [k] = np.flatnonzero(np.linalg.norm(lps - ipp_lps, axis=1) < 1e-3)
        # Another pixel: column i = 5, row j = 7 (PS3.3 C.7.6.2.1.1).
        expected = (
            ipp_lps + 5 * float(ds.PixelSpacing[1]) * row + 7 * float(ds.PixelSpacing[0]) * col
        )
        got = (image.affine @ [5, 7, k, 1])[:3] * [-1, -1, 1]
        np.testing.assert_allclose(got, expected, atol=1e-3)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(data[:, :, k], hu.T)


def test_axial_series_geometry_values_and_sidecar(phantom: Phantom, tmp_path: Path) -> None:
    dicom = tmp_path / "in"
    write_series(phantom, dicom / "a" / "b")  # nested, shuffled names
    (dicom / "notes.txt").write_text("not DICOM\n")
    out = tmp_path / "out"
    assert run(dicom, out) == 0
    [nifti] = out.glob("*.nii.gz")
    assert nifti.name == "2_Chest_phantom_LAA_0.20.nii.gz"
    image = nib.load(nifti)
    assert image.shape == (80, 72, 20)
    assert image.get_data_dtype() == np.int16
    assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
    np.testing.assert_allclose(image.header.get_zooms(), (1.25, 1.5, 3.0), atol=1e-5)
    check_geometry(image, dicom / "a" / "b")
    # The volume is the phantom itself (rows/columns transposed into [i, j, k]).
    np.testing.assert_array_equal(np.asarray(image.dataobj), phantom.hu.transpose(2, 1, 0))
    # RAS+: the first voxel is the phantom origin with x, y negated.
    np.testing.assert_allclose(image.affine[:3, 3], np.array(phantom.spec.origin) * [-1, -1, 1])
    meta = json.loads(nifti.with_name(nifti.name.replace(".nii.gz", ".json")).read_text())
    assert meta["Modality"] == "CT"
    assert meta["NumberOfSlices"] == 20
    assert meta["VoxelSpacingMM"] == [1.25, 1.5, 3.0]
    assert meta["PatientID"] == "PHANTOM-001"
    assert len(meta["SourceInstances"]) == 20
    assert meta["SourceFiles"] == 20


def test_oblique_series_geometry(tmp_path: Path) -> None:
    row, col = oblique_cosines(25.0)
    spec = small(emphysema_fraction=0.1, row_cosine=row, column_cosine=col)
    phantom = make_phantom(spec)
    dicom = tmp_path / "in"
    write_series(phantom, dicom)
    out = tmp_path / "out"
    assert run(dicom, out) == 0
    [nifti] = out.glob("*.nii.gz")
    image = nib.load(nifti)
    check_geometry(image, dicom)
    # The slice axis of the affine is the oblique normal times the spacing.
    step = (image.affine[:3, 2]) * [-1, -1, 1]
    np.testing.assert_allclose(step, slice_position(spec, 1) - slice_position(spec, 0), atol=1e-3)
    assert not np.allclose(step / np.linalg.norm(step), [0, 0, 1])


def test_two_series_give_two_volumes(phantom: Phantom, tmp_path: Path) -> None:
    write_series(phantom, tmp_path / "in" / "one")
    write_series(make_phantom(small(emphysema_fraction=0.4)), tmp_path / "in" / "two")
    out = tmp_path / "out"
    assert run(tmp_path / "in", out) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "2_Chest_phantom_LAA_0.20.json",
        "2_Chest_phantom_LAA_0.20.nii.gz",
        "2_Chest_phantom_LAA_0.40.json",
        "2_Chest_phantom_LAA_0.40.nii.gz",
    ]


def test_no_dicom_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("hello")
    assert run(tmp_path / "in", tmp_path / "out") == 1
    assert "no DICOM images" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_slice_is_a_clear_error(
    phantom: Phantom, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = write_series(phantom, tmp_path / "in", shuffle=False)
    files[7].unlink()
    assert run(tmp_path / "in", tmp_path / "out") == 1
    assert "uneven slice spacing" in capsys.readouterr().err


def test_mixed_orientation_in_one_series_is_a_clear_error(
    phantom: Phantom, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = write_series(phantom, tmp_path / "in", series_uid="1.2.3.4.5")
    row, col = oblique_cosines(10.0)
    tilted = write_series(
        make_phantom(small(row_cosine=row, column_cosine=col)),
        tmp_path / "tilted",
        series_uid="1.2.3.4.5",
    )
    shutil.copy(tilted[0], tmp_path / "in" / "intruder.dcm")
    assert len(files) == 20
    assert run(tmp_path / "in", tmp_path / "out") == 1
    assert "different orientations" in capsys.readouterr().err


def test_descriptor() -> None:
    descriptor = PluginDescriptor.parse(plugin.descriptor_json(script=Path(sys.executable)))
    assert (descriptor.name, descriptor.type) == ("pl-dcm2nifti", PluginType.DS)
    assert descriptor.dock_image == "chris-fabric/pl-dcm2nifti:1.0.0"


def test_runs_as_a_process(phantom: Phantom, tmp_path: Path) -> None:
    write_series(phantom, tmp_path / "in")
    result = subprocess.run(
        [sys.executable, "-m", "pl_dcm2nifti", str(tmp_path / "in"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 1
