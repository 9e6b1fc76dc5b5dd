"""The raw baseline of the transfer benchmark: a minimal HTTP sink and source.

Run as its own process (``python bench/_transfer_raw.py --port P --root DIR``),
it serves

* ``POST /sink``: reads the body and discards it; answers the byte count;
* ``GET /source?files=<list file>``: streams the files named (one path per
  line, relative to ``DIR``) concatenated, read from disk.

Both use aiohttp, the HTTP stack of the services, with no zip, no spool and
no unpacking: what HTTP over loopback can do with the same bytes, the
yardstick of the fabric's push and pull. :func:`upload` and :func:`download`
are the client side.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

#: Bytes read from disk or the socket at a time (1 MiB, as the services use).
CHUNK = 1 << 20

ROOT_KEY = web.AppKey("root", Path)


async def sink(request: web.Request) -> web.Response:
    """``POST /sink``: count and drop the body."""
    n = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        n += len(chunk)
    return web.json_response({"bytes": n})


async def source(request: web.Request) -> web.StreamResponse:
    """``GET /source?files=...``: the listed files, concatenated."""
    root = request.app[ROOT_KEY]
    names = (root / request.query["files"]).read_text().splitlines()
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(request)
    for name in names:
        # blocking reads on the loop: the files are in the page cache and this
        # server does nothing else, so a thread hop would only add cost
        with (root / name).open("rb") as f:
            while chunk := f.read(CHUNK):
                await resp.write(chunk)
    await resp.write_eof()
    return resp


def create_app(root: Path) -> web.Application:
    """The sink and source app serving files under ``root``."""
    app = web.Application(client_max_size=1 << 40)
    app[ROOT_KEY] = root
    app.router.add_post("/sink", sink)
    app.router.add_get("/source", source)
    app.router.add_get("/health", health)
    return app


async def health(request: web.Request) -> web.Response:
    """``GET /health``: the server is up."""
    return web.Response(text="OK")


async def _file_chunks(paths: list[Path]) -> AsyncIterator[bytes]:
    # blocking reads, for the reason given in source()
    for path in paths:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk


async def upload(url: str, paths: list[Path]) -> tuple[float, int]:
    """POST the files concatenated to the sink at ``url``; (seconds, bytes the sink counted)."""
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.post(url + "sink", data=_file_chunks(paths)) as resp:
            resp.raise_for_status()
            counted = int((await resp.json())["bytes"])
        return time.perf_counter() - started, counted


async def download(url: str, list_file: str) -> tuple[float, int]:
    """GET the files listed in ``list_file`` (relative to the server's root) and drop
    them; (seconds, bytes received)."""
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        n = 0
        async with session.get(url + "source", params={"files": list_file}) as resp:
            resp.raise_for_status()
            async for chunk in resp.content.iter_chunked(CHUNK):
                n += len(chunk)
        return time.perf_counter() - started, n


def main() -> None:
    """Serve the sink and source until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    web.run_app(create_app(args.root), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
