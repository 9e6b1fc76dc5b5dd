"""The real PfiohClient against a real pfioh server."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tracemalloc
import zipfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from pfioh.app import STORE_KEY, create_app
from pfioh.archive import (
    CorruptArchive,
    UnsafeArchive,
    aiter_sync,
    zip_directory,
)
from pfioh.client import PfiohClient
from pfioh.errors import (
    Conflict,
    InsufficientStorage,
    IntegrityError,
    InvalidKey,
    JobNotFound,
    PayloadTooLarge,
    PfiohUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from pfioh.manifest import MANIFEST_NAME
from pfioh.schema import JobKey
from pfioh.settings import PfiohSettings
from pfioh.store import JobStore
from pfioh.unzip import safe_extract
from tests.pfioh.conftest import RunningPfioh, StartPfioh
from tests.pfioh.zips import build_tree, entry, snapshot, write_zip
from tests.support.components import free_port

TREE: dict[str, object] = {
    "a": {"b": {"c": {"deep.txt": b"deep down\n"}}},
    "données": {"ünïcödé ✓.txt": "héllo wörld ✓".encode()},
    "empty": {},
    "bin": {"run.sh": b"#!/bin/sh\necho hi\n"},
    "zero.bin": b"",
    "big.bin": os.urandom(3 * (1 << 20) + 123),
}


async def file_chunks(path: Path, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """Read a file in chunks (test-side helper; small blocking reads are fine here)."""
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


async def push_file(client: PfiohClient, jid: str, zp: Path) -> object:
    return await client.push_incoming(jid, file_chunks(zp))


def make_source(root: Path) -> Path:
    build_tree(root, TREE)
    os.chmod(root / "bin" / "run.sh", 0o755)
    return root


async def test_round_trip(pfioh: RunningPfioh, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    async with PfiohClient(pfioh.base_url) as client:
        report = await client.push_incoming("chris-jid-1", aiter_sync(zip_directory(src)))
        assert report.jid == "chris-jid-1"
        assert report.path == "key-chris-jid-1/incoming"
        assert report.outgoing == "key-chris-jid-1/outgoing"
        assert report.nfiles == 5
        assert report.nbytes == sum(len(b) for b in snapshot(src).values() if b is not None)

        incoming = pfioh.storebase / report.path
        assert snapshot(incoming) == snapshot(src)
        assert (incoming / "empty").is_dir()
        assert os.access(incoming / "bin" / "run.sh", os.X_OK)
        assert not os.access(incoming / "zero.bin", os.X_OK)
        outgoing = pfioh.storebase / report.outgoing
        assert outgoing.is_dir() and not any(outgoing.iterdir())

        # The plugin writes its output...
        build_tree(outgoing, {"res": {"out.txt": b"result\n", "nothing": {}}, "z.bin": b""})
        (outgoing / "blob.bin").write_bytes(os.urandom(2 * (1 << 20)))

        status = await client.job_status("chris-jid-1")
        assert (status.incoming, status.outgoing_files) == (True, 3)

        pulled = tmp_path / "pulled.zip"
        with open(pulled, "wb") as f:
            async for chunk in client.iter_outgoing("chris-jid-1", chunk_size=100_000):
                assert 0 < len(chunk) <= 100_000
                f.write(chunk)
        safe_extract(pulled, tmp_path / "got")
        assert snapshot(tmp_path / "got") == snapshot(outgoing)


async def test_outgoing_headers(pfioh: RunningPfioh, tmp_path: Path) -> None:
    zp = write_zip(tmp_path / "in.zip", [entry("x", b"1")])
    async with PfiohClient(pfioh.base_url) as client:
        await push_file(client, "j1", zp)
    async with aiohttp.ClientSession() as http:
        async with http.get(pfioh.base_url + "jobs/j1/outgoing/") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/zip"
            assert resp.headers["Content-Disposition"] == 'attachment; filename="j1.zip"'
            body = await resp.read()
    (tmp_path / "out.zip").write_bytes(body)
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        assert zf.namelist() == [".chris-manifest.jsonl"]  # an empty output, verifiable


async def test_empty_archive_gives_empty_incoming(pfioh: RunningPfioh, tmp_path: Path) -> None:
    zp = write_zip(tmp_path / "empty.zip", [])
    async with PfiohClient(pfioh.base_url) as client:
        report = await push_file(client, "j-empty", zp)
    assert (report.nfiles, report.nbytes) == (0, 0)  # type: ignore[attr-defined]
    assert (pfioh.key_dir("j-empty") / "incoming").is_dir()


HOSTILE = {
    "zip-slip": [entry("fine.txt", b"ok"), entry("../x", b"evil")],
    "nested-slip": [entry("fine.txt", b"ok"), entry("a/../../x", b"evil")],
    "absolute": [entry("fine.txt", b"ok"), entry("/etc/x", b"evil")],
    "drive": [entry("fine.txt", b"ok"), entry("C:\\x", b"evil")],
    "symlink": [entry("fine.txt", b"ok"), entry("ln", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)],
    "chardev": [entry("fine.txt", b"ok"), entry("null", b"", mode=stat.S_IFCHR | 0o666)],
    "fifo": [entry("fine.txt", b"ok"), entry("pipe", b"", mode=stat.S_IFIFO | 0o666)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_unsafe_archive_refused_and_nothing_written(
    pfioh: RunningPfioh, tmp_path: Path, case: str
) -> None:
    zp = write_zip(tmp_path / "bad.zip", HOSTILE[case])
    offending = HOSTILE[case][-1][0].filename
    async with PfiohClient(pfioh.base_url) as client:
        with pytest.raises(UnsafeArchive) as err:
            await push_file(client, "job-1", zp)
        assert repr(offending) in str(err.value)
        assert pfioh.leftovers("job-1") == []
        with pytest.raises(JobNotFound):
            await client.job_status("job-1")
    assert not (tmp_path.parent / "x").exists()


def _crc_broken(path: Path) -> Path:
    payload = b"B" * 5000
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("good.txt", b"good")
        zf.writestr("broken.txt", payload)
    raw = bytearray(path.read_bytes())
    raw[raw.index(payload) + 10] ^= 0x55
    path.write_bytes(bytes(raw))
    return path


def _truncated(path: Path) -> Path:
    write_zip(path, [entry("a.txt", os.urandom(5000))])
    path.write_bytes(path.read_bytes()[:-30])
    return path


def _not_a_zip(path: Path) -> Path:
    path.write_bytes(b"%PDF-1.4 definitely not a zip\n" * 100)
    return path


def _empty_body(path: Path) -> Path:
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("make", [_crc_broken, _truncated, _not_a_zip, _empty_body])
async def test_corrupt_archive_refused_and_nothing_written(
    pfioh: RunningPfioh, tmp_path: Path, make: object
) -> None:
    zp = make(tmp_path / "bad.zip")  # type: ignore[operator]
    async with PfiohClient(pfioh.base_url) as client:
        with pytest.raises(CorruptArchive):
            await push_file(client, "job-2", zp)
    assert pfioh.leftovers("job-2") == []


async def test_too_large_upload_refused(start_pfioh: StartPfioh, tmp_path: Path) -> None:
    pfioh = await start_pfioh(max_upload_bytes=50_000)
    zp = tmp_path / "big.zip"
    with zipfile.ZipFile(zp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("noise.bin", os.urandom(200_000))
    async with PfiohClient(pfioh.base_url) as client:
        with pytest.raises(PayloadTooLarge):
            await push_file(client, "job-3", zp)
    assert pfioh.leftovers("job-3") == []
    # With a Content-Length the server refuses before reading the body.
    async with aiohttp.ClientSession() as http:
        async with http.post(
            pfioh.base_url + "jobs/job-3/incoming/",
            data=zp.read_bytes(),
            headers={"Content-Type": "application/zip"},
        ) as resp:
            assert resp.status == 413
            assert (await resp.json())["code"] == "payload_too_large"
    assert pfioh.leftovers("job-3") == []


async def test_too_large_unpacked_refused(start_pfioh: StartPfioh, tmp_path: Path) -> None:
    pfioh = await start_pfioh(max_unpacked_bytes=100_000)
    zp = write_zip(tmp_path / "bomb.zip", [entry("zeros", b"\0" * 1_000_000)])
    assert zp.stat().st_size < 100_000
    async with PfiohClient(pfioh.base_url) as client:
        with pytest.raises(UnsafeArchive, match="more than the allowed"):
            await push_file(client, "job-4", zp)
    assert pfioh.leftovers("job-4") == []


async def test_second_push_conflicts_and_keeps_first(pfioh: RunningPfioh, tmp_path: Path) -> None:
    first = write_zip(tmp_path / "1.zip", [entry("data.txt", b"first")])
    second = write_zip(tmp_path / "2.zip", [entry("data.txt", b"second"), entry("more", b"x")])
    async with PfiohClient(pfioh.base_url) as client:
        await push_file(client, "job-5", first)
        with pytest.raises(Conflict):
            await push_file(client, "job-5", second)
    incoming = pfioh.key_dir("job-5") / "incoming"
    assert snapshot(incoming) == {"data.txt": b"first"}
    assert sorted(p.name for p in pfioh.key_dir("job-5").iterdir()) == ["incoming", "outgoing"]


async def test_delete_is_idempotent(pfioh: RunningPfioh, tmp_path: Path) -> None:
    zp = write_zip(tmp_path / "in.zip", [entry("d/f.txt", b"1")])
    async with PfiohClient(pfioh.base_url) as client:
        await push_file(client, "job-6", zp)
        assert pfioh.key_dir("job-6").is_dir()
        await client.delete("job-6")
        assert not pfioh.key_dir("job-6").exists()
        await client.delete("job-6")
        await client.delete("never-existed")
        with pytest.raises(JobNotFound):
            await client.job_status("job-6")
        # A deleted job can receive input again.
        await push_file(client, "job-6", zp)
        assert (await client.job_status("job-6")).incoming


async def test_unknown_job(pfioh: RunningPfioh) -> None:
    async with PfiohClient(pfioh.base_url) as client:
        with pytest.raises(JobNotFound):
            await client.job_status("nope")
        with pytest.raises(JobNotFound):
            async for _ in client.iter_outgoing("nope"):
                pytest.fail("no chunk expected")


@pytest.mark.parametrize("jid", ["..", ".hidden", "a b", "x" * 129, "semi;colon"])
async def test_invalid_key(pfioh: RunningPfioh, tmp_path: Path, jid: str) -> None:
    zp = write_zip(tmp_path / "in.zip", [entry("f", b"1")])
    async with PfiohClient(pfioh.base_url) as client:
        with pytest.raises(InvalidKey):
            await push_file(client, jid, zp)
        with pytest.raises(InvalidKey):
            await client.job_status(jid)
        with pytest.raises(InvalidKey):
            await client.delete(jid)
    assert [p.name for p in pfioh.storebase.iterdir()] == []


@pytest.mark.parametrize("jid", [".hidden", "a%20b", "x" * 129, "semi;colon", "-dash"])
async def test_server_refuses_invalid_key(pfioh: RunningPfioh, tmp_path: Path, jid: str) -> None:
    zp = write_zip(tmp_path / "in.zip", [entry("f", b"1")])
    async with aiohttp.ClientSession() as http:
        for method, path, data in [
            ("POST", "incoming/", zp.read_bytes()),
            ("GET", "outgoing/", None),
            ("GET", "", None),
            ("DELETE", "", None),
        ]:
            url = yarl.URL(f"{pfioh.base_url}jobs/{jid}/{path}", encoded=True)
            async with http.request(
                method, url, data=data, headers={"Content-Type": "application/zip"}
            ) as resp:
                assert resp.status == 400, (method, path)
                assert (await resp.json())["code"] == InvalidKey.code
    assert [p.name for p in pfioh.storebase.iterdir()] == []


async def test_wrong_content_type(pfioh: RunningPfioh) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            pfioh.base_url + "jobs/j/incoming/",
            data=b'{"a": 1}',
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 415
            assert (await resp.json())["code"] == UnsupportedMediaType.code
    assert not pfioh.key_dir("j").exists()


async def test_token_required(start_pfioh: StartPfioh, tmp_path: Path) -> None:
    pfioh = await start_pfioh(api_token="s3cret")
    zp = write_zip(tmp_path / "in.zip", [entry("f", b"1")])
    for token in (None, "wrong", "s3cret-and-more"):
        async with PfiohClient(pfioh.base_url, token=token) as client:
            with pytest.raises(Unauthorized):
                await client.server_info()
            with pytest.raises(Unauthorized):
                await push_file(client, "job-7", zp)
            with pytest.raises(Unauthorized):
                await client.delete("job-7")
    assert pfioh.leftovers("job-7") == []
    async with aiohttp.ClientSession() as http:
        async with http.get(pfioh.base_url + "health/") as resp:
            assert resp.status == 200 and await resp.json() == {"health": "OK"}
        async with http.get(pfioh.base_url, headers={"Authorization": "Basic s3cret"}) as resp:
            assert resp.status == 401
    async with PfiohClient(pfioh.base_url, token="s3cret") as client:
        info = await client.server_info()
        assert info.storebase == str(pfioh.storebase)
        await push_file(client, "job-7", zp)


async def test_unreachable_server() -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1/"
    async with PfiohClient(url, timeout=5) as client:
        with pytest.raises(PfiohUnavailable):
            await client.server_info()
        with pytest.raises(PfiohUnavailable):
            async for _ in client.iter_outgoing("j"):
                pass


async def test_unknown_route_is_json(pfioh: RunningPfioh) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(pfioh.base_url + "nothing/here") as resp:
            assert resp.status == 404
            assert (await resp.json())["code"] == "http_404"


async def test_client_uses_given_session_and_leaves_it_open(pfioh: RunningPfioh) -> None:
    async with aiohttp.ClientSession() as http:
        async with PfiohClient(pfioh.base_url, session=http) as client:
            assert (await client.server_info()).server_version
        assert not http.closed


async def test_streaming_memory_stays_bounded(pfioh: RunningPfioh, tmp_path: Path) -> None:
    """A 64 MiB transfer each way must not be held in memory (client and server here).

    What is in flight is bounded: zip and unzip chunks, the receiver's
    prefetch queue and aiohttp's buffers, about 16 MiB in all.
    """
    size = 64 << 20
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big.bin", "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    async with PfiohClient(pfioh.base_url) as client:
        tracemalloc.start()
        try:
            await client.push_incoming("mem", aiter_sync(zip_directory(src)))
            (pfioh.key_dir("mem") / "incoming" / "big.bin").rename(
                pfioh.key_dir("mem") / "outgoing" / "big.bin"
            )
            total = 0
            async for chunk in client.iter_outgoing("mem"):
                total += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert total > size
    assert peak < 24 << 20, f"peak traced memory {peak} bytes"


async def test_concurrent_pushes_one_wins(pfioh: RunningPfioh, tmp_path: Path) -> None:
    zips = [write_zip(tmp_path / f"{i}.zip", [entry("who", str(i).encode())]) for i in range(4)]
    async with PfiohClient(pfioh.base_url) as client:
        results = await asyncio.gather(
            *(push_file(client, "race", zp) for zp in zips), return_exceptions=True
        )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, Conflict) for r in results if r not in winners)
    winner = results.index(winners[0])
    assert snapshot(pfioh.key_dir("race") / "incoming") == {"who": str(winner).encode()}
    assert sorted(p.name for p in pfioh.key_dir("race").iterdir()) == ["incoming", "outgoing"]


async def wait_until(condition: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Wait for ``condition`` to hold, checking every 20 ms, at most ``limit_s`` seconds."""
    async with asyncio.timeout(limit_s):
        while not condition():
            await asyncio.sleep(0.02)


