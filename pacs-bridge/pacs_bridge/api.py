"""The bridge's REST API (aiohttp), default port 4005, prefix ``/api/v1/``.

==========================================  =============================================
``GET  /api/v1/status/``                    receiver counts, registrations, routing
``GET  /api/v1/services/``                  PACS services
``PUT  /api/v1/services/{name}/``           add or replace one (:class:`PacsService` body)
``GET|DELETE /api/v1/services/{name}/``     one service
``POST /api/v1/services/{name}/echo/``      C-ECHO it
``POST /api/v1/services/{name}/query/``     C-FIND (:class:`QueryIn`) → ``{"results": [...]}``
``POST /api/v1/services/{name}/retrieve/``  start a C-MOVE/C-GET (:class:`RetrieveIn`) → 202
``POST /api/v1/services/{name}/export/``    C-STORE stored files (:class:`ExportIn`)
``GET  /api/v1/retrieves/``                 every retrieve's status (kept across restarts)
``GET  /api/v1/retrieves/{id}/``            one retrieve's status
``GET  /api/v1/retrieves/{id}/events/``     its progress as server-sent events, to the end
==========================================  =============================================

Errors are ``{"message": ..., "code": ...}`` with the status of the
:mod:`pacs_bridge.errors` class, from one middleware. Bodies and answers are
the models of :mod:`pacs_bridge.schema`; :mod:`pacs_bridge.client` is the
typed client other programs use.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from pacs_bridge.bridge import Bridge
from pacs_bridge.errors import InvalidRequest, PacsBridgeError
from pacs_bridge.schema import (
    BridgeStatus,
    ExportIn,
    ExportOut,
    PacsService,
    QueryIn,
    QueryOut,
    RegistrationFailure,
    RetrieveIn,
    RetrieveState,
    RoutingStatus,
)
from pacs_bridge.settings import BridgeSettings

BRIDGE = web.AppKey("bridge", Bridge)
#: Seconds between server-sent progress events of a running retrieve.
EVENT_INTERVAL = 0.5


def _json(model: BaseModel | list[Any] | dict[str, Any], status: int = 200) -> web.Response:
    if isinstance(model, BaseModel):
        return web.Response(
            text=model.model_dump_json(), status=status, content_type="application/json"
        )
    return web.json_response(model, status=status)


async def _body(request: web.Request, model: type[BaseModel], **extra: Any) -> Any:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    try:
        return model.model_validate({**data, **extra})
    except ValidationError as exc:
        raise InvalidRequest(f"invalid {model.__name__}: {exc}") from exc


@web.middleware
async def errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Render :class:`PacsBridgeError` as ``{"message", "code"}`` with its status."""
    try:
        return await handler(request)
    except PacsBridgeError as exc:
        return web.json_response({"message": exc.message, "code": exc.code}, status=exc.status)


routes = web.RouteTableDef()


@routes.get("/api/v1/status/")
async def status(request: web.Request) -> web.Response:
    """The receiver's counts, the registrations and the routing record."""
    return _json(bridge_status(request.app[BRIDGE]))


def bridge_status(bridge: Bridge) -> BridgeStatus:
    """The bridge's :class:`BridgeStatus` (the latest 20 routed series, every failure kept)."""
    rx = bridge.receiver
    router = bridge.router
    routing = RoutingStatus()
    if router is not None:
        routing = RoutingStatus(
            rules=len(bridge.settings.rules),
            series_routed=len(router.routed),
            routed=list(router.routed)[-20:],
            failures=router.failures,
        )
    return BridgeStatus(
        ae_title=bridge.settings.ae_title,
        dicom_port=rx.port,
        instances=dict(rx.counts),
        series_pending=rx.assembler.pending,
        series_registered=len(rx.assembler.registered),
        files_registered=rx.assembler.files_registered,
        registration_failures=[
            RegistrationFailure(series=r.meta.SeriesInstanceUID, files=len(r.files), error=e)
            for r, e in rx.assembler.failed
        ],
        routing=routing,
    )


