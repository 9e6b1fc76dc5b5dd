"""Handlers: PACS services, queries, series and files (CUBE v6 paths; v5 ``pacsfiles/``).

Reading PACS data needs staff or membership of ``pacs_users``; registering
files (the DICOM bridge's bulk POST) needs staff.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube import schema
from cube.api import serialize as ser
from cube.api.common import (
    SESSIONS,
    STORAGE,
    fetch_page,
    get_or_404,
    int_param,
    model_response,
    origin,
    read_body,
    require_staff,
    require_user,
)
from cube.api.render import ApiRoutes, Filter, apply_filters, search_filters
from cube.db.models import PacsFile, PacsQuery, PacsSeries, PacsService, StoredFile, User
from cube.errors import BadRequest, NotFound
from cube.services import pacs as psvc

routes = ApiRoutes()


async def _reader(request: web.Request, s: AsyncSession) -> User:
    user = await require_user(request, s)
    await psvc.require_pacs_reader(s, user)
    return user


PACS_FILTERS = (
    Filter("id", PacsService.id, int),
    Filter("identifier", PacsService.identifier),
    Filter("active", PacsService.active, bool),
)


@routes.get("/api/v1/pacs/", model=schema.Pacs, many=True, name="pacs-list")
@routes.get("/api/v1/pacs/search/", model=schema.Pacs, many=True, filters=PACS_FILTERS)
async def list_pacs(request: web.Request) -> web.Response:
    """The PACS services CUBE knows."""
    async with request.app[SESSIONS]() as s:
        await _reader(request, s)
        q = apply_filters(request, select(PacsService), search_filters(request))
        page = await fetch_page(request, s, q, col(PacsService.id))
        base = origin(request)
        return page.response(request, [ser.pacs(base, p) for p in page.rows])


@routes.get("/api/v1/pacs/{id:\\d+}/", model=schema.Pacs)
async def get_pacs(request: web.Request) -> web.Response:
    """One PACS service."""
    async with request.app[SESSIONS]() as s:
        await _reader(request, s)
        row = await get_or_404(s, PacsService, int_param(request, "id"))
        return model_response(ser.pacs(origin(request), row))


QUERY_FILTERS = (
    Filter("id", PacsQuery.id, int),
    Filter("title", PacsQuery.title, op="icontains"),
    Filter("status", PacsQuery.status),
    Filter("pacs_id", PacsQuery.pacs_id, int),
    Filter("pacs_identifier", PacsService.identifier),
)


def _queries(user: User) -> Any:
    q = select(PacsQuery, PacsService, User).join(
        PacsService, col(PacsService.id) == col(PacsQuery.pacs_id)
    )
    q = q.join(User, col(User.id) == col(PacsQuery.owner_id))
    return q if user.is_staff else q.where(PacsQuery.owner_id == user.id)


async def _query_page(request: web.Request, s: AsyncSession, q: Any) -> web.Response:
    page = await fetch_page(request, s, q, col(PacsQuery.id).desc())
    base = origin(request)
    return page.response(
        request, [ser.pacs_query(base, pq, p, u.username) for pq, p, u in page.rows]
    )


@routes.get("/api/v1/pacs/queries/", model=schema.PacsQuery, many=True, name="pacsquery-list")
@routes.get(
    "/api/v1/pacs/queries/search/", model=schema.PacsQuery, many=True, filters=QUERY_FILTERS
)
async def list_queries(request: web.Request) -> web.Response:
    """The user's PACS queries (staff: everyone's)."""
    async with request.app[SESSIONS]() as s:
        user = await _reader(request, s)
        q = apply_filters(request, _queries(user), search_filters(request))
        return await _query_page(request, s, q)


@routes.get("/api/v1/pacs/{id:\\d+}/queries/", model=schema.PacsQuery, many=True)
async def pacs_queries(request: web.Request) -> web.Response:
    """The user's queries to one PACS."""
    async with request.app[SESSIONS]() as s:
        user = await _reader(request, s)
        pacs = await get_or_404(s, PacsService, int_param(request, "id"))
        return await _query_page(request, s, _queries(user).where(PacsQuery.pacs_id == pacs.id))