async def test_interrupted_upload_leaves_nothing(pfioh: RunningPfioh, tmp_path: Path) -> None:
    zp = write_zip(tmp_path / "in.zip", [entry("noise", os.urandom(3 << 20))])
    sent = asyncio.Event()

    async def breaks_midway() -> AsyncIterator[bytes]:
        n = 0
        async for chunk in file_chunks(zp):
            yield chunk
            n += len(chunk)
            if n > 1 << 20:
                sent.set()
                raise RuntimeError("client gives up")

    async with aiohttp.ClientSession() as http:
        with pytest.raises((RuntimeError, aiohttp.ClientError)):
            async with http.post(
                pfioh.base_url + "jobs/cut/incoming/",
                data=breaks_midway(),
                headers={"Content-Type": "application/zip"},
            ):
                pass
    assert sent.is_set()
    await wait_until(lambda: pfioh.leftovers("cut") == [])
    assert not pfioh.key_dir("cut").exists()
    # The sender's retry then succeeds as if nothing had happened.
    async with PfiohClient(pfioh.base_url) as client:
        report = await push_file(client, "cut", zp)
    assert report.nfiles == 1  # type: ignore[attr-defined]
    assert snapshot(pfioh.key_dir("cut") / "incoming") == {
        "noise": zipfile.ZipFile(zp).read("noise")
    }


