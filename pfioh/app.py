"""pfioh's HTTP API (aiohttp).

Routes (all JSON but the zip bodies; errors are ``{"message", "code"}``)::

    GET    /api/v1/                      ServerInfo
    GET    /api/v1/health/               {"health": "OK"}       (never needs a token)
    POST   /api/v1/jobs/<jid>/incoming/  zip body -> 201 IncomingReport
    GET    /api/v1/jobs/<jid>/outgoing/  -> zip of outgoing/
    GET    /api/v1/jobs/<jid>/           JobDataStatus
    DELETE /api/v1/jobs/<jid>/           204 (idempotent)

Handlers only parse and serialise; the work is done by :class:`JobStore`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from importlib import metadata

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware
from pydantic import BaseModel

from pfioh.archive import CompressionPolicy
from pfioh.errors import (
    IncompleteUpload,
    PfiohError,
    Unauthorized,
    UnsupportedMediaType,
)
from pfioh.schema import ErrorBody, Health, ServerInfo
from pfioh.settings import PfiohSettings
from pfioh.store import JobStore, parse_key

log = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("pfioh_settings", PfiohSettings)
STORE_KEY = web.AppKey("pfioh_store", JobStore)

API_PREFIX = "/api/v1"
HEALTH_PATH = f"{API_PREFIX}/health/"

# What a zip upload may be labelled as; aiohttp reports a missing
# Content-Type as application/octet-stream.
_ZIP_TYPES = frozenset(
    {"application/zip", "application/x-zip-compressed", "application/octet-stream"}
)

# How aiohttp reports a body cut short: a lost connection, or a body shorter
# than its Content-Length / a broken chunked encoding.
_BROKEN_BODY = (OSError, ClientPayloadError, HttpProcessingError)


class _StreamBroken(Exception):
    """A response failed after its headers were sent; the connection must drop.

    A JSON error can no longer be sent then; aiohttp closes the connection,
    so the client sees a truncated transfer rather than a short, valid zip.
    """


def _server_version() -> str:
    try:
        return metadata.version("chris-fabric")
    except metadata.PackageNotFoundError:
        return "0+unknown"


#: Read once: package metadata lives on disk.
SERVER_VERSION = _server_version()


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


def _error(message: str, code: str, status: int) -> web.Response:
    return _json(ErrorBody(message=message, code=code), status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map :class:`PfiohError` (and aiohttp's own HTTP errors) to the JSON error body.

    Unknown exceptions become a 500 whose body reveals nothing; they are logged.
    """
    try:
        return await handler(request)
    except PfiohError as exc:
        level = logging.ERROR if exc.status >= 500 else logging.INFO
        log.log(
            level, "%s %s -> %d %s: %s", request.method, request.path, exc.status, exc.code, exc
        )
        return _error(exc.message, exc.code, exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.reason, f"http_{exc.status}", exc.status)
    except _StreamBroken:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error("internal server error", "internal_error", 500)


def auth_middleware(token: str) -> Middleware:
    """Require ``Authorization: Bearer <token>`` everywhere except the health check."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != HEALTH_PATH:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            # compare_digest: the time taken must not reveal how much matched.
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), token.encode()
            ):
                raise Unauthorized("missing or invalid bearer token")
        return await handler(request)

    return middleware


# -- handlers ------------------------------------------------------------------


async def server_info(request: web.Request) -> web.Response:
    """``GET /api/v1/``: version and storebase."""
    store = request.app[STORE_KEY]
    return _json(ServerInfo(server_version=SERVER_VERSION, storebase=str(store.storebase)))


async def health(request: web.Request) -> web.Response:
    """``GET /api/v1/health/``: liveness, no token needed."""
    return _json(Health())


async def push_incoming(request: web.Request) -> web.Response:
    """``POST /api/v1/jobs/<jid>/incoming/``: the zip body becomes the job's input."""
    jid = parse_key(request.match_info["jid"])
    if request.content_type not in _ZIP_TYPES:
        raise UnsupportedMediaType(
            f"the body must be a zip archive (application/zip), not {request.content_type}"
        )
    store = request.app[STORE_KEY]
    body = _read_body(request, store.chunk_size)
    report = await store.receive_incoming(jid, body, declared_size=request.content_length)
    return _json(report, status=201)


async def _read_body(request: web.Request, chunk_size: int) -> AsyncIterator[bytes]:
    """The request body in chunks; a broken transfer becomes :class:`IncompleteUpload`."""
    try:
        async for chunk in request.content.iter_chunked(chunk_size):
            yield chunk
    except _BROKEN_BODY as exc:
        raise IncompleteUpload(f"the upload was interrupted: {exc}") from exc


async def pull_outgoing(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/jobs/<jid>/outgoing/``: the job's output as a streamed zip."""
    jid = parse_key(request.match_info["jid"])
    store = request.app[STORE_KEY]
    chunks = await store.outgoing_zip(jid)
    async with contextlib.aclosing(chunks):
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="{jid}.zip"',
            }
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            async for chunk in chunks:
                await resp.write(chunk)
        except Exception as exc:
            log.warning("job %s: output stream broken: %s", jid, exc)
            raise _StreamBroken(str(exc)) from exc
        await resp.write_eof()
    return resp


async def job_status(request: web.Request) -> web.Response:
    """``GET /api/v1/jobs/<jid>/``: what pfioh holds for the job."""
    jid = parse_key(request.match_info["jid"])
    return _json(await request.app[STORE_KEY].status(jid))


async def delete_job(request: web.Request) -> web.Response:
    """``DELETE /api/v1/jobs/<jid>/``: remove the job's data (204 even if absent)."""
    jid = parse_key(request.match_info["jid"])
    await request.app[STORE_KEY].delete(jid)
    return web.Response(status=204)


# -- factory -------------------------------------------------------------------


def create_app(settings: PfiohSettings | None = None) -> web.Application:
    """Build the pfioh application.

    The storebase is created (and uploads a crash left incomplete removed)
    when the app starts, through ``cleanup_ctx``.
    """
    settings = settings if settings is not None else PfiohSettings()
    middlewares: list[Middleware] = [error_middleware]
    if settings.api_token is not None:
        middlewares.append(auth_middleware(settings.api_token.get_secret_value()))
    app = web.Application(middlewares=middlewares)
    app[SETTINGS_KEY] = settings
    storebase = settings.storebase.expanduser().resolve()
    app[STORE_KEY] = JobStore(
        storebase,
        max_upload_bytes=settings.max_upload_bytes,
        limits=settings.extract_limits(),
        policy=CompressionPolicy(
            level=settings.compression_level, adaptive=settings.adaptive_compression
        ),
        chunk_size=settings.chunk_size,
    )
    app.cleanup_ctx.append(_open_store)
    app.router.add_get(f"{API_PREFIX}/", server_info)
    app.router.add_get(HEALTH_PATH, health)
    app.router.add_post(f"{API_PREFIX}/jobs/{{jid}}/incoming/", push_incoming)
    app.router.add_get(f"{API_PREFIX}/jobs/{{jid}}/outgoing/", pull_outgoing)
    app.router.add_get(f"{API_PREFIX}/jobs/{{jid}}/", job_status)
    app.router.add_delete(f"{API_PREFIX}/jobs/{{jid}}/", delete_job)
    return app


async def _open_store(app: web.Application) -> AsyncIterator[None]:
    """Prepare the store's directories for the app's lifetime."""
    await app[STORE_KEY].open()
    yield
