"""Real pman servers on free loopback ports, and the real client talking to them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from chris_sdk.descriptor import PluginType

from pman.app import create_app
from pman.client import PmanClient
from pman.schema import JobInfo, JobSpec
from pman.settings import PmanSettings
from tests.support.components import free_port

#: Waits (at most 30 s) until the file named by $GATE exists, when set, then
#: prints to stdout and stderr and exits with $EXIT (default 0). Lets tests
#: hold a job in "started" and release it when they want.
GATE_SCRIPT = """
import os, sys, time
gate = os.environ.get("GATE")
deadline = time.monotonic() + 30
while gate and not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.01)
print("to stdout", flush=True)
print("to stderr", file=sys.stderr, flush=True)
sys.exit(int(os.environ.get("EXIT", "0")))
"""

#: A ds plugin copying its input dir (argv[-2]) into its output dir (argv[-1]).
COPY_SCRIPT = "import shutil, sys; shutil.copytree(sys.argv[-2], sys.argv[-1], dirs_exist_ok=True)"


def python_spec(jid: str, code: str, **fields: Any) -> JobSpec:
    """A JobSpec running ``python -c code`` with this interpreter."""
    values: dict[str, Any] = {
        "jid": jid,
        "image": "local/python",
        "entrypoint": [sys.executable, "-c", code],
        "type": PluginType.FS,
        "input_dir": f"key-{jid}/incoming",
        "output_dir": f"key-{jid}/outgoing",
    }
    values.update(fields)
    return JobSpec(**values)


async def wait_terminal(client: PmanClient, jid: str, limit: float = 30) -> JobInfo:
    """Long-poll until the job is finished (bounded by ``limit`` seconds)."""
    async with asyncio.timeout(limit):
        info = await client.get(jid)
        while not info.status.is_terminal:
            info = await client.get(jid, wait=10, known=info.status)
        return info


@asynccontextmanager
async def running_pman(settings: PmanSettings) -> AsyncIterator[str]:
    """Serve pman on a free loopback port; yields the API base URL."""
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/api/v1/"
    finally:
        await runner.cleanup()


@dataclass
class Pman:
    """A running pman with a client."""

    url: str
    client: PmanClient
    settings: PmanSettings


def _kill_leftovers(data_dir: Path) -> None:
    # a failed test must not leave sleeping jobs behind
    for pid_file in data_dir.glob("jobs/*/pid"):
        with contextlib.suppress(ValueError, OSError):
            os.killpg(read_pid(pid_file), signal.SIGKILL)


@pytest.fixture
def make_settings(tmp_path: Path) -> Iterator[Callable[..., PmanSettings]]:
    """Build local-backend settings under ``tmp_path``; overrides as keywords."""

    def make(**overrides: Any) -> PmanSettings:
        values: dict[str, Any] = {
            "storebase": tmp_path / "store",
            "data_dir": tmp_path / "pman",
            "kill_grace_seconds": 1,
            "max_wait_seconds": 30,
            # no GPUs unless a test declares some, whatever the host has
            "local_gpus": [],
        }
        values.update(overrides)
        return PmanSettings(**values)

    yield make
    _kill_leftovers(tmp_path / "pman")


@pytest.fixture
async def pman(make_settings: Callable[..., PmanSettings]) -> AsyncIterator[Pman]:
    """A pman server (local backend) with a connected client."""
    settings = make_settings()
    async with running_pman(settings) as url, PmanClient(url) as client:
        yield Pman(url, client, settings)


def read_pid(pid_file: Path) -> int:
    """The runner's pid from a job's ``pid`` file (``"<pid> <start time>"``)."""
    return int(pid_file.read_text().split()[0])


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (gone, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


async def wait_for(predicate: Callable[[], bool], limit: float = 10) -> None:
    """Wait until ``predicate()`` holds, failing after ``limit`` seconds."""
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0.02)
