"""pman's aiohttp application: routes, thin handlers, error and auth middleware.

Routes (reference §4, JSON bodies, errors as ``{"message", "code"}``)::

    GET    /api/v1/                 ServerInfo
    GET    /api/v1/health/          {"health": "OK"}          (never needs a token)
    GET    /api/v1/jobs/            [JobInfo] without logs
    POST   /api/v1/                 JobSpec -> 201 JobInfo
    GET    /api/v1/{jid}/           JobInfo with logs; ?wait=S&status=X long-polls
    DELETE /api/v1/{jid}/           204
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import TypeAdapter, ValidationError

from pman.backends.base import Backend
from pman.backends.registry import create_backend
from pman.errors import BadRequest, InvalidJob, PmanError, Unauthorized
from pman.schema import ErrorBody, Health, JobId, JobInfo, JobSpec, JobStatus, ServerInfo
from pman.settings import PmanSettings

log = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("settings", PmanSettings)
BACKEND_KEY = web.AppKey("backend", Backend)

API_PREFIX = "/api/v1"
_JOB_LIST = TypeAdapter(list[JobInfo])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@functools.cache
def server_version() -> str:
    """The installed version of the project, ``0.0.0`` when not installed."""
    try:
        return version("chris-fabric")
    except PackageNotFoundError:
        return "0.0.0"


# -- middleware -----------------------------------------------------------------------


def _error_response(status: int, message: str, code: str) -> web.Response:
    return web.json_response(
        text=ErrorBody(message=message, code=code).model_dump_json(), status=status
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map PmanError (and aiohttp's HTTP errors) to ``{"message", "code"}`` bodies.

    Any other exception is logged and answered with a 500 that leaks nothing.
    """
    try:
        return await handler(request)
    except PmanError as exc:
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, exc.message)
        return _error_response(exc.status, exc.message, exc.code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else f"http_{exc.status}"
        return _error_response(exc.status, exc.reason, code)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error_response(500, "internal server error", PmanError.code)


def _auth_middleware(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Require ``Authorization: Bearer <api_token>`` everywhere but health."""
        if request.path != f"{API_PREFIX}/health/":
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise Unauthorized("missing or invalid bearer token")
        return await handler(request)

    return auth_middleware


# -- request parsing ------------------------------------------------------------------


def _summarise(exc: ValidationError, limit: int = 8) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "invalid job spec: " + "; ".join(parts)


def parse_spec(body: bytes) -> JobSpec:
    """A JobSpec from a request body.

    Raises:
        BadRequest: the body is not JSON.
        InvalidJob: the JSON is not a valid JobSpec (the errors summarised).
    """
    try:
        return JobSpec.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise BadRequest("request body is not valid JSON") from exc
        raise InvalidJob(_summarise(exc)) from exc


def parse_wait(query: dict[str, str], max_wait: float) -> tuple[float | None, JobStatus | None]:
    """``wait`` (seconds, capped at ``max_wait``) and ``status`` from a query.

    Raises:
        BadRequest: ``wait`` is not a non-negative number or ``status`` is unknown.
    """
    wait: float | None = None
    known: JobStatus | None = None
    if "wait" in query:
        try:
            wait = float(query["wait"])
        except ValueError:
            raise BadRequest(f"wait must be a number of seconds, got {query['wait']!r}") from None
        if not wait >= 0:  # also refuses NaN
            raise BadRequest(f"wait must be >= 0, got {query['wait']!r}")
        wait = min(wait, max_wait)
    if "status" in query:
        try:
            known = JobStatus(query["status"])
        except ValueError:
            allowed = ", ".join(s.value for s in JobStatus)
            raise BadRequest(f"unknown status {query['status']!r}; one of: {allowed}") from None
    return wait, known


# -- handlers -------------------------------------------------------------------------


def _json(model: ServerInfo | Health | JobInfo, status: int = 200) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status)


async def get_server_info(request: web.Request) -> web.Response:
    """GET /api/v1/."""
    backend = request.app[BACKEND_KEY]
    return _json(ServerInfo(server_version=server_version(), container_env=backend.name))


async def get_health(request: web.Request) -> web.Response:
    """GET /api/v1/health/."""
    return _json(Health())


async def list_jobs(request: web.Request) -> web.Response:
    """GET /api/v1/jobs/."""
    jobs = await request.app[BACKEND_KEY].list_jobs()
    return web.json_response(text=_JOB_LIST.dump_json(jobs).decode())


async def schedule_job(request: web.Request) -> web.Response:
    """POST /api/v1/."""
    spec = parse_spec(await request.read())
    info = await request.app[BACKEND_KEY].schedule(spec)
    return _json(info, status=201)


async def get_job(request: web.Request) -> web.Response:
    """GET /api/v1/{jid}/[?wait=S&status=X].

    With ``wait``: returns once the status differs from ``status`` (default:
    the status at the time of the request) or after ``wait`` seconds.
    """
    backend = request.app[BACKEND_KEY]
    jid = JobId(request.match_info["jid"])
    wait, known = parse_wait(dict(request.query), request.app[SETTINGS_KEY].max_wait_seconds)
    if wait is None or wait == 0:
        return _json(await backend.info(jid))
    if known is None:
        known = (await backend.info(jid, logs=False)).status
    return _json(await backend.wait_for_change(jid, known, wait))


async def delete_job(request: web.Request) -> web.Response:
    """DELETE /api/v1/{jid}/."""
    await request.app[BACKEND_KEY].remove(JobId(request.match_info["jid"]))
    return web.Response(status=204)


# -- application ----------------------------------------------------------------------


def create_app(settings: PmanSettings | None = None) -> web.Application:
    """pman's application for ``settings`` (read from the environment when omitted).

    The backend is created and started on startup (a failure to reach it,
    BackendError, aborts startup) and closed on cleanup; jobs keep running.
    """
    settings = settings or PmanSettings()
    middlewares: list[Middleware] = [error_middleware]
    if settings.api_token:
        middlewares.append(_auth_middleware(settings.api_token))
    app = web.Application(middlewares=middlewares)
    app[SETTINGS_KEY] = settings

    async def backend_ctx(app: web.Application) -> AsyncIterator[None]:
        backend = create_backend(app[SETTINGS_KEY])
        await backend.start()
        app[BACKEND_KEY] = backend
        log.info("pman ready: backend %s, storebase %s", backend.name, settings.storebase)
        try:
            yield
        finally:
            await backend.close()

    app.cleanup_ctx.append(backend_ctx)
    # static routes first: they must win over /{jid}/
    app.router.add_get(f"{API_PREFIX}/", get_server_info)
    app.router.add_get(f"{API_PREFIX}/health/", get_health)
    app.router.add_get(f"{API_PREFIX}/jobs/", list_jobs)
    app.router.add_post(f"{API_PREFIX}/", schedule_job)
    app.router.add_get(f"{API_PREFIX}/{{jid}}/", get_job)
    app.router.add_delete(f"{API_PREFIX}/{{jid}}/", delete_job)
    return app