@routes.get("/api/v1/services/")
async def list_services(request: web.Request) -> web.Response:
    """Every PACS service."""
    return _json([s.model_dump(mode="json") for s in request.app[BRIDGE].services.all()])


@routes.put("/api/v1/services/{name}/")
async def put_service(request: web.Request) -> web.Response:
    """Add or replace a PACS service (the name comes from the path)."""
    service = await _body(request, PacsService, name=request.match_info["name"])
    request.app[BRIDGE].services.put(service)
    return _json(service)


@routes.get("/api/v1/services/{name}/")
async def get_service(request: web.Request) -> web.Response:
    """One PACS service."""
    return _json(request.app[BRIDGE].services.get(request.match_info["name"]))


@routes.delete("/api/v1/services/{name}/")
async def delete_service(request: web.Request) -> web.Response:
    """Forget a PACS service."""
    request.app[BRIDGE].services.delete(request.match_info["name"])
    return web.Response(status=204)


@routes.post("/api/v1/services/{name}/echo/")
async def echo(request: web.Request) -> web.Response:
    """C-ECHO a PACS service."""
    await request.app[BRIDGE].client(request.match_info["name"]).echo()
    return _json({"status": "ok"})


@routes.post("/api/v1/services/{name}/query/")
async def query(request: web.Request) -> web.Response:
    """C-FIND on a PACS service."""
    q = await _body(request, QueryIn)
    results = await request.app[BRIDGE].query(request.match_info["name"], q)
    return _json(QueryOut(level=q.level, results=results))


@routes.post("/api/v1/services/{name}/retrieve/")
async def retrieve(request: web.Request) -> web.Response:
    """Start a retrieve; 202 with its status (``Location``: the status resource)."""
    what = await _body(request, RetrieveIn)
    st = request.app[BRIDGE].retrieve(request.match_info["name"], what)
    resp = _json(st, status=202)
    resp.headers["Location"] = f"/api/v1/retrieves/{st.id}/"
    return resp


@routes.post("/api/v1/services/{name}/export/")
async def export(request: web.Request) -> web.Response:
    """C-STORE stored DICOM files (paths relative to the storage root) to a PACS service."""
    body = await _body(request, ExportIn)
    result = await request.app[BRIDGE].export(
        request.match_info["name"], body.files, body.study_from
    )
    return _json(ExportOut(stored=result.stored, failed=result.failed))


@routes.get("/api/v1/retrieves/")
async def list_retrieves(request: web.Request) -> web.Response:
    """Every retrieve since the bridge started."""
    return _json([s.model_dump(mode="json") for s in request.app[BRIDGE].retrieves.values()])


def _retrieve_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise InvalidRequest("a retrieve id is an integer") from None


@routes.get("/api/v1/retrieves/{id}/")
async def get_retrieve(request: web.Request) -> web.Response:
    """One retrieve's status."""
    return _json(request.app[BRIDGE].retrieve_status(_retrieve_id(request)))


@routes.get("/api/v1/retrieves/{id}/events/")
async def retrieve_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the retrieve's status on each change, until it has ended."""
    bridge = request.app[BRIDGE]
    ident = _retrieve_id(request)
    st = bridge.retrieve_status(ident)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    last = ""
    while True:
        data = st.model_dump_json()
        if data != last:
            await resp.write(f"event: {st.state.value}\ndata: {data}\n\n".encode())
            last = data
        if st.state is not RetrieveState.RUNNING:
            break
        await bridge.wait_retrieve(ident, EVENT_INTERVAL)
    await resp.write_eof()
    return resp


def create_app(settings: BridgeSettings, bridge: Bridge | None = None) -> web.Application:
    """The REST API app; it starts (and stops) the bridge, receiver included."""
    app = web.Application(middlewares=[errors])
    app.add_routes(routes)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with bridge or Bridge(settings) as b:
            app[BRIDGE] = b
            yield

    app.cleanup_ctx.append(lifecycle)
    return app
