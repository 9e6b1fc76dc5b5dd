"""pfioh.archive and pfioh.unzip on their own: member checks, safe extraction, streamed zips."""

from __future__ import annotations

import asyncio
import io
import os
import random
import stat
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pfioh.archive import (
    ArchiveError,
    CompressionPolicy,
    CorruptArchive,
    LinkMeter,
    UnsafeArchive,
    aiter_sync,
    check_member,
    iter_tree,
    zip_directory,
    zip_stream,
)
from pfioh.unzip import ExtractLimits, safe_extract
from tests.pfioh.zips import build_tree, entry, snapshot, write_zip


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.txt", "a.txt"),
        ("a/b/c.txt", "a/b/c.txt"),
        ("a/./b//c.txt", "a/b/c.txt"),
        ("dir/", "dir"),
        ("win\\style\\x.txt", "win/style/x.txt"),
        ("./", ""),
        ("..foo/bar..", "..foo/bar.."),
    ],
)
def test_check_member_normalises(name: str, expected: str) -> None:
    info, _ = entry(name)
    assert check_member(info) == expected


@pytest.mark.parametrize(
    "name",
    ["../x", "a/../../x", "a/..", "/etc/passwd", "\\windows\\x", "C:/x", "c:x", "..\\x", ""],
)
def test_check_member_refuses_escaping_names(name: str) -> None:
    info, _ = entry(name)
    with pytest.raises(UnsafeArchive) as err:
        check_member(info)
    assert err.value.entry == name
    assert err.value.status == 422 and err.value.code == "unsafe_archive"


@pytest.mark.parametrize(
    ("kind", "mode"),
    [
        ("symbolic link", stat.S_IFLNK | 0o777),
        ("device", stat.S_IFCHR | 0o600),
        ("device", stat.S_IFBLK | 0o600),
        ("fifo", stat.S_IFIFO | 0o600),
        ("socket", stat.S_IFSOCK | 0o600),
    ],
)
def test_check_member_refuses_special_types(kind: str, mode: int) -> None:
    info, _ = entry("thing", b"/etc/passwd", mode=mode)
    with pytest.raises(UnsafeArchive, match=kind) as err:
        check_member(info)
    assert err.value.entry == "thing"


def test_check_member_refuses_overlong_component() -> None:
    info, _ = entry("a/" + "x" * 256)
    with pytest.raises(UnsafeArchive, match="too long"):
        check_member(info)


def test_safe_extract_writes_files_dirs_and_modes(tmp_path: Path) -> None:
    zp = write_zip(
        tmp_path / "in.zip",
        [
            entry("top.txt", b"top"),
            entry("nested/deep/file.bin", bytes(range(256)) * 50),
            entry("empty/"),
            entry("run.sh", b"#!/bin/sh\n", mode=stat.S_IFREG | 0o755),
            entry("suid", b"x", mode=stat.S_IFREG | 0o4755 | stat.S_ISGID | stat.S_ISVTX),
            entry("zero", b""),
            entry("nomode.txt", b"dos", mode=0),
        ],
    )
    dest = tmp_path / "out"
    report = safe_extract(zp, dest, chunk_size=1000)
    assert sorted(report.files) == sorted(
        ["top.txt", "nested/deep/file.bin", "run.sh", "suid", "zero", "nomode.txt"]
    )
    assert report.nfiles == 6
    assert report.nbytes == 3 + 256 * 50 + 10 + 1 + 0 + 3
    assert (dest / "nested/deep/file.bin").read_bytes() == bytes(range(256)) * 50
    assert (dest / "empty").is_dir() and not any((dest / "empty").iterdir())
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755  # no setuid/setgid/sticky
    assert stat.S_IMODE((dest / "top.txt").stat().st_mode) == 0o644
    assert (dest / "zero").read_bytes() == b""


