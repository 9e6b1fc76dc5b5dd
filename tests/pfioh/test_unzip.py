"""pfioh.unzip: streaming extraction, its limits, and the SHA-256 manifest.

Every refusal must leave nothing behind: the destination directory is gone.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pfioh.unzip
from pfioh.archive import CompressionPolicy, zip_directory, zip_stream
from pfioh.errors import CorruptArchive, InsufficientStorage, IntegrityError, UnsafeArchive
from pfioh.manifest import MANIFEST_NAME, Manifest
from pfioh.unzip import ExtractLimits, extract_async, extract_stream
from tests.pfioh.zips import build_tree, entry, snapshot

MIB = 1 << 20


def pieces(data: bytes, cuts: list[int]) -> Callable[[], bytes]:
    """A source handing out ``data`` split at the given offsets."""
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    parts = iter([data[a:b] for a, b in itertools.pairwise(bounds)])
    return lambda: next(parts, b"")


def extract(data: bytes, dest: Path, **kw: Any) -> pfioh.unzip.ExtractReport:
    return extract_stream(pieces(data, [len(data) // 3]), dest, **kw)


def zipped(src: Path, **kw: Any) -> bytes:
    return b"".join(zip_directory(src, **kw))


def zipfile_bytes(members: list[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for info, data in members:
            zf.writestr(info, data)
    return buf.getvalue()


def modes(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in root.rglob("*")
        if p.is_file()
    }


# -- round trips -----------------------------------------------------------------

_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\\\x00:"),
    min_size=1,
    max_size=10,
).filter(lambda s: s not in (".", "..") and s != MANIFEST_NAME)
_content = st.one_of(
    st.binary(max_size=5000),
    st.builds(lambda n, b: b * n, st.integers(1, 4000), st.binary(min_size=1, max_size=3)),
)
_trees = st.dictionaries(
    _names,
    st.recursive(_content, lambda kids: st.dictionaries(_names, kids, max_size=4), max_leaves=12),
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=_trees,
    level=st.sampled_from([0, 1, 9]),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
    executable=st.booleans(),
)
def test_round_trip_preserves_names_bytes_dirs_and_modes(
    tree: dict[str, object], level: int, cuts: list[int], executable: bool
) -> None:
    """Any tree, any compression, any chunking of the stream: the same tree comes out."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dest = Path(tmp, "src"), Path(tmp, "dest")
        build_tree(src, tree)
        files = sorted(p for p in src.rglob("*") if p.is_file())
        if executable and files:
            files[0].chmod(0o755)
        data = zipped(src, policy=CompressionPolicy(level=level))
        report = extract_stream(pieces(data, cuts), dest, chunk_size=1000)
        assert snapshot(dest) == snapshot(src)
        assert modes(dest) == {k: 0o755 if v & 0o100 else 0o644 for k, v in modes(src).items()}
        assert report.verified
        assert sorted(report.files) == sorted(modes(src))
        assert report.nbytes == sum(p.stat().st_size for p in files)


def test_stored_member_containing_the_descriptor_signature(tmp_path: Path) -> None:
    """A stored member whose size only follows its data may contain PK\\x07\\x08 itself."""
    src = tmp_path / "src"
    tricky = b"PK\x07\x08" + b"\0" * 12 + os.urandom(5000) + b"PK\x07\x08" * 100 + b"PK\x07"
    build_tree(src, {"a.bin": tricky, "b.bin": b"PK\x07\x08"})
    data = zipped(src, policy=CompressionPolicy(level=0))
    for cut in range(0, len(data), 97):  # signature split across chunks everywhere
        dest = tmp_path / f"d{cut}"
        extract_stream(pieces(data, [cut, cut + 2]), dest)
        assert (dest / "a.bin").read_bytes() == tricky


