"""Jobs through pfcon end to end: submit, long-poll, download, delete."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from pfcon.app import create_app
from pfcon.client import PfconClient
from pfcon.errors import JobConflict, JobNotFound
from pfcon.schema import JobStatus
from pfioh.manifest import MANIFEST_NAME
from pman.client import PmanClient
from tests.pfcon.conftest import (
    PASSWORD,
    USER,
    Site,
    copy_job,
    expected_outputs,
    job_parts,
    pfcon_settings,
    post_form,
    serve,
    wait_until_terminal,
    zip_chunks,
)


async def _download(client: PfconClient, jid: str) -> dict[str, bytes]:
    buf = bytearray()
    async for chunk in client.iter_output(jid):
        buf += chunk
    with zipfile.ZipFile(io.BytesIO(bytes(buf))) as zf:
        return {
            i.filename: zf.read(i)
            for i in zf.infolist()
            if not i.is_dir() and i.filename != MANIFEST_NAME
        }


async def _started(client: PfconClient, jid: str) -> None:
    """Wait (bounded) until the job runs."""
    info = await client.status(jid)
    async with asyncio.timeout(30):
        while info.status is JobStatus.NOT_STARTED:
            info = await client.status(jid, wait=5, known=info.status)
    assert info.status is JobStatus.STARTED, info


async def test_server_info_describes_the_site(site: Site) -> None:
    async with site.client() as client:
        info = await client.server_info()
    async with PmanClient(site.pman_url) as pman:
        pman_info = await pman.server_info()
    assert info.container_env == pman_info.container_env
    assert info.storage_env == "zipfile"
    assert info.pfcon_innetwork is False
    assert info.compute_volume_type == "host"
    assert info.server_version


async def test_ds_job_round_trip(site: Site, input_tree: Path, jids: Callable[[], str]) -> None:
    jid = jids()
    async with site.client() as client:
        submitted = await client.submit(copy_job(jid), zip_chunks(input_tree))
        assert submitted.data.jid == jid
        assert submitted.data.nfiles == 3
        assert (site.storebase / submitted.data.path / "sub" / "b.dcm").is_file()
        assert submitted.compute.jid == jid

        info = await wait_until_terminal(client, jid)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info.logs
        assert "copied" in info.logs

        assert await _download(client, jid) == expected_outputs(input_tree, "out-")

        await client.delete(jid)
        with pytest.raises(JobNotFound):
            await client.status(jid)
        with pytest.raises(JobNotFound):
            await _download(client, jid)
        assert not (site.storebase / f"key-{jid}").exists()
        await client.delete(jid)  # deleting twice is not an error


async def test_output_is_sent_as_a_named_zip_attachment(
    site: Site, input_tree: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    async with site.client() as client:
        await client.submit(copy_job(jid), zip_chunks(input_tree))
        await wait_until_terminal(client, jid)
        token = await client.login()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{site.pfcon_url}jobs/{jid}/file/", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.content_type == "application/zip"
        assert resp.headers["Content-Disposition"] == f'attachment; filename="{jid}.zip"'


async def test_a_resubmitted_job_reports_its_state(
    site: Site, input_tree: Path, jids: Callable[[], str]
) -> None:
    """A CUBE that crashed after submitting retries; pfcon answers 200, not a new job."""
    jid = jids()
    job = copy_job(jid)
    async with site.client() as client:
        first = await client.submit(job, zip_chunks(input_tree))
        await wait_until_terminal(client, jid)
        again = await client.submit(job, zip_chunks(input_tree))
        assert again.compute.jid == jid
        assert again.compute.status is JobStatus.FINISHED_SUCCESSFULLY
        assert again.data.path == first.data.path
        token = await client.login()
        zipped = b"".join([c async for c in zip_chunks(input_tree)])
        status, body = await post_form(site, token, [*job_parts(job), ("data_file", zipped)])
        assert status == 200, body

        with pytest.raises(JobConflict):
            await client.submit(copy_job(jid, image="local/other"), zip_chunks(input_tree))
        # nothing of the running job was harmed by the refused duplicate
        assert await _download(client, jid) == expected_outputs(input_tree, "out-")


async def test_input_without_a_job_is_a_conflict(
    site: Site, input_tree: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    async with site.client() as client:
        await client.submit(copy_job(jid), zip_chunks(input_tree))
        await wait_until_terminal(client, jid)
        async with PmanClient(site.pman_url) as pman:
            await pman.delete(jid)
        with pytest.raises(JobConflict, match="DELETE"):
            await client.submit(copy_job(jid), zip_chunks(input_tree))
        assert (site.storebase / f"key-{jid}" / "incoming").is_dir()


async def test_status_long_polls(
    site: Site, input_tree: Path, tmp_path: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    gate = tmp_path / "go"
    async with site.client() as client:
        await client.submit(copy_job(jid, env=[f"WAIT_FOR={gate}"]), zip_chunks(input_tree))
        await _started(client, jid)

        begun = time.monotonic()
        info = await client.status(jid, wait=0.5, known=JobStatus.STARTED)
        assert info.status is JobStatus.STARTED
        assert time.monotonic() - begun >= 0.4  # pfcon passed the wait on to pman

        gate.touch()
        async with asyncio.timeout(25):
            info = await client.status(jid, wait=30, known=JobStatus.STARTED)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info


async def test_status_wait_is_capped(
    site: Site, input_tree: Path, tmp_path: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    gate = tmp_path / "go"
    settings = pfcon_settings(site.pfioh_url, site.pman_url, max_status_wait_seconds=0.2)
    async with AsyncExitStack() as stack:
        url = await serve(stack, create_app(settings))
        client = await stack.enter_async_context(PfconClient(url, username=USER, password=PASSWORD))
        await client.submit(copy_job(jid, env=[f"WAIT_FOR={gate}"]), zip_chunks(input_tree))
        await _started(client, jid)
        async with asyncio.timeout(10):
            info = await client.status(jid, wait=600, known=JobStatus.STARTED)
        assert info.status is JobStatus.STARTED
        gate.touch()
        await client.delete(jid)


@pytest.mark.parametrize(
    ("query", "field"), [("wait=soon", "wait"), ("wait=-1", "wait"), ("status=done", "status")]
)
async def test_bad_status_query_is_a_400(
    site: Site, input_tree: Path, jids: Callable[[], str], query: str, field: str
) -> None:
    jid = jids()
    async with site.client() as client:
        await client.submit(copy_job(jid), zip_chunks(input_tree))
        token = await client.login()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{site.pfcon_url}jobs/{jid}/?{query}", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["message"].startswith(field)


async def test_deleting_a_running_job_stops_it(
    site: Site, input_tree: Path, tmp_path: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    async with site.client() as client:
        await client.submit(
            copy_job(jid, env=[f"WAIT_FOR={tmp_path / 'never'}"]), zip_chunks(input_tree)
        )
        await _started(client, jid)
        await client.delete(jid)
        with pytest.raises(JobNotFound):
            await client.status(jid)
        async with PmanClient(site.pman_url) as pman:
            assert jid not in [info.jid for info in await pman.list_jobs()]
    assert not (site.storebase / f"key-{jid}").exists()


async def test_unknown_jobs_are_404(site: Site) -> None:
    async with site.client() as client:
        with pytest.raises(JobNotFound):
            await client.status("chris-jid-404")
        with pytest.raises(JobNotFound):
            await _download(client, "chris-jid-404")
        with pytest.raises(JobNotFound):
            await client.status("..")
        token = await client.login()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            site.pfcon_url + "jobs/not%20a%20jid/", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status == 404
        assert (await resp.json())["code"] == "not_found"
