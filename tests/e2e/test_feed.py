"""End to end: CUBE, pfcon, pfioh and pman as real servers on loopback.

A dircopy → simpledsapp → simpledsapp feed runs once on pman's ``local``
backend, on ``docker`` against a real engine and on ``swarm`` against a
real one-node swarm, with locally built plugin images. Also: errors
propagate to children, and a CUBE killed in the middle of a feed carries on
after a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from cube.cli.stack import Stack
from cube.client import CubeClient
from cube.schema import InstanceStatus
from tests.e2e.conftest import site_jobs

pytestmark = pytest.mark.slow

S = InstanceStatus

TREE: dict[str, bytes] = {
    "study/notes.txt": b"hello fabric\n",
    "study/series 1/ïmage-001.dcm": bytes(range(256)) * 400,
    "study/series 1/ïmage-002.dcm": hashlib.sha256(b"x").digest() * 1000,
    "study/empty.bin": b"",
}


async def _upload_tree(client: CubeClient, tmp: Path, folder: str) -> None:
    for rel, data in TREE.items():
        local = tmp / "upload" / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        await client.upload(local, f"{folder}/{rel}")


async def _run_feed(client: CubeClient, tmp: Path) -> None:
    folder = "home/chris/uploads/in"
    await _upload_tree(client, tmp, folder)
    dircopy = await client.plugin_by_name("pl-dircopy")
    simple = await client.plugin_by_name("pl-simpledsapp")
    root = await client.create_instance(dircopy.id, {"dir": folder}, title="e2e")
    a = await client.create_instance(
        simple.id, {"prefix": "a_", "dummyInt": "5"}, previous_id=root.id
    )
    b = await client.create_instance(simple.id, {"prefix": "b_"}, previous_id=a.id)
    assert a.status is S.WAITING and b.status is S.WAITING

    final = await client.wait(b.id, timeout=300)
    instances = {i.id: i for i in await client.feed_instances(root.feed_id)}
    for i in instances.values():
        assert i.status is S.FINISHED_SUCCESSFULLY, (
            i.id,
            i.status,
            i.error_code,
            i.error_message,
            i.summary,
        )
    assert final.status is S.FINISHED_SUCCESSFULLY
    # each status is timestamped; start_date is when it started, not when queued
    history = [h.status for h in final.status_history]
    assert history == [
        S.CREATED,
        S.WAITING,
        S.SCHEDULED,
        S.STARTED,
        S.REGISTERING_FILES,
        S.FINISHED_SUCCESSFULLY,
    ]
    started = next(h.timestamp for h in final.status_history if h.status is S.STARTED)
    # start_date: when the job was seen running at the site (at or after submission)
    assert final.start_date is not None and final.start_date >= started
    assert final.end_date is not None and final.end_date >= final.start_date

    expected = {
        f"{rel.rsplit('/', 1)[0]}/b_a_{rel.rsplit('/', 1)[1]}": data for rel, data in TREE.items()
    }
    files = await client.instance_files(b.id)
    got = {f.fname.removeprefix(final.output_path + "/"): f for f in files}
    assert set(got) == set(expected)
    for rel, f in got.items():
        dest = tmp / "download" / rel
        n = await client.download(f.file_resource, dest)
        assert dest.read_bytes() == expected[rel] and n == f.fsize == len(expected[rel])
    assert final.size == sum(len(d) for d in expected.values())
    # the dircopy root copied the uploaded tree verbatim
    root_files = {
        f.fname.removeprefix(instances[root.id].output_path + "/")
        for f in await client.instance_files(root.id)
    }
    assert root_files == set(TREE)


async def test_feed_on_local_backend(local_stack: tuple[Stack, CubeClient], tmp_path: Path) -> None:
    _stack, client = local_stack
    await _run_feed(client, tmp_path)


async def test_feed_in_network_on_local_backend(
    innetwork_stack: tuple[Stack, CubeClient], tmp_path: Path
) -> None:
    """The same feed with the site sharing CUBE's storage: no zip, no copy, same result."""
    stack, client = innetwork_stack
    [resource] = await client.compute_resources()
    assert resource.compute_innetwork is True  # read from pfcon when it was registered
    await _run_feed(client, tmp_path)

    home = stack.config.home
    storage = stack.config.cube_storage
    # the registered files are the plugins' own output files, in place in CUBE's storage
    for inst in await client.feed_instances((await client.feeds())[0].id):
        for f in await client.instance_files(inst.id):
            st = (storage / f.fname).lstat()
            assert st.st_size == f.fsize and st.st_nlink == 1, f.fname
    # nothing went through pfioh: no job data in its store, no request in its log
    store = home / "site" / "store"
    assert not list(store.glob("key-*")) and not [p for p in store.rglob("*") if p.is_file()]
    assert "/jobs/" not in (home / "logs" / "pfioh.log").read_text()
    # CUBE spooled no output zip
    tmp = home / "cube" / "tmp"
    assert not (tmp.exists() and list(tmp.iterdir()))

    # two input dirs: merged by the site with hard links into its scratch dir
    extra = tmp_path / "extra.txt"
    extra.write_bytes(b"from another folder\n")
    await client.upload(extra, "home/chris/uploads/extra/extra.txt")
    dircopy = await client.plugin_by_name("pl-dircopy")
    merged = await client.create_instance(
        dircopy.id, {"dir": "home/chris/uploads/in/study/series 1,home/chris/uploads/extra"}
    )
    done = await client.wait(merged.id, timeout=120)
    assert done.status is S.FINISHED_SUCCESSFULLY, (done.error_code, done.error_message)
    got = {
        f.fname.removeprefix(done.output_path + "/"): (storage / f.fname).read_bytes()
        for f in await client.instance_files(merged.id)
    }
    assert got == {
        "ïmage-001.dcm": TREE["study/series 1/ïmage-001.dcm"],
        "ïmage-002.dcm": TREE["study/series 1/ïmage-002.dcm"],
        "extra.txt": b"from another folder\n",
    }
    pfcon_log = (home / "logs" / "pfcon.log").read_text()
    assert f"job chris-jid-{merged.id}: 2 input dirs merged with 3 hard links" in pfcon_log

    # pfcon's per-job dirs in the shared storage are removed at cleanup; CUBE's stay
    async with asyncio.timeout(30):
        while list(storage.glob("key-*")):
            await asyncio.sleep(0.2)
    uploads = storage / "home" / "chris" / "uploads"
    assert (uploads / "in" / "study" / "notes.txt").is_file()
    # the hard links are gone with the scratch dir: each input file has one name again
    assert all(p.stat().st_nlink == 1 for p in uploads.rglob("*") if p.is_file())


