"""Handlers: user files, the file browser, legacy file lists and download tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube import schema
from cube.api import serialize as ser
from cube.api.common import (
    SESSIONS,
    SETTINGS,
    STORAGE,
    anonymous_or,
    current_user,
    fetch_page,
    get_or_404,
    int_param,
    list_page,
    model_response,
    origin,
    read_body,
    require_user,
)
from cube.api.render import ApiRoutes, Filter, apply_filters, search_filters
from cube.db.models import DownloadToken, Folder, PluginInstance, StoredFile, User
from cube.errors import BadRequest, NotFound
from cube.services import files as fsvc
from cube.services import users as usvc

routes = ApiRoutes()

USERFILE_FILTERS = (
    Filter("id", StoredFile.id, int),
    Filter("fname", StoredFile.fname, op="startswith"),
    Filter("fname_exact", StoredFile.fname),
    Filter("fname_icontains", StoredFile.fname, op="icontains"),
    Filter("min_fsize", StoredFile.fsize, int, "gte"),
    Filter("max_fsize", StoredFile.fsize, int, "lte"),
    Filter("min_creation_date", StoredFile.creation_date, datetime, "gte"),
    Filter("max_creation_date", StoredFile.creation_date, datetime, "lte"),
)


def _uploads(s: AsyncSession, user: User) -> Any:
    """The user's uploads: their files that no instance produced, in their home."""
    return select(StoredFile).where(
        StoredFile.owner_id == user.id,
        col(StoredFile.plugin_inst_id).is_(None),
        fsvc.under(s, StoredFile.fname, f"home/{user.username}/"),
    )


@routes.get("/api/v1/userfiles/", model=schema.UserFile, many=True, name="userfile-list")
@routes.get("/api/v1/userfiles/search/", model=schema.UserFile, many=True, filters=USERFILE_FILTERS)
async def list_userfiles(request: web.Request) -> web.Response:
    """The user's uploaded files."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = apply_filters(request, _uploads(s, user), search_filters(request))
        page = await fetch_page(request, s, q, col(StoredFile.id))
        base = origin(request)
        return page.response(request, [ser.user_file(base, f, user.username) for f in page.rows])


@routes.post("/api/v1/userfiles/", model=schema.UserFile, body=("upload_path", "fname"))
async def upload_userfile(request: web.Request) -> web.Response:
    """Upload a file: multipart ``upload_path`` and ``fname`` (the file), in either order.

    The file is streamed to storage, never held in memory."""
    if request.content_type != "multipart/form-data":
        raise BadRequest("use multipart/form-data with 'upload_path' and 'fname'")
    settings = request.app[SETTINGS]
    storage = request.app[STORAGE]
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        reader = await request.multipart()
        upload_path: str | None = None
        row = None
        spooled: str | None = None
        try:
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "upload_path":
                    upload_path = (await part.text()).strip()
                elif part.name == "fname":
                    if row is not None or spooled is not None:
                        raise BadRequest.field("fname", "only one file per upload")
                    if upload_path is not None:
                        row = await fsvc.upload_file(
                            s,
                            storage,
                            user,
                            upload_path,
                            _chunks(part),
                            max_bytes=settings.max_upload_bytes,
                        )
                    else:
                        # the path comes after the file: park the bytes in the user's area
                        spooled = (
                            f"home/{user.username}/.uploads-in-progress/{id(part)}-{time.time_ns()}"
                        )
                        await storage.write_stream(
                            spooled, _chunks(part), max_bytes=settings.max_upload_bytes
                        )
            if row is None and spooled is not None:
                if upload_path is None:
                    raise BadRequest.field("upload_path", "This field is required.")
                row = await fsvc.upload_file(
                    s,
                    storage,
                    user,
                    upload_path,
                    _file_chunks(storage.local_path(spooled)),
                    max_bytes=settings.max_upload_bytes,
                )
            if row is None:
                raise BadRequest.field("fname", "No file was submitted.")
            await s.commit()
        finally:
            if spooled is not None:
                storage.local_path(spooled).unlink(missing_ok=True)
        return model_response(ser.user_file(origin(request), row, user.username), status=201)


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(1 << 20):
        yield chunk


async def _file_chunks(path: Any) -> AsyncIterator[bytes]:
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, 1 << 20):
            yield chunk
    finally:
        fh.close()


async def _owner_name(s: AsyncSession, row: StoredFile) -> str:
    owner = await s.get(User, row.owner_id)
    return owner.username if owner else ""


@routes.get("/api/v1/userfiles/{id:\\d+}/", model=schema.UserFile)
async def get_userfile(request: web.Request) -> web.Response:
    """One uploaded file."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        row = await fsvc.readable_file(s, user, int_param(request, "id"))
        return model_response(ser.user_file(origin(request), row, await _owner_name(s, row)))


