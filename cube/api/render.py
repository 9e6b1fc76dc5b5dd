"""Content negotiation: every resource in ``application/json`` and Collection+JSON.

A handler describes what it returns once, where it is routed
(:class:`ApiRoutes`: the wire model, the search filters, the writable
fields), and answers with :class:`ItemResponse` or :class:`ListResponse`,
whose body is the DRF JSON shape. :func:`negotiation_middleware` re-renders
that body as ``application/vnd.collection+json`` when the client asks for it
(or names no type: ChRIS's first renderer is Collection+JSON, and
python-chrisclient sends ``Accept: */*`` with token auth and uploads).

The Collection+JSON document follows CUBE's renderer (reference §1.2): ``url``
becomes the item's ``href``, fields typed :data:`cube.schema.Link` become
``links``, every other field goes in ``data``; ``count`` becomes ``total``;
pagination becomes the ``next``/``previous`` links; a list's search filters
become ``queries`` and the writable fields of its POST (or the item's PUT)
become the ``template``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel

from cube.errors import BadRequest
from cube.schema import HyperLink

JSON = "application/json"
COLLECTION_JSON = "application/vnd.collection+json"

FilterOp = Literal["exact", "icontains", "startswith", "gte", "lte"]


@dataclass(frozen=True)
class Filter:
    """One search filter: the query parameter ``name`` compared with ``column``.

    ``kind`` parses the parameter (``int``, ``str``, ``bool``, ``datetime``);
    ``op`` is the comparison (django-filter's lookups of the same names).
    """

    name: str
    column: Any = None
    kind: type = str
    op: FilterOp = "exact"
    #: A condition built from the parsed value, for filters that are not one
    #: column compared with the value (``active``, ``root_id``).
    where: Callable[[Any], Any] | None = None

    def parse(self, raw: str) -> Any:
        """The parameter's value as ``kind``.

        Raises:
            BadRequest: not a value of that kind.
        """
        try:
            if self.kind is bool:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                return raw.lower() in ("true", "1")
            if self.kind is datetime:
                value = datetime.fromisoformat(raw)
                # naive means UTC (CUBE's time zone); PostgreSQL compares aware values
                return value if value.tzinfo else value.replace(tzinfo=UTC)
            return self.kind(raw)
        except ValueError:
            raise BadRequest.field(
                self.name, f"not a valid {self.kind.__name__}: {raw!r}"
            ) from None

    def apply(self, query: Any, raw: str) -> Any:
        """``query`` narrowed by this filter."""
        value = self.parse(raw)
        if self.where is not None:
            return query.where(self.where(value))
        col = self.column
        if self.op == "icontains":
            return query.where(col.ilike(f"%{value}%"))
        if self.op == "startswith":
            return query.where(col.startswith(value))
        if self.op == "gte":
            return query.where(col >= value)
        if self.op == "lte":
            return query.where(col <= value)
        return query.where(col == value)


@dataclass(frozen=True)
class Endpoint:
    """What one route serves: the description both renderers and OpenAPI read."""

    method: str
    path: str
    handler: Callable[..., Any]
    name: str | None = None
    #: The wire model of the resource returned (each item of a list).
    model: type[BaseModel] | None = None
    many: bool = False
    #: Search filters (query parameters) a ``search/`` list accepts.
    filters: tuple[Filter, ...] = ()
    #: Writable fields of a POST or PUT body (the Collection+JSON template).
    body: tuple[str, ...] = ()
    #: Answers without credentials.
    public: bool = False

    @property
    def canonical(self) -> str:
        """The path as aiohttp's ``resource.canonical`` names it (no regexes)."""
        return _canonical(self.path)

    @property
    def summary(self) -> str:
        """The first line of the handler's docstring."""
        return (self.handler.__doc__ or "").strip().split("\n", 1)[0]


def _canonical(path: str) -> str:
    return re.sub(r"\{(\w+):[^{}]*(?:\{[^{}]*\}[^{}]*)*\}", r"{\1}", path)


#: Every described endpoint by (method, canonical path); filled at import time
#: by the route tables and read-only afterwards.
ENDPOINTS: dict[tuple[str, str], Endpoint] = {}


class ApiRoutes(web.RouteTableDef):
    """A route table whose routes also describe their resource (:class:`Endpoint`)."""

    def route(  # type: ignore[override]
        self,
        method: str,
        path: str,
        *,
        model: type[BaseModel] | None = None,
        many: bool = False,
        filters: Iterable[Filter] = (),
        body: Iterable[str] = (),
        public: bool = False,
        **kwargs: Any,
    ) -> Callable[[Any], Any]:
        """Register a handler for ``method path`` and record what it serves.

        ``model``/``many``: the wire model returned (a page of them);
        ``filters``: search filters; ``body``: writable fields; ``public``:
        answers without credentials. Other keywords go to aiohttp (``name``).
        """
        register = super().route(method, path, **kwargs)

        def decorator(handler: Any) -> Any:
            ep = Endpoint(
                method,
                path,
                handler,
                kwargs.get("name"),
                model,
                many,
                tuple(filters),
                tuple(body),
                public,
            )
            ENDPOINTS[(method, ep.canonical)] = ep
            return register(handler)

        return decorator


@functools.cache
def link_fields(model: type[BaseModel]) -> frozenset[str]:
    """Fields of ``model`` typed :data:`cube.schema.Link` (hyperlinks)."""
    return frozenset(
        name
        for name, info in model.model_fields.items()
        if any(isinstance(m, HyperLink) for m in info.metadata)
    )


class ItemResponse(web.Response):
    """One resource, rendered as JSON; keeps the model for other renderings."""

    def __init__(self, model: BaseModel, status: int = 200) -> None:
        super().__init__(body=model.model_dump_json().encode(), status=status, content_type=JSON)
        self.model = model


@dataclass
class Listing:
    """A page of a list, before rendering."""

    count: int
    next: str | None
    previous: str | None
    results: Sequence[BaseModel]
    #: Collection-level links (rel → url), e.g. the API root's resource links.
    links: dict[str, str] = field(default_factory=dict)

    def json_body(self) -> dict[str, Any]:
        """DRF's list body (plus ``collection_links`` when the list has links)."""
        body: dict[str, Any] = {
            "count": self.count,
            "next": self.next,
            "previous": self.previous,
            "results": [r.model_dump(mode="json") for r in self.results],
        }
        if self.links:
            body["collection_links"] = dict(self.links)
        return body


class ListResponse(web.Response):
    """A page of a list, rendered as DRF's ``count/next/previous/results``."""

    def __init__(self, listing: Listing) -> None:
        super().__init__(text=json.dumps(listing.json_body()), content_type=JSON)
        self.listing = listing


def wants_collection(request: web.Request) -> bool:
    """Whether to answer in Collection+JSON: the best acceptable type by ``q``.

    ``*/*``, ``application/*``, no header, or no type CUBE knows all give
    Collection+JSON, CUBE's first renderer.
    """
    best: tuple[float, int, str] | None = None
    for index, part in enumerate(request.headers.get("Accept", "").split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        if media not in (JSON, COLLECTION_JSON):
            continue
        q = 1.0
        for p in params:
            key, _, val = p.partition("=")
            if key.strip() == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        candidate = (-q, index, media)
        if best is None or candidate < best:
            best = candidate
    return best is None or best[2] == COLLECTION_JSON


def request_url(request: web.Request) -> str:
    """The absolute URL of the request (the Collection+JSON ``href``)."""
    return f"{request.scheme}://{request.host}{request.path_qs}"


def cj_item(model: BaseModel) -> dict[str, Any]:
    """One Collection+JSON item: ``href``, ``data`` and ``links``."""
    links = link_fields(type(model))
    dumped = model.model_dump(mode="json")
    href = dumped.pop("url", None)
    item: dict[str, Any] = {
        "data": [{"name": k, "value": v} for k, v in dumped.items() if k not in links],
        "links": [{"rel": k, "href": dumped[k]} for k in links if k != "url" and dumped.get(k)],
    }
    if href is not None:
        item["href"] = href
    return item


def _endpoint(request: web.Request, method: str, suffix: str = "") -> Endpoint | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return ENDPOINTS.get((method, resource.canonical + suffix))


def _template(request: web.Request) -> dict[str, Any] | None:
    for method in ("POST", "PUT"):
        ep = _endpoint(request, method)
        if ep is not None and ep.body:
            return {"data": [{"name": name, "value": ""} for name in ep.body]}
    return None


def _queries(request: web.Request) -> list[dict[str, Any]]:
    resource = request.match_info.route.resource
    if resource is None or resource.canonical.endswith("/search/"):
        return []
    search = _endpoint(request, "GET", "search/")
    if search is None or not search.filters:
        return []
    base = f"{request.scheme}://{request.host}{request.path}search/"
    return [
        {
            "href": base,
            "rel": "search",
            "data": [{"name": f.name, "value": ""} for f in search.filters],
        }
    ]


def collection_document(
    request: web.Request,
    items: Sequence[BaseModel],
    *,
    links: dict[str, str] | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """The Collection+JSON document of a list page or a single item."""
    collection: dict[str, Any] = {
        "version": "1.0",
        "href": request_url(request),
        "items": [cj_item(m) for m in items],
        "links": [{"rel": rel, "href": href} for rel, href in (links or {}).items()],
    }
    if queries := _queries(request):
        collection["queries"] = queries
    if template := _template(request):
        collection["template"] = template
    if total is not None:
        collection["total"] = total
    return {"collection": collection}


def error_document(request: web.Request, message: str) -> dict[str, Any]:
    """A Collection+JSON error (python-chrisclient raises its ``message``)."""
    return {
        "collection": {
            "version": "1.0",
            "href": request_url(request),
            "error": {"message": message},
        }
    }


def as_collection(request: web.Request, resp: web.Response) -> web.Response:
    """``resp`` re-rendered as Collection+JSON (unchanged if it is not a resource)."""
    if isinstance(resp, ItemResponse):
        doc = collection_document(request, [resp.model])
    elif isinstance(resp, ListResponse):
        listing = resp.listing
        links = dict(listing.links)
        if listing.next:
            links["next"] = listing.next
        if listing.previous:
            links["previous"] = listing.previous
        doc = collection_document(request, listing.results, links=links, total=listing.count)
    else:
        return resp
    return web.Response(text=json.dumps(doc), status=resp.status, content_type=COLLECTION_JSON)


Handler = Callable[[web.Request], Any]


@web.middleware
async def negotiation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render resources in the media type the client accepts (JSON or Collection+JSON)."""
    resp = await handler(request)
    if isinstance(resp, ItemResponse | ListResponse) and wants_collection(request):
        return as_collection(request, resp)
    return resp  # type: ignore[no-any-return]


def apply_filters(request: web.Request, query: Any, filters: Iterable[Filter]) -> Any:
    """``query`` narrowed by every filter named in the query string.

    Raises:
        BadRequest: a filter value of the wrong kind.
    """
    for f in filters:
        raw = request.query.get(f.name)
        if raw is not None and raw != "":
            query = f.apply(query, raw)
    return query


def search_filters(request: web.Request) -> tuple[Filter, ...]:
    """The filters of the endpoint serving ``request`` (empty unless a ``search/`` URL)."""
    ep = _endpoint(request, request.method)
    if ep is None or not request.path.endswith("/search/"):
        return ()
    return ep.filters