@pytest.mark.docker
async def test_feed_on_docker_backend(
    docker_stack: tuple[Stack, CubeClient], tmp_path: Path, docker_engine: Any
) -> None:
    stack, client = docker_stack
    await _run_feed(client, tmp_path)
    await _wait_cleaned_up(stack, docker_engine)


@pytest.mark.docker
async def test_feed_on_swarm_backend(
    swarm_stack: tuple[Stack, CubeClient], tmp_path: Path, swarm_manager: Any
) -> None:
    stack, client = swarm_stack
    await _run_feed(client, tmp_path)
    await _wait_cleaned_up(stack, swarm_manager)


async def _wait_cleaned_up(stack: Stack, engine: Any) -> None:
    """Wait (boundedly) until the site removed every job and its data: that
    happens just after each instance's terminal status is recorded."""
    store = stack.config.home / "site" / "store"
    async with asyncio.timeout(30):
        while site_jobs(engine, stack.config.backend) or list(store.glob("key-*")):
            await asyncio.sleep(0.2)


#: A ds plugin holding ``--megabytes`` MiB in memory (``tail`` buffers a
#: stream without newlines), then writing ``done.txt``.
MEMHOG_SCRIPT = """#!/bin/sh
mb=1
if [ "$1" = "--megabytes" ]; then mb=$2; shift 2; fi
head -c "${mb}m" /dev/zero | tail > /dev/null || exit 1
echo done > "$2/done.txt"
"""


def _memhog_image(engine: Any) -> str:
    """``chris-test/pl-memhog:1``: the busybox test image plus MEMHOG_SCRIPT (built, not pulled)."""
    import base64
    import io

    from tests.support.busybox import ensure_busybox_image

    base = ensure_busybox_image(engine)
    script = base64.b64encode(MEMHOG_SCRIPT.encode()).decode()
    dockerfile = (
        f"FROM {base}\n"
        f"RUN mkdir -p /opt && echo {script} | base64 -d > /opt/memhog && chmod 755 /opt/memhog\n"
    )
    engine.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag="chris-test/pl-memhog:1", rm=True
    )
    return "chris-test/pl-memhog:1"


async def _over_memory_feed(client: CubeClient, engine: Any, tmp_path: Path) -> None:
    """A plugin over its memory limit ends finishedWithError saying "out of memory";
    the same plugin within its limit succeeds."""
    memhog = await client.register_plugin(
        {
            "name": "pl-memhog",
            "dock_image": _memhog_image(engine),
            "type": "ds",
            "version": "1.0",
            "execshell": "/bin/sh",
            "selfpath": "/opt",
            "selfexec": "memhog",
            "min_memory_limit": "32Mi",
            "parameters": [
                {
                    "name": "megabytes",
                    "type": "int",
                    "optional": True,
                    "default": 1,
                    "flag": "--megabytes",
                }
            ],
        },
        ["host"],
    )
    folder = "home/chris/uploads/mem"
    await _upload_tree(client, tmp_path, folder)
    dircopy = await client.plugin_by_name("pl-dircopy")
    root = await client.create_instance(dircopy.id, {"dir": folder})
    hog = await client.create_instance(
        memhog.id, {"megabytes": "400", "memory_limit": "64Mi"}, previous_id=root.id
    )
    fits = await client.create_instance(
        memhog.id, {"megabytes": "8", "memory_limit": "64Mi"}, previous_id=root.id
    )
    hog_final = await client.wait(hog.id, timeout=120)
    assert hog_final.status is S.FINISHED_WITH_ERROR, (hog_final.status, hog_final.error_message)
    assert hog_final.error_message == "the plugin failed: out of memory (OOMKilled)", hog_final
    fits_final = await client.wait(fits.id, timeout=120)
    assert fits_final.status is S.FINISHED_SUCCESSFULLY, fits_final.error_message
    names = {f.fname.rsplit("/", 1)[-1] for f in await client.instance_files(fits.id)}
    assert "done.txt" in names