@routes.put("/api/v1/userfiles/{id:\\d+}/", model=schema.UserFile, body=("upload_path",))
async def move_userfile(request: web.Request) -> web.Response:
    """Move an uploaded file to another ``upload_path`` (its owner)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        if "upload_path" not in data:
            row = await fsvc.readable_file(s, user, int_param(request, "id"))
        else:
            row = await fsvc.move_user_file(
                s, request.app[STORAGE], user, int_param(request, "id"), str(data["upload_path"])
            )
            await s.commit()
        return model_response(ser.user_file(origin(request), row, await _owner_name(s, row)))


@routes.delete("/api/v1/userfiles/{id:\\d+}/")
async def delete_userfile(request: web.Request) -> web.Response:
    """Delete an uploaded file (owner or staff)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        await fsvc.delete_user_file(s, request.app[STORAGE], user, int_param(request, "id"))
        await s.commit()
    return web.Response(status=204)


FILE_FILTERS = (
    Filter("id", StoredFile.id, int),
    Filter("fname", StoredFile.fname, op="startswith"),
    Filter("fname_exact", StoredFile.fname),
    Filter("fname_icontains", StoredFile.fname, op="icontains"),
    Filter("plugin_inst_id", StoredFile.plugin_inst_id, int),
    Filter("feed_id", PluginInstance.feed_id, int),
)


@routes.get("/api/v1/files/", model=schema.PluginInstanceFile, many=True, name="file-list")
@routes.get(
    "/api/v1/files/search/", model=schema.PluginInstanceFile, many=True, filters=FILE_FILTERS
)
async def list_files(request: web.Request) -> web.Response:
    """Output files of the user's own instances (the CUBE ≤ v5 ``files`` link)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = (
            select(StoredFile, PluginInstance)
            .join(PluginInstance, col(PluginInstance.id) == col(StoredFile.plugin_inst_id))
            .where(PluginInstance.owner_id == user.id)
        )
        q = apply_filters(request, q, search_filters(request))
        page = await fetch_page(request, s, q, col(StoredFile.id))
        base = origin(request)
        return page.response(request, [ser.instance_file(base, f, i.feed_id) for f, i in page.rows])


@routes.get("/api/v1/files/{id:\\d+}/", model=schema.PluginInstanceFile, public=True)
async def get_file(request: web.Request) -> web.Response:
    """One file (an output, or an upload; of a public feed: anyone may read it)."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        row = await anonymous_or(user, fsvc.readable_file(s, user, int_param(request, "id")))
        if row.plugin_inst_id is None:
            return model_response(ser.user_file(origin(request), row, await _owner_name(s, row)))
        inst = await s.get(PluginInstance, row.plugin_inst_id)
        assert inst is not None
        return model_response(ser.instance_file(origin(request), row, inst.feed_id))


