"""Handlers: feeds, plugin instances (create, read, long-poll, cancel) and files."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from sqlmodel import col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.api import serialize as ser
from cube.api.common import (
    HUB,
    SCHEDULER,
    SESSIONS,
    SETTINGS,
    STORAGE,
    fetch_keyed_page,
    fetch_page,
    get_or_404,
    int_param,
    list_page,
    model_response,
    origin,
    read_body,
    require_user,
)
from cube.db.models import Feed, ParameterValue, PluginInstance, StoredFile, User
from cube.errors import BadRequest, NotFound
from cube.schema import InstanceStatus
from cube.services import files as fsvc
from cube.services import instances as isvc
from cube.services import lifecycle

routes = web.RouteTableDef()
log = logging.getLogger(__name__)

#: Longest long-poll a client may ask for on an instance (s).
MAX_WAIT = 60.0


def _visible_feeds(user: User) -> Any:
    q = select(Feed)
    if not user.is_staff:
        q = q.where(or_(Feed.owner_id == user.id, col(Feed.public).is_(True)))
    return q


@routes.get("/api/v1/")
async def list_feeds(request: web.Request) -> web.Response:
    """The feed list (the API root of ChRIS)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = select(Feed).where(Feed.owner_id == user.id)
        page = await fetch_page(request, s, q, col(Feed.id).desc())
        base = origin(request)
        return page.response(request, await ser.feeds(base, s, page.rows))


async def _feed(s: AsyncSession, user: User, feed_id: int) -> Feed:
    feed = (await s.exec(_visible_feeds(user).where(Feed.id == feed_id))).first()
    if feed is None:
        raise NotFound("Not found.")
    return feed  # type: ignore[no-any-return]