def test_foreign_zips_without_manifest(tmp_path: Path) -> None:
    """Zips as ChRIS's CUBE makes them (zipfile, sizes in the headers), zip64, bzip2."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("deflated.txt", b"text " * 1000)
        zf.writestr("stored.bin", b"s" * 100, compress_type=zipfile.ZIP_STORED)
        zf.writestr("b.txt", b"bz" * 1000, compress_type=zipfile.ZIP_BZIP2)
        with zf.open("z64.bin", "w", force_zip64=True) as f:
            f.write(b"64" * 1000)
    report = extract(buf.getvalue(), tmp_path / "out")
    assert not report.verified
    assert (tmp_path / "out" / "b.txt").read_bytes() == b"bz" * 1000
    assert (tmp_path / "out" / "z64.bin").read_bytes() == b"64" * 1000


def test_unseekable_writer_with_descriptors(tmp_path: Path) -> None:
    """zipfile writing to a pipe: sizes only in the data descriptors, even for stored data."""

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.data += b
            return len(b)

    pipe = Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED) as zf:
        with zf.open("a.bin", "w") as f:
            f.write(b"PK\x07\x08" * 500)
        with zf.open("b.bin", "w", force_zip64=True) as f:
            f.write(b"b" * 777)
    extract(bytes(pipe.data), tmp_path / "out")
    assert (tmp_path / "out" / "a.bin").read_bytes() == b"PK\x07\x08" * 500
    assert (tmp_path / "out" / "b.bin").read_bytes() == b"b" * 777


def test_rename_applies_and_clashes_are_refused(tmp_path: Path) -> None:
    data = zipfile_bytes([entry("a,b/c,.txt", b"1"), entry("x", b"2")])
    report = extract(data, tmp_path / "ok", rename=lambda p: p.replace(",", ""))
    assert sorted(report.files) == ["ab/c.txt", "x"]
    clash = zipfile_bytes([entry("a,b", b"1"), entry("ab", b"2")])
    with pytest.raises(UnsafeArchive, match="duplicate"):
        extract(clash, tmp_path / "bad", rename=lambda p: p.replace(",", ""))
    assert not (tmp_path / "bad").exists()


# -- integrity ---------------------------------------------------------------------


def _with_manifest(members: list[tuple[str, bytes]], manifest: Manifest) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        zf.writestr(MANIFEST_NAME, manifest.to_bytes())
    return buf.getvalue()


def _listing(**files: bytes) -> Manifest:
    import hashlib

    m = Manifest()
    for name, data in files.items():
        m.add_file(name, len(data), hashlib.sha256(data).hexdigest())
    return m


@pytest.mark.parametrize(
    ("members", "listed", "why"),
    [
        ([("a", b"changed")], {"a": b"original"}, "SHA-256|bytes"),
        ([("a", b"1")], {"a": b"1", "b": b"2"}, "'b' is missing"),
        ([("a", b"1"), ("extra", b"x")], {"a": b"1"}, "'extra' is not in the manifest"),
    ],
    ids=["changed", "missing", "unexpected"],
)
def test_manifest_mismatch_fails_and_keeps_nothing(
    tmp_path: Path, members: list[tuple[str, bytes]], listed: dict[str, bytes], why: str
) -> None:
    data = _with_manifest(members, _listing(**listed))
    with pytest.raises(IntegrityError, match=why) as err:
        extract(data, tmp_path / "out")
    assert err.value.code == "integrity_error" and err.value.status == 400
    assert not (tmp_path / "out").exists()


def test_a_byte_changed_in_transit_is_caught(tmp_path: Path) -> None:
    """Change a stored byte and fix up its CRC: only the manifest can tell."""
    src = tmp_path / "src"
    payload = os.urandom(4000)
    build_tree(src, {"scan.bin": payload})
    data = bytearray(zipped(src, policy=CompressionPolicy(level=0)))
    at = data.index(payload) + 1000
    data[at] ^= 0xFF
    fixed = struct.pack("<I", zlib.crc32(bytes(data[at - 1000 : at + 3000])))
    desc = data.index(b"PK\x07\x08", at + 3000 - 4)
    data[desc + 4 : desc + 8] = fixed
    with pytest.raises(IntegrityError, match=r"scan\.bin"):
        extract(bytes(data), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_required_manifest(tmp_path: Path) -> None:
    data = zipfile_bytes([entry("a", b"1")])
    with pytest.raises(IntegrityError, match="no SHA-256 manifest"):
        extract(data, tmp_path / "out", limits=ExtractLimits(require_manifest=True))
    assert not (tmp_path / "out").exists()


def test_manifest_must_be_last(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(MANIFEST_NAME, Manifest().to_bytes())
        zf.writestr("late.txt", b"x")
    with pytest.raises(CorruptArchive, match="must be last"):
        extract(buf.getvalue(), tmp_path / "out")


def test_garbled_manifest(tmp_path: Path) -> None:
    data = zipfile_bytes([entry(MANIFEST_NAME, b'{"not": "a manifest"}\n')])
    with pytest.raises(CorruptArchive, match="manifest"):
        extract(data, tmp_path / "out")


# -- hostile and damaged archives ----------------------------------------------------


def test_zip_bomb_ratio(tmp_path: Path) -> None:
    bomb = zipfile_bytes([entry("zeros", b"\0" * (8 * MIB))])
    assert len(bomb) < 20_000
    limits = ExtractLimits(max_ratio=100, ratio_floor=MIB)
    with pytest.raises(UnsafeArchive, match="expands more than 100:1"):
        extract(bomb, tmp_path / "out", limits=limits)
    assert not (tmp_path / "out").exists()


def test_too_many_members(tmp_path: Path) -> None:
    data = zipfile_bytes([entry(f"f{i}", b"") for i in range(11)])
    with pytest.raises(UnsafeArchive, match="more than 10 members"):
        extract(data, tmp_path / "out", limits=ExtractLimits(max_members=10))


def test_total_size_limit_counts_real_bytes(tmp_path: Path) -> None:
    data = zipfile_bytes([entry("a", b"1" * 5000), entry("b", b"2" * 5000)])
    with pytest.raises(UnsafeArchive, match="6000 bytes"):
        extract(data, tmp_path / "out", limits=ExtractLimits(max_bytes=6000))


def test_symlink_known_only_from_the_central_directory(tmp_path: Path) -> None:
    data = zipfile_bytes(
        [entry("ok.txt", b"fine"), entry("link", b"/etc/shadow", mode=stat.S_IFLNK | 0o777)]
    )
    with pytest.raises(UnsafeArchive, match="symbolic link"):
        extract(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_central_directory_must_match(tmp_path: Path) -> None:
    data = bytearray(zipfile_bytes([entry("aaa", b"1"), entry("bbb", b"2")]))
    cd = data.index(b"PK\x01\x02")
    at = data.index(b"bbb", cd)
    data[at : at + 3] = b"ccc"
    with pytest.raises(CorruptArchive, match="central directory does not match"):
        extract(bytes(data), tmp_path / "out")


def test_encrypted_and_unknown_methods(tmp_path: Path) -> None:
    data = bytearray(zipfile_bytes([entry("secret", b"x" * 100)]))
    data[6] |= 0x01  # local header flag: encrypted
    with pytest.raises(CorruptArchive, match="encrypted"):
        extract(bytes(data), tmp_path / "a")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_LZMA) as zf:
        zf.writestr("x", b"lzma" * 100)
    with pytest.raises(CorruptArchive, match="unsupported compression method 14"):
        extract(buf.getvalue(), tmp_path / "b")


@pytest.mark.parametrize("keep", [0.0, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99])
def test_truncated_anywhere(tmp_path: Path, keep: float) -> None:
    src = tmp_path / "src"
    build_tree(src, {"a.txt": b"abc" * 300, "b.bin": os.urandom(3000)})
    data = zipped(src)
    with pytest.raises(CorruptArchive):
        extract(data[: int(len(data) * keep)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_deflate_data(tmp_path: Path) -> None:
    data = bytearray(zipfile_bytes([entry("a.txt", b"hello " * 2000)]))
    start = data.index(b"a.txt") + 5
    data[start + 5 : start + 40] = b"\xff" * 35
    with pytest.raises(CorruptArchive, match=r"a\.txt"):
        extract(bytes(data), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_free_space_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused at once when the disk is short, and mid-stream when it runs short."""
    data = zipfile_bytes([entry("big", b"\0" * (100 * MIB))])
    real = os.statvfs

    def full(path: Any) -> Any:
        st = real(path)
        return os.statvfs_result((*st[:4], 10, *st[5:]))  # f_bavail: 10 blocks

    monkeypatch.setattr(pfioh.unzip.os, "statvfs", full)
    with pytest.raises(InsufficientStorage, match="not enough free space"):
        extract(data, tmp_path / "a", limits=ExtractLimits(reserve_bytes=MIB))
    assert not (tmp_path / "a").exists()

    calls = iter([real, full, full, full])
    monkeypatch.setattr(pfioh.unzip.os, "statvfs", lambda p: next(calls)(p))
    with pytest.raises(InsufficientStorage):
        extract(data, tmp_path / "b", limits=ExtractLimits(reserve_bytes=MIB))
    assert not (tmp_path / "b").exists()