@routes.get("/api/v1/servicefiles/", model=schema.UserFile, many=True, name="servicefile-list")
async def list_service_files(request: web.Request) -> web.Response:
    """Files under ``SERVICES/`` the user may read (the CUBE ≤ v5 ``servicefiles`` link)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = select(StoredFile).where(col(StoredFile.fname).like("SERVICES/%"))
        if not user.is_staff and not await fsvc.groups.is_member(s, user, fsvc.PACS_GROUP):
            q = q.where(col(StoredFile.fname).not_like(fsvc.PACS_ROOT + "/%"))
        page = await fetch_page(request, s, q, col(StoredFile.id))
        base = origin(request)
        return page.response(
            request, [ser.user_file(base, f, await _owner_name(s, f)) for f in page.rows]
        )


async def download_user(request: web.Request, s: AsyncSession) -> User | None:
    """The caller of a download: credentials, or a ``download_token`` query
    parameter; ``None`` without either (an anonymous caller, who may download
    the files of public feeds only).

    Raises:
        NotAuthenticated: bad credentials or a bad token.
    """
    user = await current_user(request, s)
    if user is not None:
        return user
    token = request.query.get("download_token")
    if token:
        return await usvc.user_for_download_token(s, token)
    return None


@routes.get("/api/v1/userfiles/{id:\\d+}/{name}", public=True)
@routes.get("/api/v1/files/{id:\\d+}/{name}", public=True)
@routes.get("/api/v1/filebrowser/files/{id:\\d+}/{name}", public=True)
@routes.get("/api/v1/filebrowser/linkfiles/{id:\\d+}/{name}", public=True)
async def download(request: web.Request) -> web.StreamResponse:
    """Stream a file's bytes (``file_resource`` links); the files of public
    feeds (and public files) need no credentials."""
    async with request.app[SESSIONS]() as s:
        user = await download_user(request, s)
        row = await anonymous_or(user, fsvc.readable_file(s, user, int_param(request, "id")))
    path = request.app[STORAGE].local_path(row.fname)
    if not path.is_file():
        raise NotFound("the file's contents are missing from storage")
    return web.FileResponse(
        path,
        headers={
            "Content-Disposition": "attachment; filename*=UTF-8''"
            + quote(row.fname.rsplit("/", 1)[-1])
        },
    )


# -- the file browser --------------------------------------------------------------


async def _visible_folder(s: AsyncSession, user: User, folder_id: int) -> Folder:
    folder = await s.get(Folder, folder_id)
    if folder is None or not await fsvc.folder_visible(s, user, folder.path):
        raise NotFound("Not found.")
    return folder


async def _folder_model(request: web.Request, s: AsyncSession, folder: Folder) -> schema.Folder:
    parent_id = None
    if folder.path:
        parent = await fsvc.folder_row(s, folder.path.rpartition("/")[0])
        parent_id = parent.id
    return ser.folder(origin(request), folder, parent_id)


FOLDER_FILTERS = (Filter("id", Folder.id, int), Filter("path", Folder.path))


@routes.get("/api/v1/filebrowser/", model=schema.Folder, many=True, name="chrisfolder-list")
@routes.get("/api/v1/filebrowser/search/", model=schema.Folder, many=True, filters=FOLDER_FILTERS)
async def list_folders(request: web.Request) -> web.Response:
    """The root folder, or (``search/?path=``) the folder at a path, as a one-item list."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        path = request.query.get("path", "").strip("/")
        found: list[schema.Folder] = []
        if request.path.endswith("/search/") and "id" in request.query:
            ident = request.query["id"]
            if not ident.isdigit():
                raise BadRequest.field("id", "must be an integer")
            folder = await s.get(Folder, int(ident))
            if folder is not None and await fsvc.folder_visible(s, user, folder.path):
                found.append(await _folder_model(request, s, folder))
        elif await fsvc.folder_visible(s, user, path) and await fsvc.folder_exists(s, user, path):
            found.append(await _folder_model(request, s, await fsvc.folder_row(s, path)))
        await s.commit()
        return list_page(request, found).response(request, found)


@routes.post("/api/v1/filebrowser/", model=schema.Folder, body=("path",))
async def create_folder(request: web.Request) -> web.Response:
    """Create an empty folder (``path`` under ``home/<username>/``)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        folder = await fsvc.create_folder(s, user, str(data.get("path", "")))
        body = await _folder_model(request, s, folder)
        await s.commit()
        return model_response(body, status=201)


@routes.get("/api/v1/filebrowser/{id:\\d+}/", model=schema.Folder)
async def get_folder(request: web.Request) -> web.Response:
    """One folder."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        folder = await _visible_folder(s, user, int_param(request, "id"))
        body = await _folder_model(request, s, folder)
        await s.commit()
        return model_response(body)


@routes.get("/api/v1/filebrowser/{id:\\d+}/children/", model=schema.Folder, many=True)
async def folder_children(request: web.Request) -> web.Response:
    """The child folders of a folder that the user may open."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        folder = await _visible_folder(s, user, int_param(request, "id"))
        names = await fsvc.folder_children(s, folder.path)
        if folder.path == "home":
            # every user's home exists, files or not
            names = sorted(set(names) | {user.username})
        children = []
        for name in names:
            path = f"{folder.path}/{name}" if folder.path else name
            if await fsvc.folder_visible(s, user, path):
                row = await fsvc.folder_row(s, path)
                children.append(ser.folder(origin(request), row, folder.id))
        await s.commit()
        page = list_page(request, children)
        return page.response(request, page.rows)


@routes.get("/api/v1/filebrowser/{id:\\d+}/files/", model=schema.FolderFile, many=True)
async def folder_files(request: web.Request) -> web.Response:
    """The files directly in a folder (link files excluded)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        folder = await _visible_folder(s, user, int_param(request, "id"))
        q = fsvc.files_in_folder(s, folder.path).where(
            col(StoredFile.fname).not_like("%" + fsvc.LINK_SUFFIX)
        )
        page = await fetch_page(request, s, q, col(StoredFile.id))
        base = origin(request)
        assert folder.id is not None
        return page.response(
            request,
            [ser.folder_file(base, f, await _owner_name(s, f), folder.id) for f in page.rows],
        )


