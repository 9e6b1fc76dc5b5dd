"""End to end on PostgreSQL: CUBE's API and two scheduler workers as real
processes sharing a real PostgreSQL server, one of them killed (SIGKILL) in
the middle of a job; the other takes the job over once the lease lapses,
finds it already at the site (no second submission) and finishes the feed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlmodel import select

from cube.client import CubeClient
from cube.db.engine import make_engine, make_sessionmaker
from cube.db.models import PluginInstance
from cube.schema import InstanceStatus
from tests.e2e.conftest import running_stack, stack_config

pytestmark = pytest.mark.slow

S = InstanceStatus
LEASE = 3.0


async def _lease_owner(url: str, inst_id: int) -> str | None:
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as s:
            inst = (await s.exec(select(PluginInstance).where(PluginInstance.id == inst_id))).one()
            return inst.lease_owner
    finally:
        await engine.dispose()


async def _taken_over(client: CubeClient, url: str, inst_id: int, worker: str) -> None:
    """Return once ``worker`` holds the instance's lease (or the instance moved on)."""
    while await _lease_owner(url, inst_id) != worker:
        if (await client.instance(inst_id)).status is not S.STARTED:
            return  # already finished by the other worker
        await asyncio.sleep(0.2)


async def test_killed_worker_is_taken_over(tmp_path: Path, postgres_url: str) -> None:
    cfg = stack_config(
        tmp_path,
        workers=2,
        extra_env={
            "CUBE_DATABASE_URL": postgres_url,
            "CUBE_LEASE_SECONDS": str(LEASE),
            "CUBE_SWEEP_SECONDS": "0.5",
        },
    )
    async for stack, client in running_stack(cfg):
        data = tmp_path / "in.txt"
        data.write_bytes(b"survives a killed worker\n")
        await client.upload(data, "home/chris/uploads/k/in.txt")
        dircopy = await client.plugin_by_name("pl-dircopy")
        simple = await client.plugin_by_name("pl-simpledsapp")
        root = await client.create_instance(dircopy.id, {"dir": "home/chris/uploads/k"})
        slow = await client.create_instance(
            simple.id, {"sleepLength": "6", "prefix": "s_"}, previous_id=root.id
        )
        child = await client.create_instance(simple.id, {"prefix": "c_"}, previous_id=slow.id)
        async for inst in client.watch(slow.id, timeout=120):
            if inst.status is S.STARTED:
                break
        owner = await _lease_owner(postgres_url, slow.id)
        assert owner in ("cube-worker-0", "cube-worker-1"), owner
        await stack.kill(owner)  # SIGKILL while its job runs at the site
        other = "cube-worker-1" if owner == "cube-worker-0" else "cube-worker-0"
        await asyncio.wait_for(_taken_over(client, postgres_url, slow.id, other), LEASE * 4)

        final = await client.wait(child.id, timeout=120)
        assert final.status is S.FINISHED_SUCCESSFULLY, (final.error_code, final.error_message)
        slow_final = await client.instance(slow.id)
        assert slow_final.status is S.FINISHED_SUCCESSFULLY
        history = [h.status for h in slow_final.status_history]
        assert history.count(S.STARTED) == 1 and history.count(S.REGISTERING_FILES) == 1
        names = {f.fname.rsplit("/", 1)[-1] for f in await client.instance_files(child.id)}
        assert names == {"c_s_in.txt"}
        log = stack.tail(other, 200)
        assert "Traceback" not in log, log
