"""Instance lifecycle against an in-process fake compute site: cancellation
cascades and stops remote jobs, deleting a feed deletes its jobs, files and
rows, ``start_date`` is when the job ran (not when it was queued), failures
carry their ChRIS error code, and ended jobs are deleted at a site that was
down once it is back."""

from __future__ import annotations

import asyncio
import contextlib
import io
import zipfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlmodel import col, func, select

from cube.api.common import SCHEDULER, SESSIONS, STORAGE
from cube.app import create_app
from cube.db.models import ComputeResource, PluginInstance, StatusChange, StoredFile, User
from cube.schema import InstanceStatus as S
from cube.services import instances as isvc
from cube.settings import CubeSettings
from pfcon.client import PfconClient
from pfcon.errors import PfconError, PfconUnavailable
from pfcon.schema import JobData, JobDescriptor, JobInfo, JobStatus, JobSubmitted
from tests.cube.conftest import ADMIN, DS_DESCRIPTOR, FS_DESCRIPTOR, JSON_ACCEPT, token_for
from tests.cube.test_api import upload
from tests.cube.test_placement import FakeSite, add_resource, instance, register, until


def output_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("out.txt", b"result")
        zf.writestr("sub/more.txt", b"more")
    return buf.getvalue()


class Site(FakeSite):
    """A fake site whose jobs start queued (``notStarted``) and produce two files;
    it can be switched off (every call refused) and made to refuse submissions."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.down = False
        self.refuse_submit = False
        self.deleted: list[str] = []

    def _check(self) -> None:
        if self.down:
            raise PfconUnavailable(f"{self.name} is down")

    async def submit(self, job: JobDescriptor, data: AsyncIterable[bytes]) -> JobSubmitted:
        self._check()
        if self.refuse_submit:
            raise PfconError("image not found at the site")
        async for _ in data:
            pass
        info = JobInfo(jid=job.jid, image=job.image, cmd="", status=JobStatus.NOT_STARTED)
        async with self._cond:
            self.jobs[job.jid] = info
            self._cond.notify_all()
        return JobSubmitted(
            data=JobData(jid=job.jid, nfiles=0, timestamp="", path=""), compute=info
        )

    async def status(
        self, jid: str, *, wait: float | None = None, known: JobStatus | None = None
    ) -> JobInfo:
        self._check()
        return await super().status(jid, wait=wait, known=known)

    async def iter_output(self, jid: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        self._check()
        yield output_zip()

    async def delete(self, jid: str) -> None:
        self._check()
        self.deleted.append(jid)
        await super().delete(jid)

    async def set_status(self, jid: str, status: JobStatus) -> None:
        async with self._cond:
            self.jobs[jid] = self.jobs[jid].model_copy(update={"status": status, "exit_code": 0})
            self._cond.notify_all()

    async def vanish(self, jid: str) -> None:
        async with self._cond:
            self.jobs.pop(jid)
            self._cond.notify_all()


Fabric = tuple[TestClient, dict[str, str], Site, dict[str, int]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def fabric(
    aiohttp_client: Callable[..., Any], tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Fabric]:
    """CUBE with its scheduler on one fake site, on each database; plugin ids by type."""
    url = "" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    settings = CubeSettings(
        home=tmp_path / "cube",
        database_url=url,
        run_scheduler=False,
        sweep_seconds=0.2,
        retry_min_seconds=0.1,
        retry_max_seconds=0.3,
    )
    api: TestClient = await aiohttp_client(create_app(settings), headers=JSON_ACCEPT)
    admin = await token_for(api, *ADMIN)
    site = Site("site")

    def site_of(resource: ComputeResource) -> PfconClient:
        return site

    assert (await add_resource(api, admin, "site")).status == 201
    plugins = {
        "fs": await register(api, admin, FS_DESCRIPTOR, "site"),
        "ds": await register(api, admin, DS_DESCRIPTOR, "site"),
    }
    assert (await upload(api, admin, "home/chris/uploads/in/a.txt", b"a")).status == 201
    scheduler = api.app[SCHEDULER]
    scheduler._client_factory = site_of
    task = asyncio.create_task(scheduler.run())
    yield api, admin, site, plugins
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def create(api: TestClient, admin: dict[str, str], plugin: int, **body: Any) -> Any:
    resp = await api.post(f"/api/v1/plugins/{plugin}/instances/", json=body, headers=admin)
    assert resp.status == 201, await resp.text()
    return await resp.json()


def jid(inst_id: int) -> str:
    return f"chris-jid-{inst_id}"


def status_is(status: str) -> Callable[[Any], bool]:
    return lambda body: body["status"] == status


async def pending_cleanups(api: TestClient) -> int:
    async with api.app[SESSIONS]() as s:
        rows = await s.exec(
            select(func.count())
            .select_from(PluginInstance)
            .where(col(PluginInstance.remote_cleanup_pending).is_(True))
        )
        return int(rows.one())


async def test_start_date_is_when_the_job_runs_and_each_status_is_timestamped(
    fabric: Fabric,
) -> None:
    api, admin, site, plugins = fabric
    root = await create(api, admin, plugins["fs"], dir="home/chris/uploads/in")
    queued = await until(api, admin, root["id"], status_is("started"))
    assert queued["start_date"] is None  # submitted, but the site still queues it
    await site.set_status(jid(root["id"]), JobStatus.STARTED)
    running = await until(api, admin, root["id"], lambda b: b["start_date"] is not None)
    history = {h["status"]: h["timestamp"] for h in running["status_history"]}
    assert running["start_date"] > history["started"]
    await site.set_status(jid(root["id"]), JobStatus.FINISHED_SUCCESSFULLY)
    done = await until(api, admin, root["id"], status_is("finishedSuccessfully"))
    assert done["start_date"] == running["start_date"]
    assert done["end_date"] >= done["start_date"]
    assert [h["status"] for h in done["status_history"]] == [
        "created",
        "scheduled",
        "started",
        "registeringFiles",
        "finishedSuccessfully",
    ]
    stamps = [h["timestamp"] for h in done["status_history"]]
    assert stamps == sorted(stamps)
    assert done["error_code"] == "" and done["size"] == len(b"result") + len(b"more")
    await until(api, admin, root["id"], lambda b: jid(root["id"]) in site.deleted)


async def test_cancel_cascades_to_descendants_and_stops_the_remote_job(fabric: Fabric) -> None:
    api, admin, site, plugins = fabric
    root = await create(api, admin, plugins["fs"], dir="home/chris/uploads/in")
    child = await create(api, admin, plugins["ds"], previous_id=root["id"])
    grandchild = await create(api, admin, plugins["ds"], previous_id=child["id"])
    sibling = await create(api, admin, plugins["ds"], previous_id=root["id"])
    await until(api, admin, root["id"], status_is("started"))
    await site.set_status(jid(root["id"]), JobStatus.STARTED)

    resp = await api.put(
        f"/api/v1/plugins/instances/{root['id']}/", json={"status": "cancelled"}, headers=admin
    )
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    for inst in (child, grandchild, sibling):
        body = await instance(api, admin, inst["id"])
        assert body["status"] == "cancelled" and body["start_date"] is None
        assert body["status_history"][-1]["status"] == "cancelled"
    # the running job is deleted at the site, and nothing else was submitted
    await until(api, admin, root["id"], lambda b: site.jobs == {})
    assert site.deleted == [jid(root["id"])]
    await until(api, admin, root["id"], lambda b: b["end_date"] is not None)

    async def cleaned() -> None:
        while await pending_cleanups(api):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(cleaned(), 10)
    # a finished instance cannot be cancelled
    resp = await api.put(
        f"/api/v1/plugins/instances/{root['id']}/", json={"status": "cancelled"}, headers=admin
    )
    assert resp.status == 200  # unchanged status: nothing to do
    resp = await api.put(
        f"/api/v1/plugins/instances/{root['id']}/", json={"status": "started"}, headers=admin
    )
    assert resp.status == 400 and "status" in await resp.json()


async def test_deleting_a_feed_deletes_remote_jobs_files_and_rows(fabric: Fabric) -> None:
    api, admin, site, plugins = fabric
    root = await create(api, admin, plugins["fs"], dir="home/chris/uploads/in")
    await until(api, admin, root["id"], status_is("started"))
    await site.set_status(jid(root["id"]), JobStatus.FINISHED_SUCCESSFULLY)
    await until(api, admin, root["id"], status_is("finishedSuccessfully"))
    child = await create(api, admin, plugins["ds"], previous_id=root["id"])
    await until(api, admin, child["id"], status_is("started"))
    assert jid(child["id"]) in site.jobs
    storage = api.app[STORAGE]
    folder = storage.local_path(f"home/chris/feeds/feed_{root['feed_id']}")
    assert (folder / root["output_path"].split("/", 4)[-1] / "out.txt").is_file()

    other = await create(api, admin, plugins["fs"], dir="home/chris/uploads/in")  # another feed
    user = await token_for_new_user(api)
    resp = await api.delete(f"/api/v1/{root['feed_id']}/", headers=user)
    assert resp.status == 404  # not theirs, not public: invisible

    resp = await api.delete(f"/api/v1/{root['feed_id']}/", headers=admin)
    assert resp.status == 204, await resp.text()
    assert jid(child["id"]) not in site.jobs and jid(child["id"]) in site.deleted
    assert not folder.exists()
    assert (await api.get(f"/api/v1/{root['feed_id']}/", headers=admin)).status == 404
    for inst in (root, child):
        resp = await api.get(f"/api/v1/plugins/instances/{inst['id']}/", headers=admin)
        assert resp.status == 404
    async with api.app[SESSIONS]() as s:
        for model, column in (
            (StoredFile, StoredFile.plugin_inst_id),
            (StatusChange, StatusChange.plugin_inst_id),
        ):
            left = await s.exec(
                select(func.count())
                .select_from(model)
                .where(col(column).in_([root["id"], child["id"]]))
            )
            assert left.one() == 0, model
    # the rest is untouched: the uploaded input and the other feed
    assert storage.local_path("home/chris/uploads/in/a.txt").is_file()
    assert (await api.get(f"/api/v1/{other['feed_id']}/", headers=admin)).status == 200
    assert (await api.delete(f"/api/v1/{root['feed_id']}/", headers=admin)).status == 404


async def token_for_new_user(api: TestClient) -> dict[str, str]:
    resp = await api.post(
        "/api/v1/users/", json={"username": "evelyn", "password": "eve-pass-1234", "email": "e@x"}
    )
    assert resp.status == 201, await resp.text()
    return await token_for(api, "evelyn", "eve-pass-1234")


async def test_failures_carry_their_error_codes(fabric: Fabric) -> None:
    api, admin, site, plugins = fabric
    vanished = await create(api, admin, plugins["fs"], dir="home/chris/uploads/in")
    await until(api, admin, vanished["id"], status_is("started"))
    await site.vanish(jid(vanished["id"]))
    body = await until(api, admin, vanished["id"], status_is("cancelled"))
    assert body["error_code"] == "CODE10" and "vanished" in body["error_message"]

    site.refuse_submit = True
    refused = await create(api, admin, plugins["fs"], dir="home/chris/uploads/in")
    body = await until(api, admin, refused["id"], status_is("cancelled"))
    assert body["error_code"] == "CODE01" and "image not found" in body["error_message"]


async def test_jobs_of_instances_ended_while_the_site_was_down_are_deleted_later(
    fabric: Fabric,
) -> None:
    api, admin, site, plugins = fabric
    root = await create(api, admin, plugins["fs"], dir="home/chris/uploads/in")
    await until(api, admin, root["id"], status_is("started"))
    site.down = True
    resp = await api.put(
        f"/api/v1/plugins/instances/{root['id']}/", json={"status": "cancelled"}, headers=admin
    )
    assert resp.status == 200
    await asyncio.sleep(0.5)  # cleanup attempts fail and back off
    assert jid(root["id"]) in site.jobs and await pending_cleanups(api) == 1
    site.down = False

    async def cleaned() -> None:
        while await pending_cleanups(api):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(cleaned(), 10)
    assert jid(root["id"]) not in site.jobs
    body = await instance(api, admin, root["id"])
    assert body["status"] == "cancelled" and body["error_code"] == ""  # outcome unchanged


async def test_a_child_created_while_its_parent_ends_is_not_left_waiting(fabric: Fabric) -> None:
    """The parent's end is in flight (its transaction not committed) while a
    child is created: the child must end up scheduled, not waiting forever."""
    api, admin, _site, plugins = fabric
    root = await create(api, admin, plugins["fs"], dir="home/chris/uploads/in")
    await until(api, admin, root["id"], status_is("started"))
    sessions = api.app[SESSIONS]
    async with sessions() as ending, sessions() as creating:
        chris = (await ending.exec(select(User).where(User.username == ADMIN[0]))).one()
        await isvc.finish(ending, root["id"], [S.STARTED], S.FINISHED_SUCCESSFULLY)
        child_task = asyncio.create_task(
            isvc.create_instance(creating, chris, plugins["ds"], {"previous_id": root["id"]})
        )
        await asyncio.sleep(0.3)  # the child is being created against the old parent status
        await ending.commit()
        child = await asyncio.wait_for(child_task, 20)
        await creating.commit()
    assert child.status == "scheduled", child.status


async def test_deleting_an_ended_instance_deletes_its_job_left_at_the_site(
    fabric: Fabric, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled instance whose job the site still holds (the site was down)
    is deleted by the user: the scheduler can no longer clean it up once the
    row is gone, so the deletion tells the site itself."""
    api, admin, site, plugins = fabric
    root = await create(api, admin, plugins["fs"], dir="home/chris/uploads/in")
    await until(api, admin, root["id"], status_is("started"))
    await site.set_status(jid(root["id"]), JobStatus.FINISHED_SUCCESSFULLY)
    await until(api, admin, root["id"], status_is("finishedSuccessfully"))
    child = await create(api, admin, plugins["ds"], previous_id=root["id"])
    await until(api, admin, child["id"], status_is("started"))
    scheduler = api.app[SCHEDULER]

    async def no_claims(limit: int) -> list[int]:
        return []

    # no worker retries the cleanup: only the deletion can delete the job
    monkeypatch.setattr(scheduler, "claim", no_claims)
    site.down = True
    resp = await api.put(
        f"/api/v1/plugins/instances/{child['id']}/", json={"status": "cancelled"}, headers=admin
    )
    assert resp.status == 200
    while child["id"] in scheduler._tasks:
        await asyncio.sleep(0.05)
    assert jid(child["id"]) in site.jobs and await pending_cleanups(api) == 1
    site.down = False

    resp = await api.delete(f"/api/v1/plugins/instances/{child['id']}/", headers=admin)
    assert resp.status == 204, await resp.text()
    assert jid(child["id"]) in site.deleted and jid(child["id"]) not in site.jobs
    assert (await api.get(f"/api/v1/plugins/instances/{child['id']}/", headers=admin)).status == 404
    assert await pending_cleanups(api) == 0