async def test_start_removes_crash_leftovers(start_pfioh: StartPfioh, tmp_path: Path) -> None:
    store = tmp_path / "store"
    half = store / "key-crashed" / ".incoming-0123abcd"
    build_tree(half, {"partial.bin": b"half"})
    (store / ".spool").mkdir()
    (store / ".spool" / "upload-xyz.zip").write_bytes(b"PK")
    build_tree(store / "key-kept" / "incoming", {"f": b"kept"})
    pfioh = await start_pfioh()
    assert pfioh.leftovers("crashed") == []  # the key dir was left empty, so it went too
    assert not (store / ".spool").exists()  # what older versions spooled uploads to
    assert snapshot(store / "key-kept") == {"incoming": None, "incoming/f": b"kept"}


class _FailingStore(JobStore):
    """A store whose output stream breaks after the first chunk."""

    async def outgoing_zip(self, jid: JobKey) -> AsyncGenerator[bytes, None]:
        async def chunks() -> AsyncGenerator[bytes, None]:
            yield b"PK\x03\x04" + b"\0" * 1000
            raise OSError("disk went away")

        return chunks()


async def test_broken_output_stream_is_not_a_complete_body(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    settings = PfiohSettings(storebase=tmp_path / "store")
    app = create_app(settings)
    app[STORE_KEY] = _FailingStore(tmp_path / "store", max_upload_bytes=1)
    server = await aiohttp_server(app)
    async with PfiohClient(str(server.make_url("/api/v1/"))) as client:
        got = b""
        with pytest.raises(PfiohUnavailable):
            async for chunk in client.iter_outgoing("j"):
                got += chunk
    assert got.startswith(b"PK")


async def test_manifest_mismatch_is_refused_and_nothing_kept(
    pfioh: RunningPfioh, tmp_path: Path
) -> None:
    src = make_source(tmp_path / "src")
    # The data is intact; one hash listed in the manifest is not.
    manifest = bytearray()
    with zipfile.ZipFile(io.BytesIO(bytes(b"".join(zip_directory(src))))) as zf:
        manifest += zf.read(MANIFEST_NAME)
        members = [(i, zf.read(i)) for i in zf.infolist() if i.filename != MANIFEST_NAME]
    manifest[manifest.index(b'"sha256": "') + 11] ^= 1
    zp = tmp_path / "lying.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        for info, payload in members:
            zf.writestr(info, payload)
        zf.writestr(MANIFEST_NAME, bytes(manifest))
    async with PfiohClient(pfioh.base_url) as client:
        with pytest.raises(IntegrityError, match="SHA-256"):
            await push_file(client, "lied", zp)
    assert pfioh.leftovers("lied") == []


async def test_verified_upload_is_reported(pfioh: RunningPfioh, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    async with PfiohClient(pfioh.base_url) as client:
        report = await client.push_incoming("v", aiter_sync(zip_directory(src)))
        assert report.verified
        plain = write_zip(tmp_path / "plain.zip", [entry("a", b"1")])
        assert not (await push_file(client, "p", plain)).verified  # type: ignore[attr-defined]


async def test_manifest_can_be_required(start_pfioh: StartPfioh, tmp_path: Path) -> None:
    pfioh = await start_pfioh(require_manifest=True)
    plain = write_zip(tmp_path / "plain.zip", [entry("a", b"1")])
    async with PfiohClient(pfioh.base_url) as client:
        with pytest.raises(IntegrityError, match="no SHA-256 manifest"):
            await push_file(client, "p", plain)
    assert pfioh.leftovers("p") == []


async def test_full_disk_is_a_507_before_reading(start_pfioh: StartPfioh, tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    pfioh = await start_pfioh(reserve_bytes=st.f_bavail * st.f_frsize + (1 << 40))
    zp = write_zip(tmp_path / "in.zip", [entry("a", b"1")])
    async with PfiohClient(pfioh.base_url) as client:
        with pytest.raises(InsufficientStorage, match="free"):
            await push_file(client, "full", zp)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            pfioh.base_url + "jobs/full/incoming/",
            data=zp.read_bytes(),
            headers={"Content-Type": "application/zip"},
        ) as resp:
            assert resp.status == 507
            assert (await resp.json())["code"] == "insufficient_storage"
    assert pfioh.leftovers("full") == []