def test_disk_full_while_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = zipfile_bytes([entry("a", b"x" * 5000)])

    class FullDisk(io.RawIOBase):
        def __init__(self, path: Any, mode: str) -> None:
            Path(path).touch()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(pfioh.unzip, "open", FullDisk, raising=False)
    with pytest.raises(InsufficientStorage, match="full"):
        extract(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- the asyncio bridge ----------------------------------------------------------------


async def test_extract_async_streams_and_reports(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src, {"d": {"x.txt": b"x" * 100_000}, "e": {}})
    data = zipped(src)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 777):
            yield data[i : i + 777]

    report = await extract_async(body(), tmp_path / "out", chunk_size=4096)
    assert report.verified and snapshot(tmp_path / "out") == snapshot(src)


async def test_extract_async_body_failure_leaves_nothing(tmp_path: Path) -> None:
    data = zipfile_bytes([entry("a", os.urandom(50_000))])

    async def breaks() -> AsyncIterator[bytes]:
        yield data[:20_000]
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        await extract_async(breaks(), tmp_path / "out", chunk_size=4096)
    assert not (tmp_path / "out").exists()


async def test_extract_async_cancelled_leaves_nothing(tmp_path: Path) -> None:
    data = zipfile_bytes([entry("a", os.urandom(50_000))])
    stalled = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield data[:20_000]
        stalled.set()
        await asyncio.sleep(3600)

    task = asyncio.ensure_future(extract_async(stalls(), tmp_path / "out", chunk_size=4096))
    await stalled.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (tmp_path / "out").exists()


def _files(n: int, root: Path) -> Iterator[tuple[Path, str]]:
    for i in range(n):
        p = root / f"f{i}"
        p.write_bytes(b"%d" % i)
        yield p, f"f{i}"


def test_many_members_stream_in_constant_chunks(tmp_path: Path) -> None:
    data = b"".join(zip_stream(_files(500, tmp_path)))
    report = extract(data, tmp_path / "out")
    assert report.nfiles == 500 and report.verified
