"""In-network mode (storage_env ``filesystem``): pfcon mounts CUBE's dirs in place.

A site whose pfcon and pman share one storage tree with "CUBE" (here a
temporary directory the tests write to as CUBE would). pfioh's URL points
at a port nobody listens on: nothing may go through it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from pfcon.app import create_app as create_pfcon
from pfcon.errors import InvalidJob, JobConflict, JobNotFound, StorageError
from pfcon.innetwork import SharedStorage
from pfcon.schema import InNetworkDirs, JobStatus, PluginType, check_storage_path
from pfcon.settings import PfconSettings
from pman.app import create_app as create_pman
from pman.client import PmanClient
from pman.errors import JobNotFound as PmanJobNotFound
from pman.settings import PmanSettings
from tests.pfcon.conftest import (
    Part,
    Site,
    copy_job,
    job_parts,
    pfcon_settings,
    post_form,
    serve,
    wait_until_terminal,
)
from tests.support.components import free_port

#: Where "CUBE" keeps an uploaded study and where an instance's output goes.
UPLOADS = "home/chris/uploads/study"
OTHER = "home/chris/uploads/other"
OUTPUT = "home/chris/feeds/feed_1/pl-copy_1/data"

#: A ds plugin that plants what a malicious plugin could leave in CUBE's
#: storage, next to one honest file: links to a host file and a host dir, a
#: FIFO, a socket, a device (where allowed) and a ChRIS link file.
PLANT_SCRIPT = """
import os, pathlib, stat, sys
out = pathlib.Path(sys.argv[-1])
(out / "sub").mkdir(parents=True, exist_ok=True)
(out / "sub" / "result.txt").write_text("honest output\\n")
os.symlink(sys.argv[-3], out / "secret")
os.symlink(os.path.dirname(sys.argv[-3]), out / "sub" / "hostdir")
os.mkfifo(out / "sub" / "pipe")
os.mknod(out / "sock", stat.S_IFSOCK | 0o600)
try:
    os.mknod(out / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
except PermissionError:
    pass
(out / "sub" / "evil.chrislink").write_text("home/someone_else/uploads")
print("planted")
"""


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """The storage CUBE and the site share, with two uploaded studies."""
    root = tmp_path / "storage"
    study = root / UPLOADS
    (study / "series").mkdir(parents=True)
    (study / "notes.txt").write_text("study notes\n")
    (study / "series" / "img-1.dcm").write_bytes(bytes(range(256)) * 16)
    other = root / OTHER
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("other notes: must lose the clash\n")
    (other / "extra.txt").write_text("extra\n")
    return root


@pytest.fixture
async def innetwork_site(tmp_path: Path, storage: Path) -> AsyncIterator[Site]:
    """pman (local backend) and an in-network pfcon over ``storage``; no pfioh."""
    async with AsyncExitStack() as stack:
        pman_url = await serve(
            stack,
            create_pman(
                PmanSettings(
                    storebase=storage,
                    data_dir=tmp_path / "pman",
                    kill_grace_seconds=1,
                    local_gpus=[],
                )
            ),
        )
        dead_pfioh = f"http://127.0.0.1:{free_port()}/api/v1/"
        pfcon_url = await serve(
            stack,
            create_pfcon(
                pfcon_settings(
                    dead_pfioh,
                    pman_url,
                    innetwork=True,
                    storage_env="filesystem",
                    storebase=storage,
                    max_status_wait_seconds=30.0,
                )
            ),
        )
        yield Site(pfcon_url, dead_pfioh, pman_url, storage)


def _tree(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (relative path → contents)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _prefixed(tree: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    out = {}
    for rel, data in tree.items():
        head, _, name = rel.rpartition("/")
        out[f"{head}/{prefix}{name}" if head else f"{prefix}{name}"] = data
    return out


async def _token(site: Site) -> str:
    async with site.client() as client:
        return await client.login()


async def _assert_nothing_left(site: Site, jid: str) -> None:
    assert not (site.storebase / f"key-{jid}").exists()
    async with PmanClient(site.pman_url) as pman:
        with pytest.raises(PmanJobNotFound):
            await pman.get(jid)


# -- settings and server info ------------------------------------------------------


def test_settings_need_filesystem_storage_and_a_storebase(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PFCON_STORAGE_ENV=filesystem"):
        PfconSettings(innetwork=True, storebase=tmp_path)
    with pytest.raises(ValueError, match="PFCON_STOREBASE"):
        PfconSettings(innetwork=True, storage_env="filesystem")
    with pytest.raises(ValueError, match="not a directory"):
        PfconSettings(innetwork=True, storage_env="filesystem", storebase=tmp_path / "nope")
    with pytest.raises(ValueError, match="zipfile"):
        PfconSettings(storage_env="filesystem")
    settings = PfconSettings(innetwork=True, storage_env="filesystem", storebase=tmp_path)
    assert settings.storebase == tmp_path
    assert PfconSettings().storage_env == "zipfile"


def test_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFCON_INNETWORK", "true")
    monkeypatch.setenv("PFCON_STORAGE_ENV", "filesystem")
    monkeypatch.setenv("PFCON_STOREBASE", str(tmp_path))
    settings = PfconSettings()
    assert settings.innetwork and settings.storage_env == "filesystem"


async def test_server_info_says_in_network(innetwork_site: Site) -> None:
    async with innetwork_site.client() as client:
        info = await client.server_info()
    assert info.pfcon_innetwork is True
    assert info.storage_env == "filesystem"


@pytest.mark.parametrize(
    "bad", ["", "/etc", "a/../b", "..", "a//b", "a/./b", "a/", "a\\b", "a\x00b", "x" * 5000]
)
def test_storage_paths_must_be_plain_relative_paths(bad: str) -> None:
    with pytest.raises(ValueError):
        check_storage_path(bad)
    assert check_storage_path("home/chris/feeds/feed_1/pl-a_1/data") == (
        "home/chris/feeds/feed_1/pl-a_1/data"
    )


# -- one input dir: mounted in place ----------------------------------------------


async def test_one_input_dir_is_used_in_place(
    innetwork_site: Site, storage: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    before = _tree(storage / UPLOADS)
    inodes = {p: os.stat(storage / UPLOADS / p).st_ino for p in before}
    dirs = InNetworkDirs(input_dirs=[UPLOADS], output_dir=OUTPUT)
    async with innetwork_site.client() as client:
        submitted = await client.submit_innetwork(copy_job(jid), dirs)
        # pman was given CUBE's dir itself: nothing was copied or linked
        assert submitted.data.path == UPLOADS
        assert submitted.data.nfiles == 2
        assert not (storage / f"key-{jid}" / "incoming").exists()

        info = await wait_until_terminal(client, jid)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info.logs
        assert str(storage / UPLOADS) in info.cmd

        listing = await client.output_listing(jid, job_output_path=OUTPUT)
        assert listing.job_output_path == OUTPUT
        expected = _prefixed(before, "out-")
        assert listing.rel_file_paths == sorted(expected)
        assert _tree(storage / OUTPUT) == expected  # written in place, in CUBE's storage

        await client.delete(jid)
        with pytest.raises(JobNotFound):
            await client.status(jid)
    # DELETE removed pfcon's own dir only: CUBE's input and output are intact
    assert not (storage / f"key-{jid}").exists()
    assert _tree(storage / UPLOADS) == before
    assert {p: os.stat(storage / UPLOADS / p).st_ino for p in before} == inodes
    assert _tree(storage / OUTPUT) == expected


async def test_an_fs_job_without_input_dirs_gets_an_empty_input(
    innetwork_site: Site, storage: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    async with innetwork_site.client() as client:
        submitted = await client.submit_innetwork(
            copy_job(jid, type=PluginType.FS, args=["--prefix", "x-"]),
            InNetworkDirs(input_dirs=[], output_dir=OUTPUT),
        )
        assert submitted.data.path == f"key-{jid}/incoming"
        assert submitted.data.nfiles == 0
        info = await wait_until_terminal(client, jid)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info.logs
        assert (await client.output_listing(jid, job_output_path=OUTPUT)).rel_file_paths == []
        await client.delete(jid)


# -- several input dirs: merged with hard links ------------------------------------


async def test_several_input_dirs_are_merged_with_hard_links(
    innetwork_site: Site, storage: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    first, second = _tree(storage / UPLOADS), _tree(storage / OTHER)
    dirs = InNetworkDirs(input_dirs=[UPLOADS, OTHER], output_dir=OUTPUT)
    gate = storage.parent / "go"
    async with innetwork_site.client() as client:
        submitted = await client.submit_innetwork(copy_job(jid, env=[f"WAIT_FOR={gate}"]), dirs)
        incoming = storage / f"key-{jid}" / "incoming"
        assert submitted.data.path == f"key-{jid}/incoming"
        assert submitted.data.nfiles == 3  # notes.txt twice: the first input dir wins
        merged = {**second, **first}
        assert _tree(incoming) == merged
        for rel in merged:
            source = storage / (UPLOADS if rel in first else OTHER) / rel
            # the same inode: a link, no data copied
            assert os.stat(incoming / rel).st_ino == os.stat(source).st_ino
            assert os.stat(source).st_nlink == 2
        gate.touch()
        info = await wait_until_terminal(client, jid)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info.logs
        listing = await client.output_listing(jid, job_output_path=OUTPUT)
        assert listing.rel_file_paths == sorted(_prefixed(merged, "out-"))
        await client.delete(jid)
    # the links are gone, the data is not
    assert not (storage / f"key-{jid}").exists()
    assert _tree(storage / UPLOADS) == first and _tree(storage / OTHER) == second
    assert all(os.stat(storage / UPLOADS / rel).st_nlink == 1 for rel in first)


def test_files_are_copied_when_hard_links_are_impossible(
    storage: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    shared = SharedStorage(storage)
    with caplog.at_level(logging.INFO, logger="pfcon.innetwork"):
        prepared = shared.prepare(
            "chris-jid-1", InNetworkDirs(input_dirs=[UPLOADS, OTHER], output_dir=OUTPUT)
        )
    incoming = storage / "key-chris-jid-1" / "incoming"
    assert prepared.record.pman_input_dir == "key-chris-jid-1/incoming"
    assert _tree(incoming) == {**_tree(storage / OTHER), **_tree(storage / UPLOADS)}
    assert os.stat(incoming / "notes.txt").st_ino != os.stat(storage / UPLOADS / "notes.txt").st_ino
    assert "COPIED because hard links are impossible" in caplog.text
    assert "EXDEV" in caplog.text


def test_an_input_dir_holding_the_output_dir_is_snapshotted_without_it(storage: Path) -> None:
    shared = SharedStorage(storage)
    feed = "home/chris/feeds/feed_1"
    (storage / feed / "pl-a_1" / "data").mkdir(parents=True)
    (storage / feed / "pl-a_1" / "data" / "a.txt").write_text("a")
    prepared = shared.prepare(
        "chris-jid-2", InNetworkDirs(input_dirs=[feed], output_dir=f"{feed}/pl-b_2/data")
    )
    assert prepared.record.linked
    incoming = storage / prepared.record.pman_input_dir
    assert _tree(incoming) == {"pl-a_1/data/a.txt": b"a"}
    assert not (incoming / "pl-b_2" / "data").exists()  # its own output is not its input


def test_links_and_special_files_in_inputs_are_not_merged(storage: Path) -> None:
    (storage / OTHER / "passwd").symlink_to("/etc/passwd")
    os.mkfifo(storage / OTHER / "pipe")
    shared = SharedStorage(storage)
    prepared = shared.prepare(
        "chris-jid-3", InNetworkDirs(input_dirs=[UPLOADS, OTHER], output_dir=OUTPUT)
    )
    incoming = storage / prepared.record.pman_input_dir
    assert not os.path.lexists(incoming / "passwd")
    assert not os.path.lexists(incoming / "pipe")


# -- the output listing ---------------------------------------------------------------


async def test_listing_removes_links_special_files_and_chrislinks(
    innetwork_site: Site, storage: Path, tmp_path: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    secret = tmp_path / "host" / "shadow"
    secret.parent.mkdir()
    secret.write_text("root:$6$secret\n")
    job = copy_job(
        jid, entrypoint=[sys.executable, "-c", PLANT_SCRIPT], args=["--target", str(secret)]
    )
    async with innetwork_site.client() as client:
        await client.submit_innetwork(job, InNetworkDirs(input_dirs=[UPLOADS], output_dir=OUTPUT))
        info = await wait_until_terminal(client, jid)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info.logs
        out = storage / OUTPUT
        assert (out / "secret").is_symlink() and stat.S_ISFIFO(os.lstat(out / "sub/pipe").st_mode)

        listing = await client.output_listing(jid, job_output_path=OUTPUT)
        assert listing.rel_file_paths == ["sub/result.txt"]
        # removed from CUBE's storage, not just left out of the listing
        left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
        assert left == ["sub", "sub/result.txt"]
        # the link targets were not touched
        assert secret.read_text() == "root:$6$secret\n"
        # listing again is idempotent
        again = await client.output_listing(jid, job_output_path=OUTPUT)
        assert again == listing
        await client.delete(jid)


async def test_listing_checks_the_output_path_and_the_mode(
    innetwork_site: Site, storage: Path, tmp_path: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    gate = tmp_path / "go"
    dirs = InNetworkDirs(input_dirs=[UPLOADS], output_dir=OUTPUT)
    async with innetwork_site.client() as client:
        await client.submit_innetwork(copy_job(jid, env=[f"WAIT_FOR={gate}"]), dirs)
        # a running plugin could still plant a link after the check: 409
        with pytest.raises(JobConflict):
            await client.output_listing(jid, job_output_path=OUTPUT)
        gate.touch()
        await wait_until_terminal(client, jid)
        for wrong in (UPLOADS, "home/chris/feeds/feed_1/pl-copy_1/data/..", "/" + OUTPUT):
            with pytest.raises(InvalidJob) as caught:
                await client.output_listing(jid, job_output_path=wrong)
            assert caught.value.status == 400
        # an in-network site has no zip to give
        with pytest.raises(InvalidJob, match="job_output_path"):
            async for _ in client.iter_output(jid):
                pass
        with pytest.raises(JobNotFound):
            await client.output_listing("chris-jid-404", job_output_path=OUTPUT)
        await client.delete(jid)


async def test_a_zip_mode_site_refuses_in_network_requests(
    site: Site, jids: Callable[[], str]
) -> None:
    jid = jids()
    async with site.client() as client:
        with pytest.raises(InvalidJob, match="zipfile") as caught:
            await client.submit_innetwork(
                copy_job(jid), InNetworkDirs(input_dirs=[UPLOADS], output_dir=OUTPUT)
            )
        assert caught.value.status == 400
        with pytest.raises(InvalidJob, match="zip mode"):
            await client.output_listing(jid, job_output_path=OUTPUT)
    assert not (site.storebase / f"key-{jid}").exists()


# -- refused submissions ----------------------------------------------------------------


def _dirs_parts(*inputs: str, output: str | None = OUTPUT) -> list[Part]:
    parts: list[Part] = [("input_dirs", i) for i in inputs]
    if output is not None:
        parts.append(("output_dir", output))
    return parts


@pytest.mark.parametrize(
    ("parts", "field", "why"),
    [
        (_dirs_parts("/etc"), "input_dirs", "absolute"),
        (_dirs_parts(f"{UPLOADS}/../../.."), "input_dirs", "'..'"),
        (_dirs_parts("home/chris/uploads/nothing"), "input_dirs", "does not exist"),
        (_dirs_parts(f"{UPLOADS}/notes.txt"), "input_dirs", "not a directory"),
        (_dirs_parts("escape"), "input_dirs", "outside the shared storage"),
        (_dirs_parts("key-chris-jid-9"), "input_dirs", "scratch"),
        (_dirs_parts(UPLOADS, output="/tmp/out"), "output_dir", "absolute"),
        (_dirs_parts(UPLOADS, output="home/../../out"), "output_dir", "'..'"),
        (_dirs_parts(UPLOADS, output="escape/out"), "output_dir", "outside the shared storage"),
        (_dirs_parts(UPLOADS, output=f"{UPLOADS}/notes.txt/x"), "output_dir", "not a folder"),
        (_dirs_parts("home/chris", output="home"), "input_dirs", "inside output_dir"),
        (_dirs_parts(UPLOADS, output=UPLOADS), "input_dirs", "inside output_dir"),
        (_dirs_parts(UPLOADS, output=None), "output_dir", "required"),
        ([*_dirs_parts(UPLOADS), ("output_dir", "home/x")], "output_dir", "2 times"),
        ([*_dirs_parts(UPLOADS), ("data_file", b"PK")], "data_file", "in-network"),
    ],
)
async def test_unsafe_or_wrong_dirs_are_a_400(
    innetwork_site: Site,
    storage: Path,
    tmp_path: Path,
    jids: Callable[[], str],
    parts: list[Part],
    field: str,
    why: str,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (storage / "escape").symlink_to(outside)
    before = _tree(storage)
    jid = jids()
    status, body = await post_form(
        innetwork_site, await _token(innetwork_site), [*job_parts(copy_job(jid)), *parts]
    )
    assert status == 400, body
    message = str(body["message"])
    assert message.startswith(field) and why in message, message
    await _assert_nothing_left(innetwork_site, jid)
    assert _tree(storage) == before
    assert not list(outside.iterdir())
    assert not (storage / OUTPUT).exists()  # refused before anything was created


async def test_a_resubmission_returns_the_job_or_a_conflict(
    innetwork_site: Site, storage: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    dirs = InNetworkDirs(input_dirs=[UPLOADS, OTHER], output_dir=OUTPUT)
    async with innetwork_site.client() as client:
        first = await client.submit_innetwork(copy_job(jid), dirs)
        await wait_until_terminal(client, jid)
        token = await client.login()
        parts = [*job_parts(copy_job(jid)), *_dirs_parts(UPLOADS, OTHER)]
        status, body = await post_form(innetwork_site, token, parts)
        assert status == 200, body
        assert body["data"]["path"] == first.data.path  # type: ignore[index]
        with pytest.raises(JobConflict, match="other input or output dirs"):
            await client.submit_innetwork(
                copy_job(jid), InNetworkDirs(input_dirs=[OTHER], output_dir=OUTPUT)
            )
        with pytest.raises(JobConflict, match="different image"):
            await client.submit_innetwork(copy_job(jid, image="local/other"), dirs)
        await client.delete(jid)


async def test_pman_refusal_removes_the_scratch_but_not_the_shared_dirs(
    innetwork_site: Site, storage: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    before = _tree(storage)
    async with innetwork_site.client() as client:
        with pytest.raises(InvalidJob) as caught:
            await client.submit_innetwork(
                copy_job(jid, gpu_limit=1),
                InNetworkDirs(input_dirs=[UPLOADS, OTHER], output_dir=OUTPUT),
            )
    assert caught.value.status == 422
    await _assert_nothing_left(innetwork_site, jid)
    assert _tree(storage) == before


async def test_deleting_a_running_job_keeps_the_shared_dirs(
    innetwork_site: Site, storage: Path, tmp_path: Path, jids: Callable[[], str]
) -> None:
    jid = jids()
    first = _tree(storage / UPLOADS)
    (storage / OUTPUT).mkdir(parents=True)
    (storage / OUTPUT / "earlier.txt").write_text("kept")
    job = copy_job(jid, env=[f"WAIT_FOR={tmp_path / 'never'}"])
    async with innetwork_site.client() as client:
        await client.submit_innetwork(
            job, InNetworkDirs(input_dirs=[UPLOADS, OTHER], output_dir=OUTPUT)
        )
        await client.delete(jid)
        with pytest.raises(JobNotFound):
            await client.status(jid)
        await client.delete(jid)  # twice is fine
    assert not (storage / f"key-{jid}").exists()
    assert _tree(storage / UPLOADS) == first
    assert (storage / OUTPUT / "earlier.txt").read_text() == "kept"


def test_discard_never_follows_a_link_out_of_the_scratch(storage: Path) -> None:
    shared = SharedStorage(storage)
    (storage / "key-chris-jid-5").symlink_to(storage / UPLOADS)
    before = _tree(storage / UPLOADS)
    shared.discard("chris-jid-5")
    assert not os.path.lexists(storage / "key-chris-jid-5")
    assert _tree(storage / UPLOADS) == before
    shared.discard("chris-jid-5")  # absent is fine


def test_a_listing_that_cannot_remove_an_unsafe_entry_fails(
    storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = SharedStorage(storage)
    shared.prepare("chris-jid-6", InNetworkDirs(input_dirs=[UPLOADS], output_dir=OUTPUT))
    (storage / OUTPUT / "link").symlink_to("/etc/passwd")

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(StorageError, match="could not be removed"):
        shared.list_output("chris-jid-6", OUTPUT)


async def test_a_job_pman_lost_is_scheduled_again_over_its_prepared_dirs(
    innetwork_site: Site, storage: Path, jids: Callable[[], str]
) -> None:
    """pfcon stopped between preparing a job and scheduling it: CUBE's retry runs it."""
    jid = jids()
    dirs = InNetworkDirs(input_dirs=[UPLOADS, OTHER], output_dir=OUTPUT)
    async with innetwork_site.client() as client:
        first = await client.submit_innetwork(copy_job(jid), dirs)
        await wait_until_terminal(client, jid)
        async with PmanClient(innetwork_site.pman_url) as pman:
            await pman.delete(jid)
        again = await client.submit_innetwork(copy_job(jid), dirs)
        assert again.data.path == first.data.path
        info = await wait_until_terminal(client, jid)
        assert info.status is JobStatus.FINISHED_SUCCESSFULLY, info.logs
        await client.delete(jid)
    assert not (storage / f"key-{jid}").exists()