@routes.get("/api/v1/filebrowser/{id:\\d+}/linkfiles/", model=schema.LinkFile, many=True)
async def folder_link_files(request: web.Request) -> web.Response:
    """The link files (``.chrislink``) directly in a folder, with the path each points to."""
    storage = request.app[STORAGE]
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        folder = await _visible_folder(s, user, int_param(request, "id"))
        q = fsvc.files_in_folder(s, folder.path).where(
            col(StoredFile.fname).like("%" + fsvc.LINK_SUFFIX)
        )
        page = await fetch_page(request, s, q, col(StoredFile.id))
        base = origin(request)
        assert folder.id is not None
        results = []
        for f in page.rows:
            target = await asyncio.to_thread(fsvc.read_link, storage, f)
            results.append(ser.link_file(base, f, target, await _owner_name(s, f), folder.id))
        return page.response(request, results)


async def _file_in_browser(request: web.Request, link: bool) -> tuple[StoredFile, int, str]:
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        row = await fsvc.readable_file(s, user, int_param(request, "id"))
        if row.fname.endswith(fsvc.LINK_SUFFIX) != link:
            raise NotFound("Not found.")
        parent = await fsvc.folder_row(s, row.fname.rpartition("/")[0])
        await s.commit()
        assert parent.id is not None
        return row, parent.id, await _owner_name(s, row)


@routes.get("/api/v1/filebrowser/files/{id:\\d+}/", model=schema.FolderFile)
async def get_folder_file(request: web.Request) -> web.Response:
    """One file of the file browser."""
    row, parent_id, owner = await _file_in_browser(request, link=False)
    return model_response(ser.folder_file(origin(request), row, owner, parent_id))


@routes.get("/api/v1/filebrowser/linkfiles/{id:\\d+}/", model=schema.LinkFile)
async def get_link_file(request: web.Request) -> web.Response:
    """One link file of the file browser."""
    row, parent_id, owner = await _file_in_browser(request, link=True)
    target = await asyncio.to_thread(fsvc.read_link, request.app[STORAGE], row)
    return model_response(ser.link_file(origin(request), row, target, owner, parent_id))


# -- download tokens ---------------------------------------------------------------

TOKEN_FILTERS = (Filter("id", DownloadToken.id, int), Filter("token", DownloadToken.token))


@routes.get(
    "/api/v1/downloadtokens/", model=schema.DownloadToken, many=True, name="downloadtoken-list"
)
@routes.get(
    "/api/v1/downloadtokens/search/",
    model=schema.DownloadToken,
    many=True,
    filters=TOKEN_FILTERS,
)
async def list_download_tokens(request: web.Request) -> web.Response:
    """The user's download tokens."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = select(DownloadToken).where(DownloadToken.owner_id == user.id)
        q = apply_filters(request, q, search_filters(request))
        page = await fetch_page(request, s, q, col(DownloadToken.id).desc())
        base = origin(request)
        return page.response(
            request, [ser.download_token(base, t, user.username) for t in page.rows]
        )


@routes.post("/api/v1/downloadtokens/", model=schema.DownloadToken)
async def create_download_token(request: web.Request) -> web.Response:
    """A new download token: append ``?download_token=<token>`` to a file URL."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        row = await usvc.create_download_token(s, user)
        await s.commit()
        return model_response(ser.download_token(origin(request), row, user.username), 201)


@routes.get("/api/v1/downloadtokens/{id:\\d+}/", model=schema.DownloadToken)
async def get_download_token(request: web.Request) -> web.Response:
    """One of the user's download tokens."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        row = await get_or_404(s, DownloadToken, int_param(request, "id"))
        if row.owner_id != user.id:
            raise NotFound("Not found.")
        return model_response(ser.download_token(origin(request), row, user.username))
