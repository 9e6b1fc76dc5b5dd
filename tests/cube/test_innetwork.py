"""CUBE's side of in-network compute resources: the mode read from the site,
and registering output from CUBE's own storage (``cube.services.innetwork``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from cube.api.common import SCHEDULER, SESSIONS, STORAGE
from cube.app import create_app
from cube.db.models import ComputeResource
from cube.errors import OutputMismatch
from cube.schema import ErrorCode
from cube.services.innetwork import SiteModes, stored_outputs
from cube.settings import CubeSettings
from cube.storage import FilesystemStorage
from pfcon.client import PfconClient
from pfcon.schema import (
    InNetworkDirs,
    JobDescriptor,
    JobSubmitted,
    OutputListing,
    PfconServerInfo,
)
from tests.cube.conftest import ADMIN, DS_DESCRIPTOR, FS_DESCRIPTOR, JSON_ACCEPT, token_for
from tests.cube.test_api import upload
from tests.cube.test_placement import FakeSite, jid, register, run, until
from tests.support.components import free_port

OUT = "home/chris/feeds/feed_1/pl-a_1/data"


def fake_pfcon(info: dict[str, Any], password: str = "p") -> web.Application:
    """A pfcon that only logs in (password ``password``) and describes itself as ``info``."""

    async def login(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("pfcon_password") != password:
            return web.json_response(
                {"message": "bad credentials", "code": "unauthorized"}, status=400
            )
        return web.json_response({"token": "t"})

    async def server_info(request: web.Request) -> web.Response:
        return web.json_response(
            {"server_version": "6", "container_env": "docker", "compute_volume_type": "host"} | info
        )

    app = web.Application()
    app.router.add_post("/api/v1/auth-token/", login)
    app.router.add_get("/api/v1/jobs/", server_info)
    return app


async def start(stack: AsyncExitStack, app: web.Application, port: int) -> str:
    runner = web.AppRunner(app)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}/api/v1/"


@pytest.fixture
async def sites() -> AsyncIterator[Callable[..., Any]]:
    """Start fake pfcons: ``await sites(info, port=None) -> url``."""
    async with AsyncExitStack() as stack:

        async def make(info: dict[str, Any], *, port: int | None = None) -> str:
            return await start(stack, fake_pfcon(info), port or free_port())

        yield make


async def _register(api: TestClient, url: str, name: str, password: str = "p") -> Any:
    admin = await token_for(api, *ADMIN)
    body = {"name": name, "compute_url": url, "compute_user": "u", "compute_password": password}
    resp = await api.post("/chris-admin/api/v1/computeresources/", json=body, headers=admin)
    return resp.status, await resp.json()


INNETWORK = {"pfcon_innetwork": True, "storage_env": "filesystem"}
ZIP = {"pfcon_innetwork": False, "storage_env": "zipfile"}


async def test_the_mode_is_read_from_the_site(api: TestClient, sites: Any) -> None:
    status, body = await _register(api, await sites(INNETWORK), "shared")
    assert status == 201, body
    assert body["compute_innetwork"] is True
    status, body = await _register(api, await sites(ZIP), "remote")
    assert status == 201, body
    assert body["compute_innetwork"] is False


async def test_a_site_sharing_other_storage_is_refused(api: TestClient, sites: Any) -> None:
    status, body = await _register(
        api, await sites({"pfcon_innetwork": True, "storage_env": "swift"}), "swift"
    )
    assert status == 400
    assert "swift" in body["compute_url"][0] and "filesystem" in body["compute_url"][0]
    admin = await token_for(api, *ADMIN)
    listed = await (await api.get("/api/v1/computeresources/", headers=admin)).json()
    assert listed["count"] == 0


async def test_refused_credentials_are_a_400(api: TestClient, sites: Any) -> None:
    status, body = await _register(api, await sites(INNETWORK), "shared", password="wrong")
    assert status == 400
    assert "refused the credentials" in body["compute_password"][0]


async def test_an_unreachable_site_is_zip_mode_until_the_scheduler_asks(
    api: TestClient, cube_settings: CubeSettings, sites: Any
) -> None:
    port = free_port()
    status, body = await _register(api, f"http://127.0.0.1:{port}/api/v1/", "later")
    assert status == 201, body
    assert body["compute_innetwork"] is False
    await sites(INNETWORK, port=port)  # the site comes up, in-network
    sessions = api.server.app[SESSIONS]
    async with sessions() as s:
        resource = await s.get(ComputeResource, body["id"])
    assert resource is not None
    modes = SiteModes(sessions)
    async with PfconClient(resource.compute_url, username="u", password="p") as client:
        assert await modes.innetwork(resource, client) is True
    async with sessions() as s:
        stored = await s.get(ComputeResource, body["id"])
    assert stored is not None and stored.compute_innetwork is True


# -- registering in-network output ---------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    store = FilesystemStorage(tmp_path / "storage")
    out = store.local_path(OUT)
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_bytes(b"alpha")
    (out / "sub" / "b.bin").write_bytes(b"\0" * 1000)
    return store


def _listing(*rel: str, path: str = OUT) -> OutputListing:
    return OutputListing(job_output_path=path, rel_file_paths=list(rel))


def test_listed_files_are_registered_with_their_sizes(storage: FilesystemStorage) -> None:
    files = stored_outputs(storage, OUT, _listing("a.txt", "sub/b.bin"))
    assert files == [(f"{OUT}/a.txt", 5), (f"{OUT}/sub/b.bin", 1000)]


def test_a_listing_of_another_dir_is_refused(storage: FilesystemStorage) -> None:
    with pytest.raises(OutputMismatch) as caught:
        stored_outputs(storage, OUT, _listing("a.txt", path="home/chris/uploads"))
    assert caught.value.error_code == ErrorCode.OUTPUT_PATH_MISMATCH


@pytest.mark.parametrize("bad", ["../../../etc/passwd", "/etc/passwd", "sub/../a.txt", "a.txt/"])
def test_unsafe_listed_paths_are_refused(storage: FilesystemStorage, bad: str) -> None:
    with pytest.raises(OutputMismatch) as caught:
        stored_outputs(storage, OUT, _listing("a.txt", bad))
    assert caught.value.error_code == ErrorCode.OUTPUT_PATH_MISMATCH


def test_files_missing_from_cube_storage_are_refused(storage: FilesystemStorage) -> None:
    with pytest.raises(OutputMismatch, match="storebase") as caught:
        stored_outputs(storage, OUT, _listing("a.txt", "not-here.txt"))
    assert caught.value.error_code == ErrorCode.OUTPUT_MISSING


def test_anything_but_a_regular_file_inside_the_output_is_skipped(
    storage: FilesystemStorage, tmp_path: Path
) -> None:
    out = storage.local_path(OUT)
    secret = tmp_path / "secret"
    secret.write_text("host file")
    (out / "link").symlink_to(secret)
    os.mkfifo(out / "pipe")
    (out / "dirlink").symlink_to(tmp_path)
    (out / "sub" / "x.chrislink").write_text("home/bob")
    listing = _listing("a.txt", "link", "pipe", "sub", "dirlink/secret", "sub/x.chrislink")
    files = stored_outputs(storage, OUT, listing)
    assert files == [(f"{OUT}/a.txt", 5)]


def test_commas_are_taken_out_of_names(storage: FilesystemStorage) -> None:
    out = storage.local_path(OUT)
    (out / "x,y.txt").write_bytes(b"xy")
    (out / "c,d").mkdir()
    (out / "c,d" / "e.txt").write_bytes(b"e")
    (out / "a,.txt").write_bytes(b"clash")  # "a.txt" exists: left unregistered
    files = stored_outputs(storage, OUT, _listing("a.txt", "a,.txt", "c,d/e.txt", "x,y.txt"))
    assert files == [(f"{OUT}/a.txt", 5), (f"{OUT}/cd/e.txt", 1), (f"{OUT}/xy.txt", 2)]
    assert (out / "xy.txt").read_bytes() == b"xy" and not (out / "x,y.txt").exists()
    assert (out / "a.txt").read_bytes() == b"alpha"


# -- the scheduler with an in-network site --------------------------------------------


class FakeSharedSite(FakeSite):
    """An in-network site in memory sharing ``root`` with CUBE.

    Its "plugin" copies every input file into the output dir and, like a
    malicious plugin, adds a link to a host file; its listing (like a broken
    site's) lists that link too, so CUBE must skip it itself.
    """

    def __init__(self, name: str, root: Path) -> None:
        super().__init__(name)
        self.root = root
        self.dirs: dict[str, InNetworkDirs] = {}

    async def server_info(self) -> PfconServerInfo:
        return PfconServerInfo(
            server_version="fake",
            pfcon_innetwork=True,
            storage_env="filesystem",
            container_env="fake",
            compute_volume_type="host",
        )

    async def submit(self, job: JobDescriptor, data: AsyncIterable[bytes]) -> JobSubmitted:
        raise AssertionError("CUBE sent a zip to an in-network site")

    async def iter_output(self, jid: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        raise AssertionError("CUBE asked an in-network site for a zip")
        yield b""

    async def submit_innetwork(self, job: JobDescriptor, dirs: InNetworkDirs) -> JobSubmitted:
        self.dirs[job.jid] = dirs
        out = self.root / dirs.output_dir
        out.mkdir(parents=True, exist_ok=True)
        for folder in dirs.input_dirs:
            for f in (self.root / folder).rglob("*"):
                if f.is_file() and not f.is_symlink():
                    target = out / f.relative_to(self.root / folder)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, target)
        (out / "passwd").symlink_to("/etc/passwd")
        return await super().submit(job, _nothing())

    async def output_listing(self, jid: str, *, job_output_path: str) -> OutputListing:
        out = self.root / job_output_path
        return OutputListing(
            job_output_path=job_output_path,
            rel_file_paths=sorted(p.relative_to(out).as_posix() for p in out.rglob("*")),
        )


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""


async def test_the_scheduler_sends_paths_and_registers_files_in_place(
    aiohttp_client: Callable[..., Any], tmp_path: Path, sites: Any
) -> None:
    settings = CubeSettings(home=tmp_path / "cube", run_scheduler=False, sweep_seconds=30)
    api: TestClient = await aiohttp_client(create_app(settings), headers=JSON_ACCEPT)
    admin = await token_for(api, *ADMIN)
    root = api.app[STORAGE].local_path("x").parent
    shared: dict[str, FakeSharedSite] = {}

    def site_of(resource: ComputeResource) -> PfconClient:
        return shared.setdefault(resource.name, FakeSharedSite(resource.name, root))

    scheduler = api.app[SCHEDULER]
    scheduler._client_factory = site_of
    task = asyncio.create_task(scheduler.run())
    try:
        status, body = await _register(api, await sites(INNETWORK), "shared")
        assert status == 201 and body["compute_innetwork"] is True
        fs = await register(api, admin, FS_DESCRIPTOR, "shared")
        ds = await register(api, admin, DS_DESCRIPTOR, "shared")
        for rel, data in {"a.txt": b"alpha", "sub/b.bin": b"\0" * 300}.items():
            resp = await upload(api, admin, f"home/chris/uploads/in/{rel}", data)
            assert resp.status == 201

        status, first = await run(api, admin, fs)
        assert status == 201, first
        await until(api, admin, first["id"], lambda x: x["status"] == "started")
        site = shared["shared"]
        assert site.dirs[jid(first["id"])] == InNetworkDirs(
            input_dirs=["home/chris/uploads/in"], output_dir=first["output_path"]
        )
        await site.finish(jid(first["id"]))
        ended = ("finishedSuccessfully", "finishedWithError", "cancelled")
        done = await until(api, admin, first["id"], lambda x: x["status"] in ended)
        assert done["status"] == "finishedSuccessfully", done
        files = await (
            await api.get(f"/api/v1/plugins/instances/{first['id']}/files/", headers=admin)
        ).json()
        prefix = first["output_path"] + "/"
        got = {f["fname"].removeprefix(prefix): f["fsize"] for f in files["results"]}
        assert got == {"a.txt": 5, "sub/b.bin": 300}  # the link was not registered
        assert done["size"] == 305

        resp = await api.post(
            f"/api/v1/plugins/{ds}/instances/", json={"previous_id": first["id"]}, headers=admin
        )
        second = await resp.json()
        await until(api, admin, second["id"], lambda x: x["status"] == "started")
        assert site.dirs[jid(second["id"])] == InNetworkDirs(
            input_dirs=[first["output_path"]], output_dir=second["output_path"]
        )
        # cancelled while running: its job is stopped and what it wrote is removed
        written = root / second["output_path"]
        assert (written / "a.txt").is_file()
        resp = await api.put(
            f"/api/v1/plugins/instances/{second['id']}/",
            json={"status": "cancelled"},
            headers=admin,
        )
        assert resp.status == 200
        async with asyncio.timeout(10):
            while written.exists():
                await asyncio.sleep(0.05)
        assert jid(second["id"]) not in site.jobs
        assert (root / first["output_path"] / "a.txt").read_bytes() == b"alpha"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
