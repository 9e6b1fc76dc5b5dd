"""pfcon's aiohttp application: ``create_app(settings) -> web.Application``.

The app owns one :class:`pfioh.client.PfiohClient` and one
:class:`pman.client.PmanClient` (opened and closed by ``cleanup_ctx``) behind a
:class:`pfcon.coordinator.Coordinator`; in in-network mode also the
:class:`pfcon.innetwork.SharedStorage` at ``PFCON_STOREBASE``. Two
middlewares: errors (outermost) render :class:`pfcon.errors.PfconError` as
``{"message", "code"}``; auth requires a bearer token everywhere but
``/health/`` and ``/auth-token/``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from http import HTTPStatus

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import SecretStr

from pfcon.api import PUBLIC_ROUTES, add_routes
from pfcon.auth import TokenAuthority
from pfcon.coordinator import Coordinator
from pfcon.errors import PfconError
from pfcon.innetwork import SharedStorage
from pfcon.keys import AUTHORITY_KEY, COORDINATOR_KEY, SETTINGS_KEY
from pfcon.schema import ErrorBody
from pfcon.settings import PfconSettings
from pfioh.client import PfiohClient
from pman.client import PmanClient

log = logging.getLogger(__name__)


def _error_response(status: int, message: str, code: str) -> web.Response:
    return web.json_response(ErrorBody(message=message, code=code).model_dump(), status=status)


def _response_started(request: web.Request) -> bool:
    """True once bytes of a (streamed) response were sent: no error body can follow."""
    return request.writer is not None and request.writer.output_size > 0


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render :class:`PfconError` and HTTP errors as ``{"message", "code"}``; 500 for the rest.

    Unknown exceptions are logged and answered without their details. If a
    streamed response had begun, the exception is re-raised so aiohttp drops
    the connection and the client sees a truncated transfer, never a
    corrupt one.
    """
    try:
        return await handler(request)
    except PfconError as exc:
        if _response_started(request):
            log.warning("%s %s failed while streaming: %s", request.method, request.path, exc)
            raise
        return _error_response(exc.status, exc.message, exc.code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = HTTPStatus(exc.status).phrase.lower().replace(" ", "_")
        response = _error_response(exc.status, exc.reason, code)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        if _response_started(request):
            raise
        return _error_response(500, "internal server error", PfconError.code)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require a valid ``Authorization: Bearer <jwt>`` except on public routes (401 otherwise)."""
    route = request.match_info.route
    if route.name not in PUBLIC_ROUTES:
        request.app[AUTHORITY_KEY].verify_header(request.headers.get("Authorization"))
    return await handler(request)


def create_app(settings: PfconSettings | None = None) -> web.Application:
    """A pfcon application configured by ``settings`` (default: from ``PFCON_*`` env)."""
    settings = settings or PfconSettings()
    if settings.uses_default_secret_key:
        log.warning(
            "PFCON_SECRET_KEY is not set: tokens are signed with the public development "
            "key and can be forged; set a secret key for any real deployment"
        )
    app = web.Application(middlewares=[error_middleware, auth_middleware])
    app[SETTINGS_KEY] = settings
    app[AUTHORITY_KEY] = TokenAuthority(
        user=settings.pfcon_user,
        password=settings.pfcon_password.get_secret_value(),
        secret_key=settings.secret_key.get_secret_value(),
        lifetime=settings.token_lifetime_seconds,
    )
    app.cleanup_ctx.append(_services)
    add_routes(app)
    return app


async def _services(app: web.Application) -> AsyncIterator[None]:
    """Create the spool dir; open the pfioh and pman clients for the app's lifetime."""
    settings = app[SETTINGS_KEY]
    if settings.spool_dir is not None:
        await asyncio.to_thread(settings.spool_dir.mkdir, parents=True, exist_ok=True)
    shared = None
    if settings.innetwork:
        assert settings.storebase is not None  # the settings refuse in-network without it
        shared = SharedStorage(settings.storebase)
        log.info(
            "in-network mode (storage_env %s): job dirs are used in place under %s",
            settings.storage_env.value,
            shared.root,
        )
    async with AsyncExitStack() as stack:
        pfioh = await stack.enter_async_context(
            PfiohClient(
                settings.pfioh_url,
                token=_secret(settings.pfioh_token),
                timeout=settings.pfioh_timeout_seconds,
            )
        )
        pman = await stack.enter_async_context(
            PmanClient(
                settings.pman_url,
                token=_secret(settings.pman_token),
                timeout=settings.pman_timeout_seconds,
            )
        )
        app[COORDINATOR_KEY] = Coordinator(
            pfioh,
            pman,
            max_status_wait=settings.max_status_wait_seconds,
            shared=shared,
        )
        yield


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
