"""The scheduler with an unreachable compute site: it keeps the instance,
says why, and lets the user cancel it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from cube.app import create_app
from cube.settings import CubeSettings
from tests.cube.conftest import ADMIN, FS_DESCRIPTOR, JSON_ACCEPT, token_for
from tests.cube.test_api import upload
from tests.support.components import free_port


async def test_unreachable_site_is_retried_visibly_and_cancellable(
    aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    settings = CubeSettings(
        home=tmp_path / "cube", run_scheduler=True, retry_min_seconds=0.1, retry_max_seconds=0.5
    )
    api: TestClient = await aiohttp_client(create_app(settings), headers=JSON_ACCEPT)
    admin = await token_for(api, *ADMIN)
    dead = f"http://127.0.0.1:{free_port()}/api/v1/"  # nothing listens there
    resp = await api.post(
        "/chris-admin/api/v1/computeresources/",
        json={"name": "dead", "compute_url": dead, "compute_user": "u", "compute_password": "p"},
        headers=admin,
    )
    assert resp.status == 201
    resp = await api.post(
        "/chris-admin/api/v1/",
        json={"descriptor": FS_DESCRIPTOR, "compute_names": "dead"},
        headers=admin,
    )
    plugin_id = (await resp.json())["id"]
    assert (await upload(api, admin, "home/chris/uploads/x/a.txt", b"a")).status == 201
    resp = await api.post(
        f"/api/v1/plugins/{plugin_id}/instances/",
        json={"dir": "home/chris/uploads/x"},
        headers=admin,
    )
    inst = await resp.json()

    async def noted() -> dict[str, Any]:
        while True:
            body = await (
                await api.get(f"/api/v1/plugins/instances/{inst['id']}/", headers=admin)
            ).json()
            if body["error_message"]:
                return body  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)

    body = await asyncio.wait_for(noted(), 20)
    assert body["status"] == "scheduled" and "unreachable" in body["error_message"]

    resp = await api.put(
        f"/api/v1/plugins/instances/{inst['id']}/", json={"status": "cancelled"}, headers=admin
    )
    assert (await resp.json())["status"] == "cancelled"
    await asyncio.sleep(0.3)  # let the scheduler react; it must not resurrect the instance
    body = await (await api.get(f"/api/v1/plugins/instances/{inst['id']}/", headers=admin)).json()
    assert body["status"] == "cancelled" and body["start_date"] is None
