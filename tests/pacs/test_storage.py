"""Filing attributes: the fast scanner agrees with pydicom; paths; the store's duplicates."""

from __future__ import annotations

import shutil
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
    file_header,
    read_instance,
    relative_path,
)
from pydicom import dcmread
from pydicom.uid import UID, ImplicitVRLittleEndian
from pynetdicom.dsutils import create_file_meta, encode_file_meta

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


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"),  # even lengths
        ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.45", "1.2.840.10008.1.2"),  # odd: padded
        ("1.2.840.10008.5.1.4.1.1.7", "2.25." + "9" * 59, "1.2.840.10008.1.2.4.50"),
    ],
)
def test_file_header_is_pynetdicoms(sop_class: str, sop_instance: str, syntax: str) -> None:
    # the receiver builds the header itself (faster); it must stay byte-identical to
    # what pynetdicom's Event.encoded_dataset() puts before the dataset
    expected = (
        b"\0" * 128
        + b"DICM"
        + encode_file_meta(
            create_file_meta(
                sop_class_uid=UID(sop_class),
                sop_instance_uid=UID(sop_instance),
                transfer_syntax=UID(syntax),
            )
        )
    )
    header = file_header(sop_class, sop_instance, syntax)
    assert header == expected
    meta = dcmread(BytesIO(header)).file_meta  # an empty dataset after it
    assert meta.TransferSyntaxUID == syntax
    assert meta.MediaStorageSOPInstanceUID == sop_instance


def test_store_makes_folders_again_when_they_were_removed(tmp_path: Path) -> None:
    # the store remembers the folders it made; one removed since (a cleanup, an
    # operator) is made again rather than failing the next C-STORE
    store = InstanceStore(tmp_path / "root", reserve_bytes=0, fsync=False)
    assert store.write("SERVICES/PACS/X/a/b/c/0001-1.dcm", b"one")  # type: ignore[arg-type]
    shutil.rmtree(tmp_path / "root" / "SERVICES" / "PACS" / "X" / "a" / "b" / "c")
    assert store.write("SERVICES/PACS/X/a/b/c/0002-2.dcm", b"two")  # type: ignore[arg-type]
    shutil.rmtree(tmp_path / "root")
    assert store.write("SERVICES/PACS/X/a/b/c/0003-3.dcm", b"three")  # type: ignore[arg-type]
    assert (tmp_path / "root/SERVICES/PACS/X/a/b/c/0003-3.dcm").read_bytes() == b"three"