@routes.post(
    "/api/v1/pacs/{id:\\d+}/queries/",
    model=schema.PacsQuery,
    body=("title", "query", "description", "execute"),
)
async def create_query(request: web.Request) -> web.Response:
    """Record a query to a PACS (``title``, ``query`` as DICOM attribute → value)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await _reader(request, s)
        pacs = await get_or_404(s, PacsService, int_param(request, "id"))
        title = str(data.get("title") or "")
        if not title or len(title) > 300:
            raise BadRequest.field("title", "1 to 300 characters")
        query = data.get("query")
        if isinstance(query, str):
            try:
                query = json.loads(query)
            except json.JSONDecodeError:
                query = None
        if not isinstance(query, dict) or not query:
            raise BadRequest.field("query", "a non-empty JSON object of DICOM attributes")
        assert pacs.id is not None and user.id is not None
        row = PacsQuery(
            title=title,
            query=query,
            description=str(data.get("description") or ""),
            pacs_id=pacs.id,
            owner_id=user.id,
            execute=data.get("execute", True) not in (False, "false", "False", "0"),
        )
        s.add(row)
        await s.commit()
        return model_response(ser.pacs_query(origin(request), row, pacs, user.username), 201)


@routes.get("/api/v1/pacs/queries/{id:\\d+}/", model=schema.PacsQuery)
async def get_query(request: web.Request) -> web.Response:
    """One of the user's PACS queries."""
    async with request.app[SESSIONS]() as s:
        user = await _reader(request, s)
        row = (await s.exec(_queries(user).where(PacsQuery.id == int_param(request, "id")))).first()
        if row is None:
            raise NotFound("Not found.")
        pq, p, u = row
        return model_response(ser.pacs_query(origin(request), pq, p, u.username))


SERIES_FILTERS = (
    Filter("id", PacsSeries.id, int),
    Filter("PatientID", PacsSeries.PatientID),
    Filter("PatientName", PacsSeries.PatientName, op="icontains"),
    Filter("StudyInstanceUID", PacsSeries.StudyInstanceUID),
    Filter("StudyDescription", PacsSeries.StudyDescription, op="icontains"),
    Filter("SeriesInstanceUID", PacsSeries.SeriesInstanceUID),
    Filter("SeriesDescription", PacsSeries.SeriesDescription, op="icontains"),
    Filter("Modality", PacsSeries.Modality),
    Filter("AccessionNumber", PacsSeries.AccessionNumber),
    Filter("pacs_identifier", PacsService.identifier),
)


@routes.get("/api/v1/pacs/series/", model=schema.PacsSeries, many=True, name="pacsseries-list")
@routes.get(
    "/api/v1/pacs/series/search/", model=schema.PacsSeries, many=True, filters=SERIES_FILTERS
)
async def list_series(request: web.Request) -> web.Response:
    """DICOM series received from PACS."""
    async with request.app[SESSIONS]() as s:
        await _reader(request, s)
        q = select(PacsSeries, PacsService).join(
            PacsService, col(PacsService.id) == col(PacsSeries.pacs_id)
        )
        q = apply_filters(request, q, search_filters(request))
        page = await fetch_page(request, s, q, col(PacsSeries.id))
        base = origin(request)
        return page.response(request, [ser.pacs_series(base, r, p) for r, p in page.rows])


@routes.get("/api/v1/pacs/series/{id:\\d+}/", model=schema.PacsSeries)
async def get_series(request: web.Request) -> web.Response:
    """One DICOM series."""
    async with request.app[SESSIONS]() as s:
        await _reader(request, s)
        row = await get_or_404(s, PacsSeries, int_param(request, "id"))
        pacs = await s.get(PacsService, row.pacs_id)
        assert pacs is not None
        return model_response(ser.pacs_series(origin(request), row, pacs))


FILE_FILTERS = (
    Filter("id", PacsFile.id, int),
    Filter("fname", StoredFile.fname, op="startswith"),
    Filter("fname_exact", StoredFile.fname),
    Filter("series_id", PacsFile.series_id, int),
    Filter("PatientID", PacsSeries.PatientID),
    Filter("StudyInstanceUID", PacsSeries.StudyInstanceUID),
    Filter("SeriesInstanceUID", PacsSeries.SeriesInstanceUID),
    Filter("pacs_identifier", PacsService.identifier),
)