@routes.get("/api/v1/{id:\\d+}/")
async def get_feed(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        feed = await _feed(s, user, int_param(request, "id"))
        return model_response(await ser.feed(origin(request), s, feed))


@routes.put("/api/v1/{id:\\d+}/")
async def rename_feed(request: web.Request) -> web.Response:
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        feed = await _feed(s, user, int_param(request, "id"))
        if feed.owner_id != user.id and not user.is_staff:
            raise NotFound("Not found.")
        if "name" in data:
            name = str(data["name"])
            if len(name) > 200:
                raise BadRequest.field("name", "at most 200 characters")
            feed.name = name
        s.add(feed)
        await s.commit()
        return model_response(await ser.feed(origin(request), s, feed))


@routes.delete("/api/v1/{id:\\d+}/")
async def delete_feed(request: web.Request) -> web.Response:
    """Delete a feed: stop its instances, delete their jobs at the sites,
    then its files (storage and rows) and the feed."""
    sessions, scheduler = request.app[SESSIONS], request.app[SCHEDULER]
    async with sessions() as s:
        user = await require_user(request, s)
        deletion = await lifecycle.begin_feed_deletion(s, user, int_param(request, "id"))
        await s.commit()
    scheduler.stop_instance(deletion.cancelled)
    failed = await scheduler.delete_jobs(deletion.jobs)
    if failed:
        log.warning("feed %s: jobs of instances %s remain at their sites", deletion.feed_id, failed)
    async with sessions() as s:
        await lifecycle.finish_feed_deletion(s, deletion)
        await s.commit()
    await request.app[STORAGE].delete_tree(deletion.folder)
    await request.app[HUB].changed()
    return web.Response(status=204)


@routes.get("/api/v1/{id:\\d+}/plugininstances/")
async def feed_instances(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        feed = await _feed(s, user, int_param(request, "id"))
        q = select(PluginInstance).where(PluginInstance.feed_id == feed.id)
        return await _instance_page(request, s, q)


@routes.get("/api/v1/{id:\\d+}/files/")
async def feed_files(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        feed = await _feed(s, user, int_param(request, "id"))
        q = (
            select(StoredFile)
            .join(PluginInstance, col(PluginInstance.id) == col(StoredFile.plugin_inst_id))
            .where(PluginInstance.feed_id == feed.id)
        )
        page = await fetch_page(request, s, q, col(StoredFile.id))
        base = origin(request)
        assert feed.id is not None
        return page.response(request, [ser.instance_file(base, f, feed.id) for f in page.rows])


async def _instance_page(request: web.Request, s: AsyncSession, q: Any) -> web.Response:
    page = await fetch_keyed_page(request, s, q, col(PluginInstance.id), descending=True)
    base = origin(request)
    return page.response(request, await ser.instances(base, s, page.rows))


@routes.post("/api/v1/plugins/{id:\\d+}/instances/")
async def create_instance(request: web.Request) -> web.Response:
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        inst = await isvc.create_instance(s, user, int_param(request, "id"), data)
        await s.commit()
        body = await ser.instance(origin(request), s, inst)
    request.app[SCHEDULER].kick()
    await request.app[HUB].changed()
    return model_response(body, status=201)


@routes.get("/api/v1/plugins/{id:\\d+}/instances/")
async def plugin_instances(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = select(PluginInstance).where(
            PluginInstance.plugin_id == int_param(request, "id"), PluginInstance.owner_id == user.id
        )
        return await _instance_page(request, s, q)


@routes.get("/api/v1/plugins/instances/")
@routes.get("/api/v1/plugins/instances/search/")
async def list_instances(request: web.Request) -> web.Response:
    """Instances of the user; ``search/`` filters by id, status, feed_id,
    previous_id, plugin_id, plugin_name, title."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = select(PluginInstance)
        if not user.is_staff:
            q = q.where(PluginInstance.owner_id == user.id)
        if request.path.endswith("/search/"):
            for key, column in (
                ("id", PluginInstance.id),
                ("feed_id", PluginInstance.feed_id),
                ("previous_id", PluginInstance.previous_id),
                ("plugin_id", PluginInstance.plugin_id),
            ):
                if (v := request.query.get(key)) is not None:
                    if not v.isdigit():
                        raise BadRequest.field(key, "must be an integer")
                    q = q.where(column == int(v))
            if v := request.query.get("status"):
                q = q.where(PluginInstance.status == v)
            if v := request.query.get("title"):
                q = q.where(col(PluginInstance.title).contains(v))
        return await _instance_page(request, s, q)


@routes.get("/api/v1/plugins/instances/{id:\\d+}/")
async def get_instance(request: web.Request) -> web.Response:
    """An instance. ``?wait=S&status=X`` long-polls: it answers as soon as the
    status differs from ``X``, or after ``S`` seconds (at most 60)."""
    inst_id = int_param(request, "id")
    known = request.query.get("status")
    try:
        wait = min(float(request.query.get("wait", 0)), MAX_WAIT)
    except ValueError as exc:
        raise BadRequest.field("wait", "must be a number of seconds") from exc
    deadline = time.monotonic() + wait
    hub = request.app[HUB]
    while True:
        async with request.app[SESSIONS]() as s:
            user = await require_user(request, s)
            inst = await isvc.visible_instance(s, user, inst_id)
            remaining = deadline - time.monotonic()
            if not known or inst.status != known or remaining <= 0:
                return model_response(await ser.instance(origin(request), s, inst))
        # changes in this process wake us at once; re-read each second for other workers
        await hub.wait(min(remaining, 1.0))


@routes.put("/api/v1/plugins/instances/{id:\\d+}/")
async def update_instance(request: web.Request) -> web.Response:
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        inst, cancelled = await isvc.update_instance(s, user, int_param(request, "id"), data)
        await s.commit()
        body = await ser.instance(origin(request), s, inst)
    if cancelled:
        request.app[SCHEDULER].stop_instance(cancelled)
        await request.app[HUB].changed()
    return model_response(body)


@routes.get("/api/v1/plugins/instances/{id:\\d+}/descendants/")
async def descendants(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        root = await isvc.visible_instance(s, user, int_param(request, "id"))
        ids, frontier = [], [root.id]
        while frontier:
            current = frontier.pop(0)
            ids.append(current)
            kids = await s.exec(
                select(PluginInstance.id).where(PluginInstance.previous_id == current)
            )
            frontier.extend(kids.all())
        q = select(PluginInstance).where(col(PluginInstance.id).in_(ids))
        return await _instance_page(request, s, q)


@routes.get("/api/v1/plugins/instances/{id:\\d+}/parameters/")
async def instance_parameters(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        inst = await isvc.visible_instance(s, user, int_param(request, "id"))
        assert inst.id is not None
        pairs = await isvc.parameter_values(s, inst.id)
        page = list_page(request, pairs)
        base = origin(request)
        return page.response(request, [ser.parameter_value(base, v, p) for v, p in page.rows])


@routes.get(
    "/api/v1/plugins/{type:(string|integer|float|boolean|path|unextpath)}-parameter/{id:\\d+}/"
)
async def get_parameter_value(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        value = await get_or_404(s, ParameterValue, int_param(request, "id"))
        await isvc.visible_instance(s, user, value.plugin_inst_id)
        for v, p in await isvc.parameter_values(s, value.plugin_inst_id):
            if v.id == value.id:
                return model_response(ser.parameter_value(origin(request), v, p))
        raise NotFound("Not found.")


@routes.get("/api/v1/plugins/instances/{id:\\d+}/files/")
async def instance_files(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        inst = await isvc.visible_instance(s, user, int_param(request, "id"))
        q = select(StoredFile).where(StoredFile.plugin_inst_id == inst.id)
        page = await fetch_page(request, s, q, col(StoredFile.id))
        base = origin(request)
        return page.response(request, [ser.instance_file(base, f, inst.feed_id) for f in page.rows])


# -- user files ------------------------------------------------------------------


@routes.get("/api/v1/userfiles/")
async def list_userfiles(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = select(StoredFile).where(
            StoredFile.owner_id == user.id, col(StoredFile.plugin_inst_id).is_(None)
        )
        page = await fetch_page(request, s, q, col(StoredFile.id))
        base = origin(request)
        return page.response(request, [ser.user_file(base, f, user.username) for f in page.rows])


@routes.post("/api/v1/userfiles/")
async def upload_userfile(request: web.Request) -> web.Response:
    """Multipart upload: ``upload_path`` (a field) and ``fname`` (the file),
    in either order; the file is streamed to storage, never held in memory."""
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


@routes.get("/api/v1/userfiles/{id:\\d+}/")
async def get_userfile(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        row = await fsvc.readable_file(s, user, int_param(request, "id"))
        owner = await s.get(User, row.owner_id)
        assert owner is not None
        return model_response(ser.user_file(origin(request), row, owner.username))


@routes.get("/api/v1/files/{id:\\d+}/")
async def get_file(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        row = await fsvc.readable_file(s, user, int_param(request, "id"))
        if row.plugin_inst_id is None:
            owner = await s.get(User, row.owner_id)
            assert owner is not None
            return model_response(ser.user_file(origin(request), row, owner.username))
        inst = await s.get(PluginInstance, row.plugin_inst_id)
        assert inst is not None
        return model_response(ser.instance_file(origin(request), row, inst.feed_id))


@routes.get("/api/v1/userfiles/{id:\\d+}/{name}")
@routes.get("/api/v1/files/{id:\\d+}/{name}")
async def download(request: web.Request) -> web.StreamResponse:
    """Stream a file's bytes (``file_resource`` links)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        row = await fsvc.readable_file(s, user, int_param(request, "id"))
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


__all__ = ["InstanceStatus", "routes"]
