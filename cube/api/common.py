"""Shared pieces of CUBE's HTTP layer: app keys, auth, errors, bodies, pages."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlmodel import func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.api.render import (
    COLLECTION_JSON,
    ItemResponse,
    Listing,
    ListResponse,
    error_document,
    wants_collection,
)
from cube.db.engine import SessionMaker
from cube.db.models import User
from cube.errors import (
    BadRequest,
    Conflict,
    CubeError,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
)
from cube.registry import RegistryClient
from cube.scheduler import Scheduler, StatusHub
from cube.services import users
from cube.settings import CubeSettings
from cube.storage import Storage

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", CubeSettings)
SESSIONS = web.AppKey("sessions", SessionMaker)
STORAGE = web.AppKey("storage", Storage)
HUB = web.AppKey("hub", StatusHub)
SCHEDULER = web.AppKey("scheduler", Scheduler)
REGISTRY = web.AppKey("registry", RegistryClient)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def error_response(
    request: web.Request,
    body: dict[str, object],
    status: int,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in the negotiated media type: DRF JSON, or a Collection+JSON ``error``."""
    if wants_collection(request):
        message = body.get("detail") or body.get("error") or _field_message(body)
        return web.json_response(
            error_document(request, str(message)),
            status=status,
            headers=headers,
            content_type=COLLECTION_JSON,
        )
    return web.json_response(body, status=status, headers=headers)


def _field_message(body: dict[str, object]) -> str:
    """DRF field errors (``{"field": ["msg"]}``) as one line."""
    parts = []
    for name, msgs in body.items():
        text = "; ".join(str(m) for m in msgs) if isinstance(msgs, list) else str(msgs)
        parts.append(f"{name}: {text}")
    return " ".join(parts)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render CUBE errors in the DRF shape (or Collection+JSON); hide internals."""
    try:
        return await handler(request)
    except CubeError as exc:
        headers = {"WWW-Authenticate": 'Token realm="api"'} if exc.status == 401 else None
        return error_response(request, exc.body(), exc.status, headers)
    except IntegrityError as exc:
        log.info("integrity error: %s", exc)
        err = Conflict("conflicts with existing data")
        return error_response(request, err.body(), err.status)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return error_response(request, {"detail": exc.reason}, exc.status)
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(request, {"error": "Internal server error"}, 500)


async def current_user(request: web.Request, session: AsyncSession) -> User | None:
    """The user of ``Authorization: Token <key>`` or ``Basic``; None if absent.

    Raises:
        NotAuthenticated: credentials present but wrong.
    """
    header = request.headers.get("Authorization", "")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "token" and value:
        return await users.user_for_token(session, value.strip())
    if scheme.lower() == "basic" and value:
        try:
            username, _, password = base64.b64decode(value).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise NotAuthenticated("Invalid basic header.") from exc
        try:
            return await users.authenticate(session, username, password)
        except BadRequest as exc:
            raise NotAuthenticated("Invalid username/password.") from exc
    raise NotAuthenticated("Unsupported authorization scheme (use Token or Basic).")


async def require_user(request: web.Request, session: AsyncSession) -> User:
    """The authenticated user, or 401."""
    user = await current_user(request, session)
    if user is None:
        raise NotAuthenticated("Authentication credentials were not provided.")
    return user


async def anonymous_or(user: User | None, read: Awaitable[T]) -> T:
    """Await ``read``, a lookup of what ``user`` may read (``None``: anonymous,
    who reads public feeds only).

    A resource an anonymous caller may not read answers 401, not 404: as in
    ChRIS (DRF), a caller without credentials is told to authenticate.

    Raises:
        NotAuthenticated: anonymous, and not public.
        NotFound: authenticated, and not readable (or absent).
    """
    try:
        return await read
    except NotFound:
        if user is None:
            raise NotAuthenticated("Authentication credentials were not provided.") from None
        raise


async def require_staff(request: web.Request, session: AsyncSession) -> User:
    """An authenticated staff (admin) user, or 401/403."""
    user = await require_user(request, session)
    if not user.is_staff:
        raise PermissionDenied("You do not have permission to perform this action.")
    return user


async def read_body(request: web.Request) -> dict[str, Any]:
    """A request body as a dict: JSON, collection+json template, or a form.

    Raises:
        BadRequest: unparseable body.
    """
    ctype = request.content_type
    if not request.body_exists:
        # an empty PUT returns the resource unchanged (ChRIS clients send one)
        return {}
    if ctype in ("application/json", "application/vnd.collection+json"):
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"JSON parse error - {exc}") from exc
        if isinstance(data, dict) and "template" in data:
            items = data["template"].get("data", []) if isinstance(data["template"], dict) else []
            data = {i.get("name"): i.get("value") for i in items if isinstance(i, dict)}
        if not isinstance(data, dict):
            raise BadRequest("expected a JSON object")
        return data
    if ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}
    if not request.can_read_body:
        return {}
    raise BadRequest(f"unsupported content type {ctype!r}")


def origin(request: web.Request) -> str:
    """``scheme://host`` of the request, the base of every hyperlink."""
    return f"{request.scheme}://{request.host}"


