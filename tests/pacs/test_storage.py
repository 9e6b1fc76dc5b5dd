"""Filing attributes: the fast scanner agrees with pydicom; paths; the store's duplicates."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom.data
import pytest
from pacs_bridge.errors import InvalidDicom
from pacs_bridge.storage import (
    InstanceStore,
    _read_with_pydicom,
    _scan,
    _Unsupported,
    read_instance,
    relative_path,
)
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian

from tests.support.dicom import write_ct_series


def _as_file(path: str) -> bytes | None:
    """A shipped test file re-encoded with preamble and file meta (as pynetdicom writes)."""
    try:
        ds = dcmread(path, force=True)
        if "SOPInstanceUID" not in ds or "TransferSyntaxUID" not in ds.file_meta:
            return None
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    except Exception:  # some shipped files are deliberately broken
        return None


def test_scanner_agrees_with_pydicom_on_every_file_it_reads(tmp_path: Path) -> None:
    # the files shipped in the pydicom wheel, listed directly: get_testdata_files()
    # would also try to download the others
    shipped = Path(pydicom.data.__file__).parent
    files = [str(p) for d in ("test_files", "charset_files") for p in (shipped / d).glob("*.dcm")]
    series = write_ct_series(tmp_path / "ct", 2)
    implicit = dcmread(series.files[1])
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit.save_as(tmp_path / "implicit.dcm", implicit_vr=True, little_endian=True)
    files += [str(series.files[0]), str(tmp_path / "implicit.dcm")]
    scanned = fallback = 0
    for path in files:
        encoded = _as_file(path)
        if encoded is None:
            continue
        try:
            slow = _read_with_pydicom(encoded)
        except InvalidDicom:
            with pytest.raises((InvalidDicom, _Unsupported)):
                _scan(encoded)
            continue
        try:
            fast = _scan(encoded)
        except _Unsupported:
            fallback += 1
            assert read_instance(encoded) == slow
            continue
        scanned += 1
        assert fast == slow, path
    # most files take the fast path; the others (big endian, sequences of undefined
    # length, other character sets) are read by pydicom
    print(f"scanned {scanned}, read by pydicom {fallback}")
    assert scanned >= 20, (scanned, fallback)
    assert fallback >= 5, (scanned, fallback)


def test_truncated_and_missing_uids(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", 1)
    raw = series.files[0].read_bytes()
    # the scan stops at (0020,0013); a length past the end before it is not trusted
    cut = raw[: raw.index(b"\x20\x00\x0d\x00") + 10]
    with pytest.raises(InvalidDicom):
        read_instance(cut)
    with pytest.raises(InvalidDicom):
        read_instance(b"\0" * 200)
    ds = dcmread(series.files[0])
    del ds.StudyInstanceUID
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(InvalidDicom, match="StudyInstanceUID"):
        read_instance(out.getvalue())


def test_relative_path_sanitises_every_component(tmp_path: Path) -> None:
    series = write_ct_series(tmp_path / "ct", 1, patient_id="../../etc", patient_name="A/B^C D")
    inst = read_instance(series.files[0].read_bytes())
    path = relative_path("EVIL/AE", inst)
    parts = path.split("/")
    assert parts[:3] == ["SERVICES", "PACS", "EVIL_AE"]
    assert parts[3] == "etc-A_B_C_D-19700101"
    assert ".." not in parts and len(parts) == 7


def test_store_duplicates_and_atomic_files(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, reserve_bytes=0, fsync=False)
    path = "SERVICES/PACS/X/a/b/c/0001-1.2.dcm"
    assert store.write(path, b"one")  # type: ignore[arg-type]
    assert not store.write(path, b"two")  # type: ignore[arg-type]
    assert (tmp_path / path).read_bytes() == b"one"
    assert [p.name for p in (tmp_path / path).parent.iterdir()] == ["0001-1.2.dcm"]
