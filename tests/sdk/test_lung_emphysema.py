"""pl-lung-emphysema: accuracy against phantoms of known emphysema, outputs, bad input.

Tolerances (absolute, in percentage points of %LAA-950; relative for volume):
the accurate method must be within :data:`ACCURATE_LAA_TOLERANCE` of the
phantom's truth and within 1 % of its lung volume; ``--fast`` within
:data:`FAST_LAA_TOLERANCE` and 3 %. The truth is measured on the phantom's
voxels inside its own lung mask (see ``ct_phantom``), so the error is that of
the segmentation (and, for ``--fast``, of the subsample).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from chris_sdk import ParameterType, PluginDescriptor, PluginType
from ct_phantom import Phantom, PhantomSpec, make_phantom, write_series
from PIL import Image
from pl_dcm2nifti.app import plugin as dcm2nifti
from pl_lung_emphysema.app import OVERLAY, REPORT, SECONDARY_CAPTURE
from pl_lung_emphysema.app import plugin as emphysema
from pydicom.uid import SecondaryCaptureImageStorage

ACCURATE_LAA_TOLERANCE = 0.5
FAST_LAA_TOLERANCE = 1.0

FRACTIONS = (0.0, 0.05, 0.15, 0.3, 0.5)


def series_dir(tmp_path: Path, fraction: float, seed: int = 1, **kwargs: object) -> Path:
    phantom = make_phantom(PhantomSpec(emphysema_fraction=fraction, seed=seed))
    write_series(phantom, tmp_path / "dicom", **kwargs)  # type: ignore[arg-type]
    (tmp_path / "truth.json").write_text(
        json.dumps(
            {
                "laa": phantom.laa950_percent,
                "volume": phantom.lung_volume_ml,
                "mld": phantom.mean_lung_density_hu,
            }
        )
    )
    return tmp_path / "dicom"


def report(out: Path) -> dict[str, object]:
    return json.loads((out / REPORT).read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_accuracy_through_nifti(fraction: float, tmp_path: Path) -> None:
    """The pipeline's path: DICOM → pl-dcm2nifti → pl-lung-emphysema, both methods."""
    phantom = make_phantom(PhantomSpec(emphysema_fraction=fraction, seed=int(fraction * 100)))
    write_series(phantom, tmp_path / "dicom")
    assert dcm2nifti.main([str(tmp_path / "dicom"), str(tmp_path / "nifti")]) == 0
    assert emphysema.main([str(tmp_path / "nifti"), str(tmp_path / "accurate")]) == 0
    assert emphysema.main(["--fast", str(tmp_path / "nifti"), str(tmp_path / "fast")]) == 0
    accurate, fast = report(tmp_path / "accurate"), report(tmp_path / "fast")
    assert abs(float(accurate["laa950_percent"]) - phantom.laa950_percent) <= (  # type: ignore[arg-type]
        ACCURATE_LAA_TOLERANCE
    )
    assert abs(float(fast["laa950_percent"]) - phantom.laa950_percent) <= FAST_LAA_TOLERANCE  # type: ignore[arg-type]
    assert float(accurate["lung_volume_ml"]) == pytest.approx(phantom.lung_volume_ml, rel=0.01)  # type: ignore[arg-type]
    assert float(fast["lung_volume_ml"]) == pytest.approx(phantom.lung_volume_ml, rel=0.03)  # type: ignore[arg-type]
    assert float(accurate["mean_lung_density_hu"]) == pytest.approx(  # type: ignore[arg-type]
        phantom.mean_lung_density_hu, abs=2.0
    )
    assert (accurate["method"], fast["method"]) == ("accurate", "fast")
    # Fast works on a quarter of the voxels.
    assert int(fast["lung_voxels"]) * 4 == pytest.approx(int(accurate["lung_voxels"]), rel=0.03)  # type: ignore[call-overload]
    sides = sorted(lung["side"] for lung in accurate["lungs"])  # type: ignore[attr-defined]
    assert sides == ["left", "right"]


def test_phantoms_with_more_emphysema_measure_more(tmp_path: Path) -> None:
    """Sanity across fractions: the measure orders the phantoms as their truth does."""
    measured = []
    for n, fraction in enumerate((0.02, 0.2, 0.6)):
        dicom = series_dir(tmp_path / str(n), fraction, seed=n)
        assert emphysema.main([str(dicom), str(tmp_path / str(n) / "out")]) == 0
        measured.append(float(report(tmp_path / str(n) / "out")["laa950_percent"]))  # type: ignore[arg-type]
    assert measured == sorted(measured)
    assert measured[-1] - measured[0] > 40