def page_bounds(request: web.Request, settings: CubeSettings) -> tuple[int, int]:
    """``(limit, offset)`` from the query string.

    Raises:
        BadRequest: not non-negative integers.
    """
    try:
        limit = int(request.query.get("limit", settings.page_size))
        offset = int(request.query.get("offset", 0))
    except ValueError as exc:
        raise BadRequest("limit and offset must be integers") from exc
    if limit < 1 or offset < 0:
        raise BadRequest("limit must be ≥ 1 and offset ≥ 0")
    return min(limit, settings.max_page_size), offset


def page_response(
    request: web.Request,
    count: int,
    limit: int,
    offset: int,
    results: Sequence[BaseModel],
    links: dict[str, str] | None = None,
) -> ListResponse:
    """The ``count/next/previous/results`` body of a list (any media type)."""
    base = origin(request) + request.path

    def link(off: int) -> str:
        query = dict(request.query)
        query.update(limit=str(limit), offset=str(off))
        return f"{base}?{urlencode(query)}"

    return ListResponse(
        Listing(
            count=count,
            next=link(offset + limit) if offset + limit < count else None,
            previous=link(max(0, offset - limit)) if offset > 0 else None,
            results=results,
            links=links or {},
        )
    )


@dataclass(frozen=True)
class PageSlice:
    """One page of a query: the rows and the numbers its links need."""

    total: int
    rows: Sequence[Any]
    limit: int
    offset: int

    def response(
        self,
        request: web.Request,
        results: Sequence[BaseModel],
        links: dict[str, str] | None = None,
    ) -> ListResponse:
        """The list body for these rows, serialised as ``results``."""
        return page_response(request, self.total, self.limit, self.offset, results, links)


async def fetch_page(
    request: web.Request, session: AsyncSession, query: Any, *order: Any
) -> PageSlice:
    """Count a query and fetch the page that ``limit``/``offset`` ask for.

    Raises:
        BadRequest: bad ``limit`` or ``offset``.
    """
    limit, offset = page_bounds(request, request.app[SETTINGS])
    total = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    rows = (await session.exec(query.order_by(*order).offset(offset).limit(limit))).all()
    return PageSlice(total, rows, limit, offset)


async def fetch_keyed_page(
    request: web.Request, session: AsyncSession, query: Any, key: Any, *, descending: bool
) -> PageSlice:
    """:func:`fetch_page` for large tables, ordered by the primary key ``key``.

    The page's keys are found first (an index-only scan, however deep the
    offset), then only those rows are read: a plain ``OFFSET`` would read
    every skipped row from the table (100,000 instances: ~20 ms more).

    Raises:
        BadRequest: bad ``limit`` or ``offset``.
    """
    limit, offset = page_bounds(request, request.app[SETTINGS])
    order = key.desc() if descending else key.asc()
    total = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    keys = query.with_only_columns(key).order_by(order).offset(offset).limit(limit)
    rows = (await session.exec(query.where(key.in_(keys.scalar_subquery())).order_by(order))).all()
    return PageSlice(total, rows, limit, offset)


def list_page(request: web.Request, items: Sequence[Any]) -> PageSlice:
    """The page of an already-loaded list that ``limit``/``offset`` ask for.

    Raises:
        BadRequest: bad ``limit`` or ``offset``.
    """
    limit, offset = page_bounds(request, request.app[SETTINGS])
    return PageSlice(len(items), items[offset : offset + limit], limit, offset)


async def get_or_404(session: AsyncSession, model: type[T], ident: int) -> T:
    """The row of ``model`` with primary key ``ident``.

    Raises:
        NotFound: no such row.
    """
    row = await session.get(model, ident)
    if row is None:
        raise NotFound("Not found.")
    return row


def model_response(model: BaseModel, status: int = 200) -> ItemResponse:
    """A single resource (JSON or Collection+JSON as negotiated)."""
    return ItemResponse(model, status=status)


def int_param(request: web.Request, name: str) -> int:
    """A numeric path parameter (routes already constrain it to digits)."""
    return int(request.match_info[name])
