"""The outputs of pl-lung-emphysema besides the JSON report: a PNG montage and a DICOM SC.

The montage shows a dozen slices through the lungs in a lung window, the
lung mask tinted green and the voxels below -950 HU in red, with the result
as a caption. The Secondary Capture (PS3.3 A.8.1, SOP Class
1.2.840.10008.5.1.4.1.1.7) carries the same montage as RGB pixels; it joins
the source study (same StudyInstanceUID and patient) as a new series and
references the source series and its instances (Common Instance Reference
Module), so a PACS files it with the CT it was derived from.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pl_dcm2nifti.series import STUDY_TAGS  # what the SC copies from its source
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pl_lung_emphysema.measure import LAA_THRESHOLD_HU, Measurement

#: Lung window for display (HU).
WINDOW = (-1000.0, 200.0)


def montage(measurement: Measurement, tiles: int = 12, columns: int = 4) -> Image.Image:
    """An RGB montage of ``tiles`` slices evenly spread over the lungs, with a caption."""
    hu, mask = measurement.hu, measurement.mask
    with_lung = np.flatnonzero(mask.any(axis=(0, 1)))
    picks = np.unique(np.linspace(with_lung[0], with_lung[-1], tiles).round().astype(int))
    low, high = WINDOW
    rendered: list[Image.Image] = []
    for k in picks:
        # [i, j] → image rows j, columns i: anterior up, patient's right on the left (axial).
        gray = np.clip((hu[:, :, k].T - low) / (high - low) * 255.0, 0, 255)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
        lung = mask[:, :, k].T
        laa = lung & (hu[:, :, k].T < LAA_THRESHOLD_HU)
        rgb[lung] = 0.7 * rgb[lung] + 0.3 * np.array([0.0, 255.0, 0.0])
        rgb[laa] = np.array([255.0, 40.0, 40.0])
        rendered.append(Image.fromarray(rgb.astype(np.uint8), mode="RGB"))
    width, height = rendered[0].size
    rows = -(-len(rendered) // columns)
    caption = 28
    sheet = Image.new("RGB", (columns * width, rows * height + caption), (0, 0, 0))
    for n, tile in enumerate(rendered):
        sheet.paste(tile, ((n % columns) * width, (n // columns) * height))
    text = (
        f"%LAA-950 {measurement.laa950_percent:.2f}%  lung volume "
        f"{measurement.lung_volume_ml:.0f} mL  MLD {measurement.mean_lung_density_hu:.0f} HU"
        f"  ({'fast' if measurement.step > 1 else 'accurate'})"
    )
    ImageDraw.Draw(sheet).text((6, rows * height + 8), text, fill=(255, 255, 255))
    return sheet


def secondary_capture(
    image: Image.Image,
    source: Mapping[str, Any],
    source_instances: Sequence[tuple[str, str]],
    measurement: Measurement,
    path: Path,
) -> Dataset:
    """Write ``image`` as a DICOM Secondary Capture at ``path``; return the dataset.

    ``source`` holds the source series' tags (the pl-dcm2nifti sidecar or the
    first slice's attributes): patient and study attributes are copied, and
    ``SeriesInstanceUID`` with ``source_instances`` ((SOP Class UID, SOP
    Instance UID) pairs) become the reference to the source.
    """
    rgb = image.convert("RGB")
    pixels = np.asarray(rgb, dtype=np.uint8)
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    for key in STUDY_TAGS:
        value = source.get(key)
        if value is not None:
            setattr(ds, key, value)
    # Type 2 attributes of the patient and study modules: present, possibly empty.
    for key in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID"):
        if key not in ds:
            setattr(ds, key, "")
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid()
    now = dt.datetime.now(dt.UTC)
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9001
    ds.SeriesDescription = "Lung emphysema %LAA-950"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"  # workstation: derived by software (PS3.3 C.8.6.1)
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = (
        f"pl-lung-emphysema: threshold and connected-component lung segmentation; "
        f"%LAA-950 = {measurement.laa950_percent:.2f}"
    )
    ds.ImageComments = (
        f"%LAA-950 {measurement.laa950_percent:.2f}%; lung volume "
        f"{measurement.lung_volume_ml:.0f} mL; mean lung density "
        f"{measurement.mean_lung_density_hu:.1f} HU"
    )
    series_uid = source.get("SeriesInstanceUID")
    if series_uid:
        ref = Dataset()
        ref.SeriesInstanceUID = series_uid
        items = []
        for cls, uid in source_instances:
            item = Dataset()
            item.ReferencedSOPClassUID = cls
            item.ReferencedSOPInstanceUID = uid
            items.append(item)
        ref.ReferencedInstanceSequence = DicomSequence(items)
        ds.ReferencedSeriesSequence = DicomSequence([ref])
    ds.Rows, ds.Columns = pixels.shape[0], pixels.shape[1]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return ds