@pytest.mark.parametrize(
    "members",
    [
        [entry("ok.txt", b"fine"), entry("../escape.txt", b"evil")],
        [entry("ok.txt", b"fine"), entry("/etc/evil", b"evil")],
        [entry("ok.txt", b"fine"), entry("link", b"/etc", mode=stat.S_IFLNK | 0o777)],
        [entry("ok.txt", b"fine"), entry("dev", b"", mode=stat.S_IFCHR | 0o666)],
        [entry("same.txt", b"1"), entry("same.txt", b"2")],
        [entry("a", b"file"), entry("a/b", b"under a file")],
        [entry("a/b", b"x"), entry("a", b"file over a dir")],
    ],
    ids=["zip-slip", "absolute", "symlink", "chardev", "duplicate", "file-parent", "dir-as-file"],
)
def test_safe_extract_refuses_and_keeps_nothing(
    tmp_path: Path, members: list[tuple[zipfile.ZipInfo, bytes]]
) -> None:
    zp = write_zip(tmp_path / "bad.zip", members)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchive):
        safe_extract(zp, dest)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_safe_extract_limits_unpacked_size(tmp_path: Path) -> None:
    zp = write_zip(tmp_path / "bomb.zip", [entry("a", b"\0" * 5000), entry("b", b"\0" * 5000)])
    with pytest.raises(UnsafeArchive, match="more than the allowed 6000 bytes"):
        safe_extract(zp, tmp_path / "out", limits=ExtractLimits(max_bytes=6000))
    assert not (tmp_path / "out").exists()


def test_safe_extract_refuses_non_zip(tmp_path: Path) -> None:
    bad = tmp_path / "x.zip"
    bad.write_bytes(b"this is not a zip file" * 10)
    with pytest.raises(CorruptArchive) as err:
        safe_extract(bad, tmp_path / "out")
    assert err.value.code == "corrupt_archive" and err.value.status == 400
    assert not (tmp_path / "out").exists()


def _zip_with_bad_crc(path: Path) -> Path:
    """A stored zip whose second member's data was altered after writing."""
    payload = b"A" * 4000
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("first.txt", b"intact")
        zf.writestr("second.txt", payload)
    raw = bytearray(path.read_bytes())
    at = raw.index(payload)
    raw[at + 100] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def test_safe_extract_crc_error_removes_everything(tmp_path: Path) -> None:
    zp = _zip_with_bad_crc(tmp_path / "crc.zip")
    dest = tmp_path / "out"
    with pytest.raises(CorruptArchive) as err:
        safe_extract(zp, dest)
    assert err.value.entry == "second.txt"
    assert not dest.exists()


def test_safe_extract_requires_new_dest(tmp_path: Path) -> None:
    zp = write_zip(tmp_path / "ok.zip", [entry("a", b"1")])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    with pytest.raises(FileExistsError):
        safe_extract(zp, tmp_path / "out")
    assert (tmp_path / "out" / "keep").read_text() == "mine"


def test_zip_directory_skips_links_and_special_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src, {"real.txt": b"real", "sub": {}})
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (src / "link.txt").symlink_to(secret)
    (src / "linkdir").symlink_to(tmp_path)
    os.mkfifo(src / "fifo")
    names = [name for _, name in iter_tree(src)]
    assert names == ["sub/", "real.txt"]
    data = b"".join(zip_directory(src))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == [".chris-manifest.jsonl", "real.txt", "sub/"]
        assert zf.read("real.txt") == b"real"