def _files() -> Any:
    return (
        select(PacsFile, StoredFile, PacsSeries, PacsService)
        .join(StoredFile, col(StoredFile.id) == col(PacsFile.file_id))
        .join(PacsSeries, col(PacsSeries.id) == col(PacsFile.series_id))
        .join(PacsService, col(PacsService.id) == col(PacsSeries.pacs_id))
    )


async def _pacs_file(
    request: web.Request, s: AsyncSession, row: tuple[Any, ...]
) -> schema.PacsFile:
    pf, f, sr, p = row
    owner = await s.get(User, f.owner_id)
    return ser.pacs_file(origin(request), pf, f, sr, p, owner.username if owner else "")


@routes.get("/api/v1/pacs/files/", model=schema.PacsFile, many=True, name="pacsfile-list")
@routes.get("/api/v1/pacs/files/search/", model=schema.PacsFile, many=True, filters=FILE_FILTERS)
@routes.get("/api/v1/pacsfiles/", model=schema.PacsFile, many=True)
@routes.get("/api/v1/pacsfiles/search/", model=schema.PacsFile, many=True, filters=FILE_FILTERS)
async def list_files(request: web.Request) -> web.Response:
    """Stored DICOM files (``pacsfiles/`` is CUBE v5's path)."""
    async with request.app[SESSIONS]() as s:
        await _reader(request, s)
        q = apply_filters(request, _files(), search_filters(request))
        page = await fetch_page(request, s, q, col(PacsFile.id))
        return page.response(request, [await _pacs_file(request, s, r) for r in page.rows])


@routes.get("/api/v1/pacs/files/{id:\\d+}/", model=schema.PacsFile)
@routes.get("/api/v1/pacsfiles/{id:\\d+}/", model=schema.PacsFile)
async def get_file(request: web.Request) -> web.Response:
    """One stored DICOM file."""
    async with request.app[SESSIONS]() as s:
        await _reader(request, s)
        row = (await s.exec(_files().where(PacsFile.id == int_param(request, "id")))).first()
        if row is None:
            raise NotFound("Not found.")
        return model_response(await _pacs_file(request, s, tuple(row)))


@routes.get("/api/v1/pacs/files/{id:\\d+}/{name}")
@routes.get("/api/v1/pacsfiles/{id:\\d+}/{name}")
async def download_file(request: web.Request) -> web.StreamResponse:
    """The bytes of a stored DICOM file."""
    async with request.app[SESSIONS]() as s:
        await _reader(request, s)
        pf = await get_or_404(s, PacsFile, int_param(request, "id"))
        f = await s.get(StoredFile, pf.file_id)
        assert f is not None
    path = request.app[STORAGE].local_path(f.fname)
    if not path.is_file():
        raise NotFound("the file's contents are missing from storage")
    return web.FileResponse(path)


@routes.post(
    "/api/v1/pacs/files/",
    model=schema.PacsFilesRegistered,
    body=("pacs_name", "files"),
)
async def register_files(request: web.Request) -> web.Response:
    """Register many stored DICOM files at once (staff; the DICOM bridge's call).

    Body: ``{"pacs_name": ..., "files": [{"path": "SERVICES/PACS/<pacs>/...",
    "SeriesInstanceUID": ..., <DICOM tags>}, ...]}``.
    """
    data = await read_body(request)
    try:
        body = schema.PacsFilesIn.model_validate(data)
    except ValidationError as exc:
        fields: dict[str, list[str]] = {}
        for err in exc.errors():
            fields.setdefault(".".join(str(p) for p in err["loc"]) or "body", []).append(err["msg"])
        raise BadRequest("invalid PACS file registration", fields=fields) from None
    async with request.app[SESSIONS]() as s:
        user = await require_staff(request, s)
        files, series = await psvc.register_files(s, request.app[STORAGE], user, body)
        await s.commit()
    return model_response(schema.PacsFilesRegistered(registered=files, series=series), 201)
