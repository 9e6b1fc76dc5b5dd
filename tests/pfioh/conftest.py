"""Fixtures of pfioh's suite: a real pfioh server on a free loopback port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pfioh.app import create_app
from pfioh.settings import PfiohSettings


@dataclass
class RunningPfioh:
    """A started server: its API base URL and where it stores data."""

    base_url: str
    storebase: Path
    settings: PfiohSettings

    def key_dir(self, jid: str) -> Path:
        return self.storebase / f"key-{jid}"

    def leftovers(self, jid: str) -> list[str]:
        """Everything left under the job's key dir."""
        found: list[str] = []
        key = self.key_dir(jid)
        if key.exists():
            found += [str(p.relative_to(self.storebase)) for p in key.rglob("*")] or [key.name]
        return found


StartPfioh = Callable[..., Awaitable[RunningPfioh]]


@pytest.fixture
async def start_pfioh(aiohttp_server: Any, tmp_path: Path) -> StartPfioh:
    """Start a pfioh server with the given setting overrides (storebase under tmp_path)."""

    async def start(**overrides: Any) -> RunningPfioh:
        settings = PfiohSettings(storebase=tmp_path / "store", **overrides)
        server = await aiohttp_server(create_app(settings))
        return RunningPfioh(
            base_url=str(server.make_url("/api/v1/")),
            storebase=(tmp_path / "store").resolve(),
            settings=settings,
        )

    return start


@pytest.fixture
async def pfioh(start_pfioh: StartPfioh) -> RunningPfioh:
    """A pfioh server with default settings."""
    return await start_pfioh()
