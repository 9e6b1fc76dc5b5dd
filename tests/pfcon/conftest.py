"""A whole compute site for pfcon's tests: real pfioh, pman (local backend) and pfcon.

Each server runs on its own free loopback port; pfioh and pman share a
temporary storebase, as they do at a real site.
"""

from __future__ import annotations

import asyncio
import io
import sys
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from pfcon.app import create_app as create_pfcon
from pfcon.client import PfconClient
from pfcon.schema import JobDescriptor, JobInfo, PluginType
from pfcon.settings import PfconSettings
from pfioh.app import create_app as create_pfioh
from pfioh.archive import aiter_sync, zip_directory
from pfioh.settings import PfiohSettings
from pman.app import create_app as create_pman
from pman.settings import PmanSettings
from tests.support.components import free_port

USER = "pfcon-test"
PASSWORD = "correct horse battery staple"
SECRET = "a-test-secret-key-that-is-long-enough-for-hs256"

#: A ds plugin that copies every file under argv[-2] to argv[-1], prefixing
#: each file name with the value of ``--prefix``. If $WAIT_FOR names a file, it
#: first waits (at most 30 s) for that file to exist, so tests can hold a job
#: in "started".
COPY_SCRIPT = """
import os, pathlib, shutil, sys, time
gate = os.environ.get("WAIT_FOR")
deadline = time.monotonic() + 30
while gate and not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.02)
prefix = sys.argv[sys.argv.index("--prefix") + 1]
src, dst = pathlib.Path(sys.argv[-2]), pathlib.Path(sys.argv[-1])
for f in src.rglob("*"):
    if f.is_file():
        rel = f.relative_to(src)
        target = dst / rel.parent / (prefix + rel.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
print("copied")
"""


@dataclass
class Site:
    """URLs of a running site and its shared storebase."""

    pfcon_url: str
    pfioh_url: str
    pman_url: str
    storebase: Path

    def client(self, *, password: str = PASSWORD) -> PfconClient:
        """A pfcon client for the test user (it logs in on first use)."""
        return PfconClient(self.pfcon_url, username=USER, password=password)


async def serve(stack: AsyncExitStack, app: web.Application, *, port: int | None = None) -> str:
    """Run ``app`` on loopback (a free port by default) until ``stack`` closes.

    Returns the app's ``/api/v1/`` URL.
    """
    runner = web.AppRunner(app)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    port = port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}/api/v1/"


def pfcon_settings(pfioh_url: str, pman_url: str, **overrides: object) -> PfconSettings:
    """pfcon settings for the test credentials, pointing at the given services."""
    fields: dict[str, object] = {
        "pfcon_user": USER,
        "pfcon_password": PASSWORD,
        "secret_key": SECRET,
        "pfioh_url": pfioh_url,
        "pman_url": pman_url,
    }
    return PfconSettings.model_validate({**fields, **overrides})


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """pfioh + pman (local backend) + pfcon, sharing ``tmp_path/storebase``."""
    storebase = tmp_path / "storebase"
    async with AsyncExitStack() as stack:
        pfioh_url = await serve(stack, create_pfioh(PfiohSettings(storebase=storebase)))
        pman_url = await serve(
            stack,
            create_pman(
                PmanSettings(
                    storebase=storebase,
                    data_dir=tmp_path / "pman",
                    kill_grace_seconds=1,
                    local_gpus=[],  # the same refusals on hosts with GPUs
                )
            ),
        )
        pfcon_url = await serve(
            stack,
            create_pfcon(
                pfcon_settings(
                    pfioh_url,
                    pman_url,
                    spool_dir=tmp_path / "spool",
                    max_status_wait_seconds=30.0,
                )
            ),
        )
        yield Site(pfcon_url, pfioh_url, pman_url, storebase)


@pytest.fixture
def input_tree(tmp_path: Path) -> Path:
    """A small input directory: nested files, one spanning several 1 MiB chunks."""
    root = tmp_path / "input"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.dcm").write_bytes(bytes(range(256)) * 64)
    (root / "sub" / "deeper" / "big.bin").write_bytes(b"0123456789abcdef" * (3 * 65536 + 7))
    return root


def expected_outputs(root: Path, prefix: str) -> dict[str, bytes]:
    """What :data:`COPY_SCRIPT` makes of ``root``: archive name → contents."""
    out: dict[str, bytes] = {}
    for f in root.rglob("*"):
        if f.is_file():
            rel = f.relative_to(root)
            out[(rel.parent / f"{prefix}{rel.name}").as_posix()] = f.read_bytes()
    return out


def zip_chunks(root: Path) -> AsyncIterator[bytes]:
    """``root`` zipped by pfioh's archive module, produced lazily off the event loop."""
    return aiter_sync(zip_directory(root))


def zip_bytes_of(build: Callable[[zipfile.ZipFile], None]) -> bytes:
    """A small zip built in memory by ``build`` (for hand-made, e.g. malicious, archives)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        build(zf)
    return buf.getvalue()


async def once(data: bytes) -> AsyncIterator[bytes]:
    """``data`` as a one-chunk async stream."""
    yield data


def copy_job(jid: str, **overrides: object) -> JobDescriptor:
    """A ds job running :data:`COPY_SCRIPT` with this interpreter."""
    fields: dict[str, object] = {
        "jid": jid,
        "args": ["--prefix", "out-"],
        "auid": "cube",
        "image": "local/python",
        "entrypoint": [sys.executable, "-c", COPY_SCRIPT],
        "type": PluginType.DS,
        "env": ["CHRIS_JID=" + jid],
    }
    fields.update(overrides)
    return JobDescriptor.model_validate(fields)


async def wait_until_terminal(client: PfconClient, jid: str, *, limit: float = 60.0) -> JobInfo:
    """Long-poll the job until it finishes (bounded by ``limit`` seconds)."""
    info = await client.status(jid)
    async with asyncio.timeout(limit):
        while not info.status.is_terminal:
            info = await client.status(jid, wait=10, known=info.status)
    return info


@pytest.fixture
def jids() -> Iterator[Callable[[], str]]:
    """A maker of fresh job ids."""
    counter = iter(range(1, 1_000_000))

    def make() -> str:
        return f"chris-jid-{next(counter)}"

    yield make


#: A form part for :func:`post_form`: (name, value); bytes values are sent as a zip file.
Part = tuple[str, str | bytes]


async def post_form(site: Site, token: str, parts: list[Part]) -> tuple[int, dict[str, object]]:
    """POST a hand-made multipart form to ``jobs/``, parts in the given order.

    Returns the status and the JSON body. Lets tests send what the real
    client never would (missing fields, wrong types, the file first).
    """
    form = aiohttp.MultipartWriter("form-data")
    for name, value in parts:
        if isinstance(value, bytes):
            part = form.append(value, {"Content-Type": "application/zip"})
            part.set_content_disposition("form-data", name=name, filename="data.zip")
        else:
            part = form.append(value)
            part.set_content_disposition("form-data", name=name)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            site.pfcon_url + "jobs/", data=form, headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        return resp.status, await resp.json()


def job_parts(job: JobDescriptor) -> list[Part]:
    """The form fields of ``job``, as the real client sends them (without the file)."""
    parts: list[Part] = []
    for name, value in job.model_dump(mode="json").items():
        for item in value if isinstance(value, list) else [value]:
            parts.append((name, str(item)))
    return parts