def test_zip_stream_from_pairs(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_bytes(b"line of text\n" * 7000)
    d = tmp_path / "somedir"
    d.mkdir()
    data = b"".join(zip_stream([(a, "renamed/a.txt"), (d, "emptydir/")]))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        infos = {i.filename: i for i in zf.infolist()}
        assert set(infos) == {"renamed/a.txt", "emptydir/", ".chris-manifest.jsonl"}
        assert infos["renamed/a.txt"].compress_type == zipfile.ZIP_DEFLATED
        assert zf.read("renamed/a.txt") == a.read_bytes()
        assert zf.infolist()[-1].filename == ".chris-manifest.jsonl"


@pytest.mark.parametrize(
    ("name", "content", "level", "deflated"),
    [
        ("scan.dcm", b"DICM" + bytes(range(64)) * 200, 1, True),
        ("notes.txt", b"patient 1 slice 2\n" * 500, 6, True),
        ("random.bin", os.urandom(20_000), 1, False),  # does not shrink: stored
        ("mask.nii.gz", b"\0" * 20_000, 1, False),  # compressed already, by its name
        ("photo.PNG", b"\0" * 20_000, 1, False),
        ("notes.txt", b"patient 1 slice 2\n" * 500, 0, False),  # level 0 stores all
        ("tiny.txt", b"x", 1, False),
    ],
)
def test_compression_policy(
    tmp_path: Path, name: str, content: bytes, level: int, deflated: bool
) -> None:
    f = tmp_path / "f"
    f.write_bytes(content)
    data = b"".join(zip_stream([(f, name)], policy=CompressionPolicy(level=level)))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        method = zf.getinfo(name).compress_type
        assert method == (zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED)
        assert zf.read(name) == content


def test_compression_level_is_checked() -> None:
    with pytest.raises(ValueError, match="0 to 9"):
        CompressionPolicy(level=10)


def test_link_meter_rates() -> None:
    meter = LinkMeter()
    meter.record_sent(LinkMeter.min_bytes - 1, 1.0)
    assert meter.link_rate() is None  # too little seen to judge
    meter.record_sent(1, 0.0)
    assert meter.link_rate() == pytest.approx(LinkMeter.min_bytes)
    assert meter.deflate_rate() is None
    meter.record_deflate(100, 1.0)
    meter.record_deflate(500, 1.0)
    assert meter.deflate_rate() == pytest.approx(0.75 * 100 + 0.25 * 500)
    meter.record_deflate(0, 0.0)  # nothing measured: no change
    assert meter.deflate_rate() == pytest.approx(200)


@pytest.mark.parametrize(
    ("link", "deflate", "adaptive", "deflated"),
    [
        (None, None, True, True),  # nothing measured yet: deflate where it shrinks
        (10e6, 50e6, True, True),  # slow link: deflate pays
        (1e9, 50e6, True, False),  # fast link: deflate would be the bottleneck
        (45e6, 50e6, True, False),  # within the margin: store
        (1e9, 50e6, False, True),  # not adaptive: always deflate what shrinks
    ],
)
def test_adaptive_policy_follows_the_rates(
    link: float | None, deflate: float | None, adaptive: bool, deflated: bool
) -> None:
    meter = LinkMeter()
    if link is not None:
        meter.record_sent(LinkMeter.min_bytes, LinkMeter.min_bytes / link)
    if deflate is not None:
        meter.record_deflate(1_000_000, 1_000_000 / deflate)
    policy = CompressionPolicy(adaptive=adaptive)
    text = b"0123456789," * 1000
    assert policy.compresses("a.csv", text, meter) is deflated
    assert not policy.compresses("a.bin", os.urandom(8192), meter)  # never what does not shrink


def _csv(rng: random.Random, size: int) -> bytes:
    """Numeric CSV: deflates to about half, at a few hundred MB/s."""
    rows = []
    n = 0
    while n < size:
        row = ",".join(f"{rng.random():.6f}" for _ in range(8)) + "\n"
        rows.append(row)
        n += len(row)
    return "".join(rows).encode()[:size]


def _methods(data: bytes) -> list[int]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [i.compress_type for i in zf.infolist() if i.filename.endswith(".csv")]


@pytest.mark.parametrize("slow", [True, False])
async def test_adaptive_compression_measures_the_link(tmp_path: Path, slow: bool) -> None:
    """A slow consumer gets deflated members; a fast one, once measured, stored ones."""
    rng = random.Random(7)
    entries = []
    for i in range(24):
        f = tmp_path / f"f{i:02}.csv"
        f.write_bytes(_csv(rng, 256 * 1024))
        entries.append((f, f.name))
    meter = LinkMeter()
    meter.min_bytes = 512 * 1024  # judge early, so the test stays small
    chunks = []
    async for chunk in aiter_sync(
        zip_stream(entries, meter=meter), meter=meter, batch_bytes=64 * 1024, prefetch=1
    ):
        chunks.append(bytes(chunk))
        if slow:
            await asyncio.sleep(0.01)  # about 6 MB/s
    methods = _methods(b"".join(chunks))
    assert methods[0] == zipfile.ZIP_DEFLATED  # before any measurement
    rate = meter.link_rate()
    assert rate is not None
    if slow:
        assert rate < 20e6
        assert methods == [zipfile.ZIP_DEFLATED] * 24
    else:
        assert rate > 5 * (meter.deflate_rate() or float("inf"))
        assert methods[-8:] == [zipfile.ZIP_STORED] * 8


async def test_aiter_sync_reads_ahead_while_the_consumer_is_busy() -> None:
    produced = 0
    lock = threading.Lock()

    def pieces() -> Iterator[bytes]:
        nonlocal produced
        for _ in range(100):
            with lock:
                produced += 1
            yield b"x" * 1000

    agen = aiter_sync(pieces(), batch_bytes=1000, prefetch=3)
    assert await anext(agen) == b"x" * 1000
    for _ in range(100):  # the producer fills its slots while we hold the first chunk
        if produced >= 4:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert produced == 4  # the chunk handed over, and 3 read ahead: no more
    rest = [c async for c in agen]
    assert len(rest) == 99


def test_zip_stream_refuses_the_reserved_name(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(ArchiveError, match="reserved"):
        b"".join(zip_stream([(f, ".chris-manifest.jsonl")]))


def test_zip_directory_leaves_out_a_planted_manifest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src, {".chris-manifest.jsonl": b"forged", "real.txt": b"real"})
    report = safe_extract(_zipped(src, tmp_path / "o.zip"), tmp_path / "out")
    assert report.files == ["real.txt"] and report.verified


def _zipped(src: Path, zp: Path) -> Path:
    with open(zp, "wb") as f:
        for chunk in zip_directory(src):
            f.write(chunk)
    return zp


def test_zip_directory_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        zip_directory(tmp_path / "nope")


async def test_aiter_sync_batches_and_closes_early() -> None:
    state = {"closed": False, "produced": 0}

    def pieces() -> Iterator[bytes]:
        try:
            for _ in range(1000):
                state["produced"] += 1
                yield b"x" * 100
        finally:
            state["closed"] = True

    source = pieces()  # held here, so only an explicit close can run its finally
    agen = aiter_sync(source, batch_bytes=1000)
    first = await anext(agen)
    assert first == b"x" * 1000
    await agen.aclose()
    assert state["closed"]
    assert state["produced"] < 1000


async def test_aiter_sync_propagates_errors() -> None:
    def failing() -> Iterator[bytes]:
        yield b"ok"
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        async for _ in aiter_sync(failing()):
            pass


async def test_aiter_sync_runs_off_the_loop() -> None:
    loop_thread: list[bool] = []

    def probe() -> Iterator[bytes]:
        try:
            asyncio.get_running_loop()
            loop_thread.append(True)
        except RuntimeError:
            loop_thread.append(False)
        yield b"data"

    assert [c async for c in aiter_sync(probe())] == [b"data"]
    assert loop_thread == [False]


# -- property: zip_directory then safe_extract preserves every name and byte ---

_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\\\x00:"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
_trees = st.dictionaries(
    _names,
    st.recursive(
        st.binary(max_size=3000),
        lambda children: st.dictionaries(_names, children, max_size=4),
        max_leaves=10,
    ),
    max_size=5,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_trees)
def test_zip_directory_then_safe_extract_round_trips(tree: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, zp, dest = Path(tmp, "src"), Path(tmp, "t.zip"), Path(tmp, "dest")
        build_tree(src, tree)
        with open(zp, "wb") as f:
            for chunk in zip_directory(src):
                f.write(chunk)
        report = safe_extract(zp, dest)
        expected = snapshot(src)
        assert snapshot(dest) == expected
        assert sorted(report.files) == sorted(k for k, v in expected.items() if v is not None)
