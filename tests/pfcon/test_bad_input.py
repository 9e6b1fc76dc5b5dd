"""Bad submissions get a clear 4xx and leave nothing behind at pfioh or pman."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from pfcon.errors import InvalidJob
from pfcon.schema import JobStatus
from pfioh.manifest import MANIFEST_NAME
from pman.client import PmanClient
from pman.errors import JobNotFound as PmanJobNotFound
from tests.pfcon.conftest import (
    Part,
    Site,
    copy_job,
    expected_outputs,
    job_parts,
    once,
    post_form,
    wait_until_terminal,
    zip_bytes_of,
    zip_chunks,
)


async def _token(site: Site) -> str:
    async with site.client() as client:
        return await client.login()


def _good_zip() -> bytes:
    return zip_bytes_of(lambda zf: zf.writestr("a.txt", "alpha"))


def _without(parts: list[Part], name: str) -> list[Part]:
    return [p for p in parts if p[0] != name]


def _replace(parts: list[Part], name: str, *values: str) -> list[Part]:
    return [*_without(parts, name), *((name, v) for v in values)]


async def _assert_nothing_left(site: Site, jid: str) -> None:
    assert not (site.storebase / f"key-{jid}").exists()
    async with PmanClient(site.pman_url) as pman:
        with pytest.raises(PmanJobNotFound):
            await pman.get(jid)


def _no_spool_files(tmp_path: Path) -> bool:
    spool = tmp_path / "spool"  # the site fixture's spool_dir, made by pfcon at startup
    assert spool.is_dir()
    return not list(spool.iterdir())


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda p: _without(p, "jid"), "jid"),
        (lambda p: _replace(p, "cpu_limit", "lots"), "cpu_limit"),
        (lambda p: _replace(p, "memory_limit", "1.5"), "memory_limit"),
        (lambda p: _replace(p, "gpu_limit", "-1"), "gpu_limit"),
        (lambda p: _without(p, "number_of_workers"), "number_of_workers"),
        (lambda p: _without(p, "entrypoint"), "entrypoint"),
        (lambda p: _replace(p, "entrypoint", ""), "entrypoint"),
        (lambda p: _replace(p, "type", "xs"), "type"),
        (lambda p: _without(p, "image"), "image"),
        (lambda p: _replace(p, "env", "NOEQUALS"), "env"),
        (lambda p: _replace(p, "jid", "chris-jid-7", "chris-jid-8"), "jid"),
        (lambda p: _replace(p, "jid", "../escape"), "jid"),
        (lambda p: [*p, ("cpu_limt", "1000")], "cpu_limt"),
    ],
)
async def test_bad_fields_are_a_400_naming_the_field(
    site: Site,
    tmp_path: Path,
    jids: Callable[[], str],
    edit: Callable[[list[Part]], list[Part]],
    field: str,
) -> None:
    jid = jids()
    parts = edit(job_parts(copy_job(jid)))
    status, body = await post_form(site, await _token(site), [*parts, ("data_file", _good_zip())])
    assert status == 400, body
    assert str(body["message"]).startswith(field), body
    assert body["code"] == "invalid"
    await _assert_nothing_left(site, jid)
    assert _no_spool_files(tmp_path)


async def test_a_bad_field_after_the_data_removes_the_pushed_data(
    site: Site, jids: Callable[[], str]
) -> None:
    jid = jids()
    parts = job_parts(copy_job(jid))
    first = [p for p in parts if p[0] == "jid"]
    rest = _replace([p for p in parts if p[0] != "jid"], "cpu_limit", "lots")
    status, body = await post_form(
        site, await _token(site), [*first, ("data_file", _good_zip()), *rest]
    )
    assert status == 400, body
    assert str(body["message"]).startswith("cpu_limit")
    await _assert_nothing_left(site, jid)


async def test_missing_data_file_is_a_400(site: Site, jids: Callable[[], str]) -> None:
    jid = jids()
    status, body = await post_form(site, await _token(site), job_parts(copy_job(jid)))
    assert status == 400
    assert str(body["message"]).startswith("data_file")
    await _assert_nothing_left(site, jid)


async def test_two_data_files_are_a_400(site: Site, jids: Callable[[], str]) -> None:
    jid = jids()
    parts = [*job_parts(copy_job(jid)), ("data_file", _good_zip()), ("data_file", _good_zip())]
    status, body = await post_form(site, await _token(site), parts)
    assert status == 400
    assert str(body["message"]).startswith("data_file")
    await _assert_nothing_left(site, jid)


async def test_zip_slip_is_refused_by_pfioh(site: Site, jids: Callable[[], str]) -> None:
    jid = jids()
    evil = zip_bytes_of(lambda zf: zf.writestr("../../escaped.txt", "gotcha"))
    async with site.client() as client:
        with pytest.raises(InvalidJob) as caught:
            await client.submit(copy_job(jid), once(evil))
    assert caught.value.status == 422
    assert "escaped.txt" in caught.value.message
    await _assert_nothing_left(site, jid)
    assert not list(site.storebase.parent.rglob("escaped.txt"))


async def test_a_corrupt_archive_is_a_400(site: Site, jids: Callable[[], str]) -> None:
    jid = jids()
    async with site.client() as client:
        with pytest.raises(InvalidJob) as caught:
            await client.submit(copy_job(jid), once(b"PK\x03\x04 this is not a zip"))
    assert caught.value.status == 400
    await _assert_nothing_left(site, jid)


@pytest.mark.parametrize(("field", "value"), [("gpu_limit", 1), ("number_of_workers", 2)])
async def test_pman_refusal_comes_back_and_removes_the_data(
    site: Site, jids: Callable[[], str], field: str, value: int
) -> None:
    jid = jids()
    async with site.client() as client:
        with pytest.raises(InvalidJob) as caught:
            await client.submit(copy_job(jid, **{field: value}), once(_good_zip()))
    assert caught.value.status == 422
    assert field.split("_")[0] in caught.value.message
    await _assert_nothing_left(site, jid)


async def test_data_file_before_jid_is_spooled_and_works(
    site: Site, input_tree: Path, tmp_path: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    zipped = b"".join([c async for c in zip_chunks(input_tree)])
    token = await _token(site)
    status, body = await post_form(site, token, [("data_file", zipped), *job_parts(copy_job(jid))])
    assert status == 201, body
    assert body["data"]["nfiles"] == 3  # type: ignore[index]
    assert _no_spool_files(tmp_path)
    async with site.client() as client:
        info = await wait_until_terminal(client, jid)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info.logs
        out = bytearray()
        async for chunk in client.iter_output(jid):
            out += chunk
    with zipfile.ZipFile(io.BytesIO(bytes(out))) as zf:
        got = {
            i.filename: zf.read(i)
            for i in zf.infolist()
            if not i.is_dir() and i.filename != MANIFEST_NAME
        }
    assert got == expected_outputs(input_tree, "out-")


async def test_a_body_that_is_not_a_form_is_a_415(site: Site) -> None:
    token = await _token(site)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            site.pfcon_url + "jobs/",
            json={"jid": "chris-jid-1"},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        assert resp.status == 415
        assert "multipart" in (await resp.json())["message"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"no boundary declared"),
        ("multipart/form-data; boundary=xyz", b"no boundary in the body"),
        (
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="jid"\r\n\r\nchris-jid-1',
        ),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nX-No-Name: 1\r\n\r\nx\r\n--xyz--\r\n"),
    ],
)
async def test_malformed_multipart_is_a_400(site: Site, content_type: str, body: bytes) -> None:
    token = await _token(site)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            site.pfcon_url + "jobs/",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        ) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["code"] == "invalid"


async def test_unknown_routes_are_json_404s(site: Site) -> None:
    token = await _token(site)
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            site.pfcon_url + "nothing/here/", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"