def test_dicom_input_and_secondary_capture(tmp_path: Path) -> None:
    dicom = series_dir(tmp_path, 0.25, seed=9, study_uid="1.2.826.0.1.3680043.8.498.1")
    out = tmp_path / "out"
    assert emphysema.main([str(dicom), str(out)]) == 0
    truth = json.loads((tmp_path / "truth.json").read_text())
    result = report(out)
    assert abs(float(result["laa950_percent"]) - truth["laa"]) <= ACCURATE_LAA_TOLERANCE  # type: ignore[arg-type]
    source = pydicom.dcmread(next(dicom.glob("*.dcm")))
    sc = pydicom.dcmread(out / SECONDARY_CAPTURE)
    assert sc.file_meta.MediaStorageSOPClassUID == SecondaryCaptureImageStorage
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1" == source.StudyInstanceUID
    assert (sc.PatientID, sc.PatientName) == (source.PatientID, source.PatientName)
    assert sc.AccessionNumber == source.AccessionNumber
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    [ref] = sc.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == source.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in ref.ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(p).SOPInstanceUID for p in dicom.glob("*.dcm")}
    png = Image.open(out / OVERLAY)
    assert sc.pixel_array.shape == (png.height, png.width, 3)
    np.testing.assert_array_equal(sc.pixel_array, np.asarray(png.convert("RGB")))
    # The montage shows the low-attenuation voxels in red.
    pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
    assert np.any(np.all(pixels == [255, 40, 40], axis=1))
    assert result["secondary_capture"]["SOPInstanceUID"] == sc.SOPInstanceUID  # type: ignore[index]
    assert f"{float(result['laa950_percent']):.2f}" in sc.ImageComments  # type: ignore[arg-type]


def test_two_series_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    phantom = make_phantom(PhantomSpec(shape=(20, 72, 80)))
    write_series(phantom, tmp_path / "in" / "a")
    write_series(phantom, tmp_path / "in" / "b")
    assert emphysema.main([str(tmp_path / "in"), str(tmp_path / "out")]) == 1
    assert "expected one CT series, found 2" in capsys.readouterr().err
    assert not any((tmp_path / "out").iterdir())  # nothing written


def test_non_ct_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_series(make_phantom(PhantomSpec(shape=(20, 72, 80))), tmp_path / "in", modality="MR")
    assert emphysema.main([str(tmp_path / "in"), str(tmp_path / "out")]) == 1
    assert "modality is 'MR', not CT" in capsys.readouterr().err


def test_no_dicom_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("nothing here")
    assert emphysema.main([str(tmp_path / "in"), str(tmp_path / "out")]) == 1
    assert "no DICOM images" in capsys.readouterr().err


def test_nifti_without_sidecar_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_series(make_phantom(PhantomSpec(shape=(20, 72, 80))), tmp_path / "dicom")
    assert dcm2nifti.main([str(tmp_path / "dicom"), str(tmp_path / "nifti")]) == 0
    for sidecar in (tmp_path / "nifti").glob("*.json"):
        sidecar.unlink()
    assert emphysema.main([str(tmp_path / "nifti"), str(tmp_path / "out")]) == 1
    assert "has no JSON sidecar" in capsys.readouterr().err


def test_ct_without_lungs_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A body of soft tissue only (e.g. an abdomen): nothing but outside air is below -500."""
    phantom = make_phantom(PhantomSpec(shape=(20, 72, 80)))
    body = phantom.hu.copy()
    body[phantom.lung_mask] = 40
    body[(body < -500) & ~_outside(body)] = 40
    solid = Phantom(phantom.spec, body, phantom.lung_mask, 0.0, 0.0, 0.0)
    write_series(solid, tmp_path / "in")
    assert emphysema.main([str(tmp_path / "in"), str(tmp_path / "out")]) == 1
    assert "no lungs found" in capsys.readouterr().err


def _outside(hu: np.ndarray) -> np.ndarray:
    """Voxels of low density connected to the in-plane border (the air around the body)."""
    from scipy import ndimage

    labels, _ = ndimage.label(hu < -500)
    border = np.unique(
        np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(), labels[:, :, 0].ravel()])
    )
    return np.isin(labels, border[border > 0])  # type: ignore[no-any-return]


def test_descriptor_declares_fast() -> None:
    descriptor = PluginDescriptor.parse(emphysema.descriptor_json(script=Path(sys.executable)))
    assert (descriptor.name, descriptor.type) == ("pl-lung-emphysema", PluginType.DS)
    assert descriptor.dock_image == "chris-fabric/pl-lung-emphysema:1.0.0"
    [fast] = descriptor.parameters
    assert (fast.name, fast.flag, fast.type, fast.default) == (
        "fast",
        "--fast",
        ParameterType.BOOL,
        False,
    )


def test_runs_as_a_process(tmp_path: Path) -> None:
    dicom = series_dir(tmp_path, 0.1, seed=4)
    result = subprocess.run(
        [sys.executable, "-m", "pl_lung_emphysema", "--fast", str(dicom), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert abs(float(report(tmp_path / "out")["laa950_percent"]) - truth["laa"]) <= 1.0  # type: ignore[arg-type]