@pytest.mark.docker
async def test_over_memory_plugin_on_docker(
    docker_stack: tuple[Stack, CubeClient], tmp_path: Path, docker_engine: Any
) -> None:
    await _over_memory_feed(docker_stack[1], docker_engine, tmp_path)


@pytest.mark.docker
async def test_over_memory_plugin_on_swarm(
    swarm_stack: tuple[Stack, CubeClient], tmp_path: Path, swarm_manager: Any
) -> None:
    await _over_memory_feed(swarm_stack[1], swarm_manager, tmp_path)


async def test_failing_plugin_cancels_its_children(
    local_stack: tuple[Stack, CubeClient], tmp_path: Path
) -> None:
    _stack, client = local_stack
    failing = await client.register_plugin(
        {
            "name": "pl-fail",
            "dock_image": "chris-test/busybox:1",
            "type": "ds",
            "version": "1.0",
            "execshell": "",
            "selfpath": "",
            "selfexec": "false",
            "parameters": [],
        },
        ["host"],
    )
    folder = "home/chris/uploads/f"
    await _upload_tree(client, tmp_path, folder)
    dircopy = await client.plugin_by_name("pl-dircopy")
    simple = await client.plugin_by_name("pl-simpledsapp")
    root = await client.create_instance(dircopy.id, {"dir": folder})
    bad = await client.create_instance(failing.id, previous_id=root.id)
    child = await client.create_instance(simple.id, previous_id=bad.id)
    bad_final = await client.wait(bad.id, timeout=120)
    assert bad_final.status is S.FINISHED_WITH_ERROR
    assert bad_final.summary["compute"]["return"]["job_status"] == "finishedWithError"
    child_final = await client.wait(child.id, timeout=30)
    assert child_final.status is S.CANCELLED and child_final.start_date is None


async def test_cube_restart_carries_on(
    local_stack: tuple[Stack, CubeClient], tmp_path: Path
) -> None:
    stack, client = local_stack
    folder = "home/chris/uploads/r"
    await _upload_tree(client, tmp_path, folder)
    dircopy = await client.plugin_by_name("pl-dircopy")
    simple = await client.plugin_by_name("pl-simpledsapp")
    root = await client.create_instance(dircopy.id, {"dir": folder})
    slow = await client.create_instance(
        simple.id, {"sleepLength": "4", "prefix": "s_"}, previous_id=root.id
    )
    child = await client.create_instance(simple.id, {"prefix": "c_"}, previous_id=slow.id)
    async for inst in client.watch(slow.id, timeout=120):
        if inst.status is S.STARTED:
            break
    await stack.kill("cube")  # crash in the middle of the job
    await stack.start_service("cube")
    final = await client.wait(child.id, timeout=120)
    assert final.status is S.FINISHED_SUCCESSFULLY, (final.error_code, final.error_message)
    names = {f.fname.rsplit("/", 1)[-1] for f in await client.instance_files(child.id)}
    assert "c_s_notes.txt" in names
    slow_final = await client.instance(slow.id)
    assert [h.status for h in slow_final.status_history].count(S.STARTED) == 1


async def test_separate_competing_workers(tmp_path: Path) -> None:
    """The API process runs no scheduler; two worker processes share the work
    through database leases, and no instance is driven twice."""
    from tests.e2e.conftest import running_stack, stack_config

    cfg = stack_config(tmp_path, workers=2, extra_env={"CUBE_LEASE_SECONDS": "5"})
    async for _stack, client in running_stack(cfg):
        folder = "home/chris/uploads/w"
        await _upload_tree(client, tmp_path, folder)
        dircopy = await client.plugin_by_name("pl-dircopy")
        simple = await client.plugin_by_name("pl-simpledsapp")
        roots = [await client.create_instance(dircopy.id, {"dir": folder}) for _ in range(3)]
        leaves = [
            await client.create_instance(simple.id, {"prefix": "w_"}, previous_id=r.id)
            for r in roots
        ]
        for leaf in leaves:
            final = await client.wait(leaf.id, timeout=180)
            assert final.status is S.FINISHED_SUCCESSFULLY, (final.error_code, final.error_message)
        for inst in [*roots, *leaves]:
            history = [h.status for h in (await client.instance(inst.id)).status_history]
            assert history.count(S.STARTED) == 1 and history.count(S.REGISTERING_FILES) == 1
