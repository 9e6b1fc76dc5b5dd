"""pfcon's HTTP handlers (pfcon v5 ``/api/v1/jobs/`` API, ``reference/chris.md`` §3).

Handlers are thin: they parse the request, call :class:`pfcon.coordinator.Coordinator`
or :class:`pfcon.auth.TokenAuthority`, and serialise the result. Errors are
raised as :mod:`pfcon.errors` and rendered by :func:`pfcon.app.error_middleware`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from contextlib import aclosing

from aiohttp import StreamReader, hdrs, web
from pydantic import BaseModel, ValidationError

from pfcon.errors import AuthError, InvalidJob, JobNotFound
from pfcon.formdata import FormReader
from pfcon.keys import AUTHORITY_KEY, COORDINATOR_KEY, SETTINGS_KEY
from pfcon.schema import (
    JID_PATTERN,
    AuthToken,
    Credentials,
    Health,
    JobState,
    JobStatus,
)
from pfcon.submission import submit_multipart

#: Names of the routes reachable without a token (reference §3.1).
PUBLIC_ROUTES = frozenset({"auth-token", "health"})

_JID = re.compile(JID_PATTERN)


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


def _jid(request: web.Request) -> str:
    """The job id of the URL; one that could never exist is simply not found."""
    jid = request.match_info["jid"]
    if not _JID.match(jid):
        raise JobNotFound(f"no job {jid!r}")
    return jid


async def health(request: web.Request) -> web.Response:
    """GET /api/v1/health/ → ``{"health": "OK"}``."""
    return _json(Health())


async def auth_token(request: web.Request) -> web.Response:
    """POST /api/v1/auth-token/ (JSON or form credentials) → ``{"token": <jwt>}``; 400 if bad."""
    if request.content_type == "application/json":
        try:
            body: object = await request.json()
        except ValueError as exc:
            raise AuthError("the body is not valid JSON", status=400) from exc
    else:
        body = dict(await request.post())
    try:
        creds = Credentials.model_validate(body)
    except ValidationError as exc:
        raise AuthError("pfcon_user and pfcon_password (strings) are required", status=400) from exc
    token = request.app[AUTHORITY_KEY].login(creds.pfcon_user, creds.pfcon_password)
    return _json(AuthToken(token=token))


async def server_info(request: web.Request) -> web.Response:
    """GET /api/v1/jobs/ → :class:`pfcon.schema.PfconServerInfo`."""
    return _json(await request.app[COORDINATOR_KEY].server_info())


async def submit_job(request: web.Request) -> web.Response:
    """POST /api/v1/jobs/ (multipart form) → 201 :class:`JobSubmitted`, 200 for a retry."""
    if not request.content_type.startswith("multipart/"):
        raise InvalidJob("expected a multipart/form-data body", status=415)
    reader = FormReader.for_content_type(
        _pieces_of(request.content), request.headers.get(hdrs.CONTENT_TYPE, "")
    )
    outcome = await submit_multipart(
        reader,
        request.app[COORDINATOR_KEY],
        spool_dir=request.app[SETTINGS_KEY].spool_dir,
    )
    return _json(outcome.reply, status=201 if outcome.created else 200)


def _pieces_of(content: StreamReader) -> Callable[[], Awaitable[bytes]]:
    """Read the body piece by piece as it arrived (``readany`` would join what is
    buffered); ``b""`` only at its end."""

    async def read() -> bytes:
        while True:
            data, end_of_http_chunk = await content.readchunk()
            # (b"", True) marks the end of an HTTP chunk, not of the body: only
            # (b"", False) is the end. Taking the former for the end cut chunked
            # uploads short now and then (where the sender's chunks fell).
            if data or not end_of_http_chunk:
                return data

    return read


async def job_status(request: web.Request) -> web.Response:
    """GET /api/v1/jobs/<jid>/[?wait=<s>&status=<JobStatus>] → ``{"compute": ...}``."""
    jid = _jid(request)
    wait = _wait(request.query.get("wait"))
    known = _known_status(request.query.get("status"))
    info = await request.app[COORDINATOR_KEY].status(jid, wait=wait, known=known)
    return _json(JobState(compute=info))


async def job_output(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/jobs/<jid>/file/ → the output zip, streamed from pfioh (zip mode).

    In-network: GET /api/v1/jobs/<jid>/file/?job_output_path=<p> →
    :class:`pfcon.schema.OutputListing` (400 when ``p`` is not the job's output dir).
    """
    jid = _jid(request)
    coordinator = request.app[COORDINATOR_KEY]
    output_path = request.query.get("job_output_path")
    if output_path is not None:
        return _json(await coordinator.list_output(jid, output_path))
    chunks = await coordinator.open_output(jid)
    async with aclosing(chunks):
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="{jid}.zip"',
            }
        )
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
    return response


async def delete_job(request: web.Request) -> web.Response:
    """DELETE /api/v1/jobs/<jid>/ → 204, removing the job at pman and its data at pfioh."""
    await request.app[COORDINATOR_KEY].delete(_jid(request))
    return web.Response(status=204)


def _wait(raw: str | None) -> float | None:
    """``wait`` in seconds: a finite number ≥ 0 (400 otherwise)."""
    if raw is None or raw == "":
        return None
    try:
        wait = float(raw)
    except ValueError as exc:
        raise InvalidJob(f"wait: expected a number of seconds, got {raw!r}") from exc
    if not math.isfinite(wait) or wait < 0:
        raise InvalidJob(f"wait: expected a number of seconds >= 0, got {raw!r}")
    return wait


def _known_status(raw: str | None) -> JobStatus | None:
    """``status``: one of :class:`JobStatus`, case-insensitively (old pfcon sent ``notstarted``)."""
    if raw is None or raw == "":
        return None
    for status in JobStatus:
        if status.value.lower() == raw.lower():
            return status
    allowed = ", ".join(s.value for s in JobStatus)
    raise InvalidJob(f"status: expected one of {allowed}, got {raw!r}")


def add_routes(app: web.Application) -> None:
    """Register pfcon's routes under ``/api/v1/``."""
    app.router.add_post("/api/v1/auth-token/", auth_token, name="auth-token")
    app.router.add_get("/api/v1/health/", health, name="health")
    app.router.add_get("/api/v1/jobs/", server_info, name="server-info")
    app.router.add_post("/api/v1/jobs/", submit_job, name="submit")
    app.router.add_get("/api/v1/jobs/{jid}/", job_status, name="job")
    app.router.add_delete("/api/v1/jobs/{jid}/", delete_job, name="delete")
    app.router.add_get("/api/v1/jobs/{jid}/file/", job_output, name="output")
