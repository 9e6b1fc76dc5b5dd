"""Placement: which compute resource an instance gets, and job slots.

Unit tests of :func:`cube.services.placement.choose_resource`, API tests of
the capacity fields and of placement at creation, and scheduler tests
against an in-process fake compute site (a :class:`PfconClient` whose jobs
end when the test says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import zipfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cube.api.common import SCHEDULER, SESSIONS
from cube.app import create_app
from cube.db.models import ComputeResource
from cube.errors import BadRequest
from cube.services.placement import Candidate, choose_resource, reserve_slot
from cube.settings import CubeSettings
from pfcon.client import PfconClient
from pfcon.errors import JobConflict, JobNotFound
from pfcon.schema import (
    JobData,
    JobDescriptor,
    JobInfo,
    JobStatus,
    JobSubmitted,
    PfconServerInfo,
)
from tests.cube.conftest import ADMIN, FS_DESCRIPTOR, JSON_ACCEPT, token_for
from tests.cube.test_api import upload

GPU_DESCRIPTOR: dict[str, Any] = dict(
    FS_DESCRIPTOR, name="pl-gputhing", dock_image="test/pl-gputhing:1.0", max_gpu_limit=4
)


# -- choose_resource ---------------------------------------------------------


def res(rid: int, *, gpus: int = 0, limit: int = 0) -> ComputeResource:
    return ComputeResource(
        id=rid,
        name=f"r{rid}",
        compute_url="http://x/",
        compute_auth_url="http://x/auth-token/",
        compute_user="u",
        compute_password="p",
        gpus=gpus,
        max_concurrent_jobs=limit,
    )


def cand(rid: int, load: int = 0, *, gpus: int = 0, limit: int = 0) -> Candidate:
    return Candidate(res(rid, gpus=gpus, limit=limit), load)


def chosen(cands: list[Candidate], gpu_limit: int = 0, wanted: str | None = None) -> int | None:
    return choose_resource(cands, gpu_limit=gpu_limit, wanted=wanted).id


def refused(cands: list[Candidate], gpu_limit: int = 0, wanted: str | None = None) -> list[str]:
    with pytest.raises(BadRequest) as info:
        choose_resource(cands, gpu_limit=gpu_limit, wanted=wanted, plugin_name="pl-x")
    return list(info.value.fields)


def test_gpu_instances_go_only_where_enough_gpus() -> None:
    cands = [cand(1), cand(2, gpus=2), cand(3, gpus=4, limit=1, load=5)]
    assert chosen(cands, gpu_limit=1) == 2
    assert chosen(cands, gpu_limit=3) == 3  # the only one with 3 GPUs, even full
    assert refused(cands, gpu_limit=5) == ["gpu_limit"]
    assert refused([cand(1), cand(2)], gpu_limit=1) == ["gpu_limit"]


def test_named_resource_is_honoured_or_refused() -> None:
    cands = [cand(1, gpus=2, limit=1, load=3), cand(2, gpus=2)]
    assert chosen(cands, wanted="r1") == 1  # full, but named: it waits there
    assert chosen(cands, gpu_limit=2, wanted="r1") == 1
    assert refused([cand(1), cand(2, gpus=2)], gpu_limit=1, wanted="r1") == ["gpu_limit"]
    assert refused(cands, wanted="nosuch") == ["compute_resource_name"]
    assert refused([], wanted="r1") == ["compute_resource_name"]
    assert refused([]) == ["compute_resource_name"]


def test_fuller_resources_are_avoided() -> None:
    # by load ratio: 1/2 on r1, 1/4 on r2
    assert chosen([cand(1, 1, limit=2), cand(2, 1, limit=4)]) == 2
    # a full resource loses to one with room
    assert chosen([cand(1, 1, limit=1), cand(2, 3, limit=4)]) == 2
    # unlimited resources count as empty; among them fewer active instances win
    assert chosen([cand(1, 3), cand(2, 1), cand(3, 1, limit=2)]) == 2


def test_gpu_less_instances_keep_off_gpu_sites_while_a_plain_one_has_room() -> None:
    gpu_idle = cand(1, gpus=2)
    assert chosen([gpu_idle, cand(2, 1, limit=2)]) == 2
    assert chosen([gpu_idle, cand(2, 2, limit=2)]) == 1  # plain site full: use the GPU one
    # all full: the least loaded, still preferring plain sites
    assert chosen([cand(1, 2, gpus=1, limit=1), cand(2, 3, limit=1)]) == 1
    # GPU instances are not affected by the preference
    assert chosen([cand(1, 0, limit=1), cand(2, 0, gpus=1, limit=1)], gpu_limit=1) == 2


def test_all_full_still_places_on_the_least_loaded() -> None:
    cands = [cand(1, 3, limit=1), cand(2, 3, limit=2), cand(3, 4, limit=2)]
    assert chosen(cands) == 2


def test_choice_is_deterministic_lowest_id_breaks_ties() -> None:
    tied = [cand(3, 1, limit=2), cand(1, 1, limit=2), cand(2, 1, limit=2), cand(4, 5, limit=3)]
    assert {chosen(list(p)) for p in itertools.permutations(tied)} == {1}
    # same ratio (1/2): fewer active instances first, then the id
    ratio_tie = [cand(3, 1, limit=2), cand(1, 2, limit=4), cand(2, 1, limit=2)]
    assert {chosen(list(p)) for p in itertools.permutations(ratio_tie)} == {2}


# -- API: capacity fields and placement at creation ----------------------------


async def add_resource(api: TestClient, admin: dict[str, str], name: str, **fields: Any) -> Any:
    body = {
        "name": name,
        "compute_url": f"http://127.0.0.1:9/{name}/api/v1/",
        "compute_user": "u",
        "compute_password": "p",
        **fields,
    }
    return await api.post("/chris-admin/api/v1/computeresources/", json=body, headers=admin)


async def register(api: TestClient, admin: dict[str, str], desc: dict[str, Any], names: str) -> int:
    resp = await api.post(
        "/chris-admin/api/v1/", json={"descriptor": desc, "compute_names": names}, headers=admin
    )
    assert resp.status == 201, await resp.text()
    return int((await resp.json())["id"])


async def run(
    api: TestClient, admin: dict[str, str], plugin_id: int, **fields: Any
) -> tuple[int, Any]:
    resp = await api.post(
        f"/api/v1/plugins/{plugin_id}/instances/",
        json={"dir": "home/chris/uploads/in", **fields},
        headers=admin,
    )
    return resp.status, await resp.json()


async def instance(api: TestClient, admin: dict[str, str], inst_id: int) -> Any:
    return await (await api.get(f"/api/v1/plugins/instances/{inst_id}/", headers=admin)).json()


async def test_capacity_fields_are_validated_and_shown(
    api: TestClient, admin: dict[str, str], registered: dict[str, int]
) -> None:
    before = (await (await api.get("/api/v1/computeresources/", headers=admin)).json())["count"]
    for bad in (-1, "x", True, 1.5, "-2", 2**31, [1]):
        for field in ("gpus", "max_concurrent_jobs"):
            resp = await add_resource(api, admin, "bad", **{field: bad})
            assert resp.status == 400, (field, bad)
            assert list(await resp.json()) == [field], (field, bad)
    resp = await add_resource(api, admin, "bad", gpus=-1, max_concurrent_jobs="many")
    assert set(await resp.json()) == {"gpus", "max_concurrent_jobs"}
    after = (await (await api.get("/api/v1/computeresources/", headers=admin)).json())["count"]
    assert after == before

    resp = await add_resource(api, admin, "gpu", gpus="2", max_concurrent_jobs=3)
    assert resp.status == 201
    body = await resp.json()
    assert body["gpus"] == 2 and body["max_concurrent_jobs"] == 3
    resp = await add_resource(api, admin, "nulls", gpus=None, max_concurrent_jobs=None)
    assert resp.status == 201
    # the fixture's resource was made without them: the defaults (no GPUs, unlimited)
    site = (await (await api.get("/api/v1/computeresources/", headers=admin)).json())["results"][0]
    assert site["name"] == "site" and site["gpus"] == 0 and site["max_concurrent_jobs"] == 0


async def test_instances_spread_over_resources_by_room(
    api: TestClient, admin: dict[str, str]
) -> None:
    assert (await add_resource(api, admin, "small", max_concurrent_jobs=1)).status == 201
    assert (await add_resource(api, admin, "big")).status == 201
    fs = await register(api, admin, FS_DESCRIPTOR, "small,big")
    assert (await upload(api, admin, "home/chris/uploads/in/a.txt", b"a")).status == 201
    first = (await run(api, admin, fs))[1]
    second = (await run(api, admin, fs))[1]
    assert (first["compute_resource_name"], second["compute_resource_name"]) == ("small", "big")
    # a named resource is honoured although it is full
    status, third = await run(api, admin, fs, compute_resource_name="small")
    assert status == 201 and third["compute_resource_name"] == "small"


async def test_gpu_instances_need_a_gpu_resource(api: TestClient, admin: dict[str, str]) -> None:
    assert (await add_resource(api, admin, "cpu")).status == 201
    plugin = await register(api, admin, GPU_DESCRIPTOR, "cpu")
    assert (await upload(api, admin, "home/chris/uploads/in/a.txt", b"a")).status == 201
    status, body = await run(api, admin, plugin, gpu_limit=1)
    assert status == 400 and "gpu_limit" in body, body
    listed = await (await api.get("/api/v1/plugins/instances/", headers=admin)).json()
    assert listed["count"] == 0

    assert (await add_resource(api, admin, "gpu", gpus=2)).status == 201
    await register(api, admin, GPU_DESCRIPTOR, "gpu")
    status, body = await run(api, admin, plugin, gpu_limit=2)
    assert status == 201 and body["compute_resource_name"] == "gpu"
    status, body = await run(api, admin, plugin, gpu_limit=1, compute_resource_name="cpu")
    assert status == 400 and "gpu_limit" in body
    status, body = await run(api, admin, plugin)  # no GPU needed: the plain site
    assert status == 201 and body["compute_resource_name"] == "cpu"


async def test_reservations_never_exceed_the_limit(api: TestClient, admin: dict[str, str]) -> None:
    assert (await add_resource(api, admin, "two", max_concurrent_jobs=2)).status == 201
    fs = await register(api, admin, FS_DESCRIPTOR, "two")
    assert (await upload(api, admin, "home/chris/uploads/in/a.txt", b"a")).status == 201
    ids = [(await run(api, admin, fs))[1]["id"] for _ in range(6)]
    sessions = api.app[SESSIONS]
    async with sessions() as s:
        resource = await s.get(ComputeResource, 1)
    assert resource is not None and resource.name == "two"

    async def worker(inst_id: int) -> bool:
        # each its own session and connection, as separate scheduler workers
        async with sessions() as s:
            taken = await reserve_slot(s, inst_id, resource)
            await s.commit()
            return taken

    taken = await asyncio.gather(*(worker(i) for i in ids))
    assert sum(taken) == 2
    async with sessions() as s:  # a second reservation of the same instance fails
        first = ids[taken.index(True)]
        assert not await reserve_slot(s, first, resource)


# -- scheduler: job slots ----------------------------------------------------


def empty_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w"):
        pass
    return buf.getvalue()


class FakeSite(PfconClient):
    """A compute site in memory: jobs run until :meth:`finish` is called."""

    def __init__(self, name: str) -> None:
        super().__init__(f"http://{name}.invalid/api/v1/", username="u", password="p")
        self.name = name
        self.jobs: dict[str, JobInfo] = {}
        self.most_running = 0
        self._cond = asyncio.Condition()

    def running(self) -> list[str]:
        return [j for j, info in self.jobs.items() if not info.status.is_terminal]

    async def server_info(self) -> PfconServerInfo:
        return PfconServerInfo(
            server_version="fake",
            pfcon_innetwork=False,
            storage_env="zipfile",
            container_env="fake",
            compute_volume_type="host",
        )

    async def submit(self, job: JobDescriptor, data: AsyncIterable[bytes]) -> JobSubmitted:
        async for _ in data:
            pass
        info = JobInfo(jid=job.jid, image=job.image, cmd="", status=JobStatus.STARTED)
        async with self._cond:
            self.jobs[job.jid] = info
            self.most_running = max(self.most_running, len(self.running()))
            self._cond.notify_all()
        data_part = JobData(jid=job.jid, nfiles=0, timestamp="", path="")
        return JobSubmitted(data=data_part, compute=info)

    async def status(
        self, jid: str, *, wait: float | None = None, known: JobStatus | None = None
    ) -> JobInfo:
        async with self._cond:
            if wait and jid in self.jobs:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._cond.wait_for(
                            lambda: jid not in self.jobs or self.jobs[jid].status != known
                        ),
                        wait,
                    )
            if jid not in self.jobs:
                raise JobNotFound(f"no job {jid}")
            return self.jobs[jid]

    async def iter_output(self, jid: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        yield empty_zip()

    async def delete(self, jid: str) -> None:
        async with self._cond:
            self.jobs.pop(jid, None)
            self._cond.notify_all()

    async def close(self) -> None:
        pass

    async def finish(self, jid: str) -> None:
        async with self._cond:
            self.jobs[jid] = self.jobs[jid].model_copy(
                update={"status": JobStatus.FINISHED_SUCCESSFULLY, "exit_code": 0}
            )
            self._cond.notify_all()


@pytest.fixture
async def fabric(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> AsyncIterator[tuple[TestClient, dict[str, str], dict[str, FakeSite]]]:
    """CUBE's API and its scheduler, whose compute sites are :class:`FakeSite` s.

    The sweep is slow (30 s), so a test that passes in time shows that new
    work is kicked and waiting instances are woken by an end, not polled.
    """
    settings = CubeSettings(home=tmp_path / "cube", run_scheduler=False, sweep_seconds=30)
    api: TestClient = await aiohttp_client(create_app(settings), headers=JSON_ACCEPT)
    admin = await token_for(api, *ADMIN)
    sites: dict[str, FakeSite] = {}

    def site_of(resource: ComputeResource) -> PfconClient:
        return sites.setdefault(resource.name, FakeSite(resource.name))

    scheduler = api.app[SCHEDULER]
    scheduler._client_factory = site_of  # the seam the scheduler has for its sites
    task = asyncio.create_task(scheduler.run())
    yield api, admin, sites
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def until(
    api: TestClient, admin: dict[str, str], inst_id: int, ok: Callable[[Any], bool]
) -> Any:
    """The instance once ``ok`` holds for it (10 s at most)."""

    async def poll() -> Any:
        while not ok(body := await instance(api, admin, inst_id)):
            await asyncio.sleep(0.05)
        return body

    return await asyncio.wait_for(poll(), 10)


def is_waiting(body: Any) -> bool:
    return bool(body["status"] == "scheduled" and "waiting for room" in body["error_message"])


def jid(inst_id: int) -> str:
    return f"chris-jid-{inst_id}"


async def test_a_full_resource_makes_the_next_instance_wait(
    fabric: tuple[TestClient, dict[str, str], dict[str, FakeSite]],
) -> None:
    api, admin, sites = fabric
    assert (await add_resource(api, admin, "one", max_concurrent_jobs=1)).status == 201
    fs = await register(api, admin, FS_DESCRIPTOR, "one")
    assert (await upload(api, admin, "home/chris/uploads/in/a.txt", b"a")).status == 201
    a = (await run(api, admin, fs))[1]["id"]
    b = (await run(api, admin, fs))[1]["id"]

    # one of them gets the slot (claims race), the other waits and says why
    async def split() -> tuple[int, int]:
        while True:
            bodies = {i: await instance(api, admin, i) for i in (a, b)}
            started = [i for i, x in bodies.items() if x["status"] == "started"]
            waiting = [i for i, x in bodies.items() if is_waiting(x)]
            if started and waiting:
                return started[0], waiting[0]
            await asyncio.sleep(0.05)

    first, second = await asyncio.wait_for(split(), 10)
    assert "on one" in (await instance(api, admin, second))["error_message"]
    await asyncio.sleep(0.3)  # sweeps pass; still only one job at the site
    assert sites["one"].running() == [jid(first)]

    await sites["one"].finish(jid(first))
    done = await until(api, admin, first, lambda x: x["status"] == "finishedSuccessfully")
    assert done["compute_resource_name"] == "one"
    body = await until(api, admin, second, lambda x: x["status"] == "started")
    assert body["error_message"] == "" and body["compute_resource_name"] == "one"

    # cancelling the running instance frees the slot as well
    third = (await run(api, admin, fs))[1]["id"]
    await until(api, admin, third, is_waiting)
    resp = await api.put(
        f"/api/v1/plugins/instances/{second}/", json={"status": "cancelled"}, headers=admin
    )
    assert resp.status == 200
    await until(api, admin, third, lambda x: x["status"] == "started")
    assert sites["one"].most_running == 1


async def test_waiting_instance_moves_to_a_resource_with_room_unless_pinned(
    fabric: tuple[TestClient, dict[str, str], dict[str, FakeSite]],
) -> None:
    api, admin, sites = fabric
    for name in ("a", "b"):
        assert (await add_resource(api, admin, name, max_concurrent_jobs=1)).status == 201
    fs = await register(api, admin, FS_DESCRIPTOR, "a,b")
    assert (await upload(api, admin, "home/chris/uploads/in/a.txt", b"a")).status == 201
    x = (await run(api, admin, fs))[1]
    y = (await run(api, admin, fs))[1]
    z = (await run(api, admin, fs))[1]  # both full: queued on the lowest id
    w = (await run(api, admin, fs, compute_resource_name="a"))[1]
    placed = [i["compute_resource_name"] for i in (x, y, z, w)]
    assert placed == ["a", "b", "a", "a"]
    await until(api, admin, x["id"], lambda i: i["status"] == "started")
    await until(api, admin, y["id"], lambda i: i["status"] == "started")
    await until(api, admin, z["id"], is_waiting)
    await until(api, admin, w["id"], is_waiting)

    # b frees a slot: z (not pinned) moves there before submission; w stays
    await sites["b"].finish(jid(y["id"]))
    moved = await until(api, admin, z["id"], lambda i: i["status"] == "started")
    assert moved["compute_resource_name"] == "b" and jid(z["id"]) in sites["b"].jobs
    assert is_waiting(await instance(api, admin, w["id"]))

    await sites["a"].finish(jid(x["id"]))
    body = await until(api, admin, w["id"], lambda i: i["status"] == "started")
    assert body["compute_resource_name"] == "a"
    assert sites["a"].most_running == 1 and sites["b"].most_running == 1


async def _instances_on(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    site: FakeSite,
    count: int,
    resource: dict[str, Any] | None = None,
    **settings: Any,
) -> tuple[TestClient, dict[str, str], list[int]]:
    """``count`` fs instances created on ``site``'s one compute resource (with
    ``resource`` fields), the scheduler not started yet: the API, admin
    headers and the instance ids."""
    cfg = CubeSettings(home=tmp_path / "cube", run_scheduler=False, **settings)
    api: TestClient = await aiohttp_client(create_app(cfg), headers=JSON_ACCEPT)
    admin = await token_for(api, *ADMIN)
    api.app[SCHEDULER]._client_factory = lambda _resource: site
    assert (await add_resource(api, admin, site.name, **(resource or {}))).status == 201
    fs = await register(api, admin, FS_DESCRIPTOR, site.name)
    assert (await upload(api, admin, "home/chris/uploads/in/a.txt", b"a")).status == 201
    return api, admin, [(await run(api, admin, fs))[1]["id"] for _ in range(count)]


async def _one_slot_queue(
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    sweep_seconds: float,
) -> tuple[TestClient, dict[str, str], FakeSite, list[int], list[int]]:
    """Thirty instances created for a resource with one job slot, its
    scheduler not started yet: the API, admin headers, the site, the list
    of slot reservations asked for (instance ids, filled as they happen) and
    the instance ids."""
    site = FakeSite("one")
    asks: list[int] = []

    async def counting(session: Any, inst_id: int, resource: ComputeResource) -> bool:
        asks.append(inst_id)
        return await reserve_slot(session, inst_id, resource)

    monkeypatch.setattr("cube.services.placement.reserve_slot", counting)
    api, admin, ids = await _instances_on(
        aiohttp_client,
        tmp_path,
        site,
        30,
        {"max_concurrent_jobs": 1},
        sweep_seconds=sweep_seconds,
    )
    return api, admin, site, asks, ids


async def _one_runs_the_rest_wait(api: TestClient, admin: dict[str, str], ids: list[int]) -> None:
    """Until one instance runs (whichever was claimed first) and all the
    others wait, saying why."""
    while True:
        bodies = [await instance(api, admin, i) for i in ids]
        if sum(b["status"] == "started" for b in bodies) == 1 and (
            sum(is_waiting(b) for b in bodies) == len(ids) - 1
        ):
            return
        await asyncio.sleep(0.05)


async def test_a_long_queue_asks_the_database_once_per_sweep_not_once_per_waiter(
    aiohttp_client: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty instances wait for one job slot: each asks for a slot once on
    arrival, then one probe per sweep interval asks for all of them (it would
    otherwise be thirty per sweep, and a thousand queued instances would keep
    the database busy with futile reservations). They still all run, in turn."""
    api, admin, site, asks, ids = await _one_slot_queue(
        aiohttp_client, tmp_path, monkeypatch, sweep_seconds=0.1
    )
    task = asyncio.create_task(api.app[SCHEDULER].run())
    try:
        await asyncio.wait_for(_one_runs_the_rest_wait(api, admin, ids), 20)
        asks.clear()
        await asyncio.sleep(1.0)  # about ten sweep intervals with a full resource
        assert 3 <= len(asks) <= 15, asks  # per resource, not 29 waiters x 10 sweeps
        for _ in ids:  # each end hands the slot on
            running = await asyncio.wait_for(_one_running(site), 10)
            await site.finish(running)
        for inst_id in ids:
            await until(api, admin, inst_id, lambda x: x["status"] == "finishedSuccessfully")
        assert site.most_running == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_queue_asks_for_a_slot_about_once_per_instance(
    aiohttp_client: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty instances arrive at once for one job slot, with no sweep to
    rescue them (30 s): an arrival behind a waiter does not ask for the full
    resource, and an instance that ends wakes exactly one waiter, so the
    reservations are about one per instance (there were three: each arrival
    asked, and each end woke two waiters for one slot). All still run, each
    saying why it waits while it does, and none waits for a sweep."""
    api, admin, site, asks, ids = await _one_slot_queue(
        aiohttp_client, tmp_path, monkeypatch, sweep_seconds=30
    )
    task = asyncio.create_task(api.app[SCHEDULER].run())
    try:
        await asyncio.wait_for(_one_runs_the_rest_wait(api, admin, ids), 10)
        for _ in ids:  # each end hands the slot on at once (a sweep is 30 s away)
            running = await asyncio.wait_for(_one_running(site), 5)
            await site.finish(running)
        for inst_id in ids:
            await until(api, admin, inst_id, lambda x: x["status"] == "finishedSuccessfully")
        assert site.most_running == 1
        assert len(ids) <= len(asks) <= len(ids) + 3, (len(asks), asks)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class QuickSite(FakeSite):
    """A site whose jobs end before the submission is answered (a trivial job)."""

    async def submit(self, job: JobDescriptor, data: AsyncIterable[bytes]) -> JobSubmitted:
        submitted = await super().submit(job, data)
        await self.finish(job.jid)
        return submitted.model_copy(update={"compute": self.jobs[job.jid]})


async def test_a_job_that_ended_before_its_submission_was_answered_is_not_waited_for(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    """The submission already says the job ended: the scheduler asks for its
    end at once instead of long-polling for a change from that end (which
    answered only after ``status_wait_seconds``: a trivial job held its slot
    that long now and then)."""
    site = QuickSite("one")
    api, admin, ids = await _instances_on(aiohttp_client, tmp_path, site, 3, status_wait_seconds=20)
    task = asyncio.create_task(api.app[SCHEDULER].run())
    try:

        async def ended() -> None:
            for inst_id in ids:
                await until(api, admin, inst_id, lambda x: x["status"] == "finishedSuccessfully")

        await asyncio.wait_for(ended(), 10)  # not 20 s each
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class RecordingSite(FakeSite):
    """A site that refuses a job id it has, as pfcon does, and records the
    status questions asked without waiting (the check before a submission)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.submitted: list[str] = []
        self.asked: list[str] = []

    async def submit(self, job: JobDescriptor, data: AsyncIterable[bytes]) -> JobSubmitted:
        if job.jid in self.jobs:
            raise JobConflict(f"job {job.jid} exists already")
        self.submitted.append(job.jid)
        return await super().submit(job, data)

    async def status(
        self, jid: str, *, wait: float | None = None, known: JobStatus | None = None
    ) -> JobInfo:
        if not wait:
            self.asked.append(jid)
        return await super().status(jid, wait=wait, known=known)


async def test_a_fresh_slot_submits_without_asking_and_a_duplicate_is_adopted(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    """An instance that takes a job slot afresh was never submitted: it is
    submitted without asking the site first (a round trip less per
    instance). Should the site have its job anyway (submitted by a CUBE from
    before job slots, which did not hold one), the refusal leads to the
    question, and the job found there is followed, not submitted again."""
    site = RecordingSite("one")
    api, admin, (fresh, there) = await _instances_on(aiohttp_client, tmp_path, site, 2)
    site.jobs[jid(there)] = JobInfo(jid=jid(there), image="", cmd="", status=JobStatus.STARTED)
    task = asyncio.create_task(api.app[SCHEDULER].run())
    try:
        for inst_id in (fresh, there):
            await until(api, admin, inst_id, lambda x: x["status"] == "started")
            await site.finish(jid(inst_id))
            await until(api, admin, inst_id, lambda x: x["status"] == "finishedSuccessfully")
        assert site.submitted == [jid(fresh)]  # the other's job was there: not sent again
        assert jid(fresh) not in site.asked and jid(there) in site.asked
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _one_running(site: FakeSite) -> str:
    while not site.running():
        await asyncio.sleep(0.02)
    (jid_,) = site.running()
    return jid_
