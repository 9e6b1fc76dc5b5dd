"""Fixtures for CUBE's API tests: an app on a temporary home, no scheduler."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cube.app import create_app
from cube.settings import CubeSettings

ADMIN = ("chris", "chris1234")
#: Test clients ask for DRF JSON; with no Accept (or ``*/*``) CUBE answers in
#: Collection+JSON, ChRIS's default.
JSON_ACCEPT = {"Accept": "application/json"}

FS_DESCRIPTOR: dict[str, Any] = {
    "name": "pl-fscopy",
    "dock_image": "test/pl-fscopy:1.0",
    "type": "fs",
    "version": "1.0",
    "selfexec": "fscopy",
    "execshell": "",
    "selfpath": "",
    "parameters": [
        {"name": "dir", "type": "path", "optional": False, "flag": "--dir", "help": "input"},
    ],
}

DS_DESCRIPTOR: dict[str, Any] = {
    "name": "pl-dsthing",
    "dock_image": "test/pl-dsthing:2.0",
    "type": "ds",
    "version": "2.0",
    "selfexec": "dsthing",
    "execshell": "/usr/bin/python3",
    "selfpath": "/usr/local/bin",
    "max_cpu_limit": "4000m",
    "max_memory_limit": "1Gi",
    "parameters": [
        {"name": "prefix", "type": "str", "optional": True, "default": "", "flag": "--prefix"},
        {"name": "count", "type": "int", "optional": True, "default": 1, "flag": "--count"},
        {
            "name": "verbose",
            "type": "bool",
            "optional": True,
            "default": False,
            "flag": "--verbose",
        },
    ],
}


@pytest.fixture
def cube_settings(tmp_path: Path) -> CubeSettings:
    return CubeSettings(home=tmp_path / "cube", run_scheduler=False)


@pytest.fixture
async def api(aiohttp_client: Callable[..., Any], cube_settings: CubeSettings) -> TestClient:
    return await aiohttp_client(create_app(cube_settings), headers=JSON_ACCEPT)  # type: ignore[no-any-return]


async def token_for(api: TestClient, username: str, password: str) -> dict[str, str]:
    resp = await api.post("/api/v1/auth-token/", json={"username": username, "password": password})
    assert resp.status == 200, await resp.text()
    return {"Authorization": f"Token {(await resp.json())['token']}"}


@pytest.fixture
async def admin(api: TestClient) -> dict[str, str]:
    return await token_for(api, *ADMIN)


@pytest.fixture
async def registered(api: TestClient, admin: dict[str, str]) -> dict[str, int]:
    """A compute resource and the two test plugins; returns plugin ids."""
    resp = await api.post(
        "/chris-admin/api/v1/computeresources/",
        json={
            "name": "site",
            "compute_url": "http://127.0.0.1:9/api/v1/",
            "compute_user": "u",
            "compute_password": "p",
        },
        headers=admin,
    )
    assert resp.status == 201, await resp.text()
    ids = {}
    for desc in (FS_DESCRIPTOR, DS_DESCRIPTOR):
        resp = await api.post(
            "/chris-admin/api/v1/",
            json={"descriptor": desc, "compute_names": "site"},
            headers=admin,
        )
        assert resp.status == 201, await resp.text()
        ids[desc["type"]] = (await resp.json())["id"]
    return ids
