"""End to end: transfers cut in the middle are retried and leave nothing behind.

A proxy between CUBE and pfcon cuts the first upload of each job's input
and the first download of each job's output after a few hundred KiB. CUBE
must retry both with backoff, pfioh must never show a half-received input,
and the feed's files must arrive byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from cube.cli.stack import Stack, reference_descriptor
from cube.client import CubeClient
from cube.schema import InstanceStatus
from tests.support.components import free_port

pytestmark = pytest.mark.slow

#: Bytes let through before a connection is cut.
CUT_AFTER = 300_000
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


class CuttingProxy:
    """Forwards to pfcon; cuts the first submission and first output download of each job."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.seen: Counter[str] = Counter()
        self.cut: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        kind = _kind(request)
        self.seen[kind] += 1
        cut_now = kind in ("submit", "output") and self.seen[kind] % 2 == 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        if cut_now and kind == "submit":
            # Take part of the upload, then drop the connection under the sender.
            await request.content.readexactly(min(CUT_AFTER, request.content_length or CUT_AFTER))
            self.cut[kind] += 1
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError("cut by the test proxy")
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=request.content if request.body_exists else None,
        ) as up:
            resp = web.StreamResponse(
                status=up.status,
                headers={k: v for k, v in up.headers.items() if k.lower() not in _HOP_HEADERS},
            )
            await resp.prepare(request)
            sent = 0
            async for chunk in up.content.iter_chunked(64 * 1024):
                await resp.write(chunk)
                sent += len(chunk)
                if cut_now and kind == "output" and sent >= CUT_AFTER:
                    self.cut[kind] += 1
                    raise ConnectionResetError("cut by the test proxy")
            await resp.write_eof()
            return resp

    async def serve(self) -> AsyncIterator[str]:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}/api/v1/"
        finally:
            await runner.cleanup()
            await self._session.close()


def _kind(request: web.Request) -> str:
    if request.method == "POST" and request.path == "/api/v1/jobs/":
        return "submit"
    if request.method == "GET" and request.path.endswith("/file/"):
        return "output"
    return "other"


async def test_cut_transfers_are_retried_and_leave_nothing(
    local_stack: tuple[Stack, CubeClient], tmp_path: Path
) -> None:
    stack, client = local_stack
    cfg = stack.config
    proxy = CuttingProxy(cfg.pfcon_url.removesuffix("/api/v1/"))
    async for url in proxy.serve():
        await client.add_compute_resource("flaky", url, cfg.pfcon_user, cfg.pfcon_password)
        ids = {}
        for script in ("dircopy", "simpledsapp"):
            desc = await asyncio.to_thread(reference_descriptor, script)
            ids[script] = (await client.register_plugin(desc, ["flaky"])).id

        # Random (stored) and text (deflated) files, several times CUT_AFTER in all.
        tree = {
            "scan/a.bin": os.urandom(700_000),
            "scan/b.txt": b"slice 1 of 2, -1000 HU\n" * 40_000,
            "scan/nested/c.bin": os.urandom(500_000),
        }
        for rel, data in tree.items():
            local = tmp_path / "up" / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            await client.upload(local, f"home/chris/uploads/cut/{rel}")

        root = await client.create_instance(
            ids["dircopy"], {"dir": "home/chris/uploads/cut"}, compute_resource_name="flaky"
        )
        child = await client.create_instance(
            ids["simpledsapp"], {"prefix": "p_"}, previous_id=root.id, compute_resource_name="flaky"
        )
        final = await client.wait(child.id, timeout=180)
        assert final.status is InstanceStatus.FINISHED_SUCCESSFULLY, final.error_message

        files = await client.instance_files(child.id)
        got = {f.fname.removeprefix(final.output_path + "/"): f for f in files}
        expected = {
            f"{rel.rsplit('/', 1)[0]}/p_{rel.rsplit('/', 1)[1]}": data for rel, data in tree.items()
        }
        assert set(got) == set(expected)
        for rel, f in got.items():
            dest = tmp_path / "down" / rel
            await client.download(f.file_resource, dest)
            assert (
                hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(expected[rel]).digest()
            )

        # Each of the two jobs lost its first upload and its first download.
        assert proxy.cut == Counter({"submit": 2, "output": 2})
        assert proxy.seen["submit"] == 4 and proxy.seen["output"] == 4

    # Nothing half received anywhere: no hidden upload dirs at the site, no
    # staging dirs left in CUBE's storage.
    store = cfg.home / "site" / "store"
    assert list(store.glob("key-*/.incoming-*")) == []
    assert not any((cfg.home / "cube").rglob(".staging/*"))
