"""Handlers: feeds (list, search, rename, delete) and plugin instances."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube import schema
from cube.api import serialize as ser
from cube.api.common import (
    HUB,
    SCHEDULER,
    SESSIONS,
    STORAGE,
    anonymous_or,
    current_user,
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
from cube.api.render import ApiRoutes, Filter, apply_filters, search_filters
from cube.db.models import (
    Feed,
    ParameterValue,
    Plugin,
    PluginInstance,
    PluginInstanceSplit,
    PluginMeta,
    StoredFile,
    User,
    WorkflowInstance,
)
from cube.errors import BadRequest, NotFound
from cube.schema import InstanceStatus
from cube.services import feeds as fsvc
from cube.services import instances as isvc
from cube.services import lifecycle, splits

routes = ApiRoutes()
log = logging.getLogger(__name__)

#: Longest long-poll a client may ask for on an instance (s).
MAX_WAIT = 60.0

FEED_FILTERS = (
    Filter("id", Feed.id, int),
    Filter("name", Feed.name, op="icontains"),
    Filter("name_exact", Feed.name),
    Filter("name_startswith", Feed.name, op="startswith"),
    Filter("min_id", Feed.id, int, "gte"),
    Filter("max_id", Feed.id, int, "lte"),
    Filter("min_creation_date", Feed.creation_date, datetime, "gte"),
    Filter("max_creation_date", Feed.creation_date, datetime, "lte"),
    Filter("owner_username", User.username),
)


def _subtree(root_id: int) -> Any:
    """Condition: the instance is ``root_id`` or one of its descendants (recursive CTE)."""
    tree = (
        sa.select(col(PluginInstance.id).label("id"))
        .where(col(PluginInstance.id) == root_id)
        .cte("tree", recursive=True)
    )
    tree = tree.union_all(
        sa.select(col(PluginInstance.id)).where(col(PluginInstance.previous_id) == tree.c.id)
    )
    return col(PluginInstance.id).in_(sa.select(tree.c.id))


#: ChRIS's instance ``deletion_status`` values (its migration 0004).
DELETION_STATUSES = ("inactive", "pending", "failed")


def _deletion_status(value: str) -> Any:
    """Condition of the ``deletion_status`` filter.

    Deletion is synchronous here (see :class:`cube.schema.PluginInstance`):
    every instance that can be listed is ``inactive``, none is ``pending`` or
    ``failed``.

    Raises:
        BadRequest: not one of ChRIS's values.
    """
    if value not in DELETION_STATUSES:
        raise BadRequest.field(
            "deletion_status", f"one of {', '.join(DELETION_STATUSES)}, not {value!r}"
        )
    return sa.true() if value == "inactive" else sa.false()


INSTANCE_FILTERS = (
    Filter("id", PluginInstance.id, int),
    Filter("min_start_date", PluginInstance.start_date, datetime, "gte"),
    Filter("max_start_date", PluginInstance.start_date, datetime, "lte"),
    Filter("min_end_date", PluginInstance.end_date, datetime, "gte"),
    Filter("max_end_date", PluginInstance.end_date, datetime, "lte"),
    Filter("root_id", kind=int, where=_subtree),
    Filter("previous_id", PluginInstance.previous_id, int),
    Filter("title", PluginInstance.title, op="icontains"),
    Filter("status", PluginInstance.status),
    Filter(
        "active",
        kind=bool,
        where=lambda active: (
            col(PluginInstance.status).in_(isvc.ACTIVE)
            if active
            else col(PluginInstance.status).not_in(isvc.ACTIVE)
        ),
    ),
    Filter("owner_username", User.username),
    Filter("feed_id", PluginInstance.feed_id, int),
    Filter("plugin_id", PluginInstance.plugin_id, int),
    Filter("plugin_name", PluginMeta.name, op="icontains"),
    Filter("plugin_name_exact", PluginMeta.name),
    Filter("plugin_version", Plugin.version),
    Filter("plugin_type", PluginMeta.type),
    Filter(
        "workflow_id",
        kind=int,
        where=lambda workflow_id: col(PluginInstance.id).in_(
            select(WorkflowInstance.plugin_inst_id).where(
                WorkflowInstance.workflow_id == workflow_id
            )
        ),
    ),
    Filter("deletion_status", where=_deletion_status),
)

#: Instance filters on the owner, plugin and meta tables (joined when used).
JOINED_FILTERS = frozenset(
    {"owner_username", "plugin_name", "plugin_name_exact", "plugin_version", "plugin_type"}
)

#: Writable fields of an instance POST besides the plugin's own parameters.
INSTANCE_BODY = (
    "title",
    "previous_id",
    "compute_resource_name",
    "cpu_limit",
    "memory_limit",
    "number_of_workers",
    "gpu_limit",
)


def _feed_query(user: User) -> Any:
    return fsvc.visible_feeds(user).join(User, col(User.id) == col(Feed.owner_id))


@routes.get("/api/v1/search/", model=schema.Feed, many=True, filters=FEED_FILTERS)
async def search_feeds(request: web.Request) -> web.Response:
    """Search the feeds the user may read (own, shared with them, public)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = apply_filters(request, _feed_query(user), search_filters(request))
        page = await fetch_page(request, s, q, col(Feed.id).desc())
        base = origin(request)
        return page.response(request, await ser.feeds(base, s, page.rows))


@routes.get(
    "/api/v1/publicfeeds/", model=schema.Feed, many=True, public=True, name="publicfeed-list"
)
@routes.get(
    "/api/v1/publicfeeds/search/", model=schema.Feed, many=True, filters=FEED_FILTERS, public=True
)
async def public_feeds(request: web.Request) -> web.Response:
    """Public feeds; anyone, even anonymous, may list them."""
    async with request.app[SESSIONS]() as s:
        q = select(Feed).join(User, col(User.id) == col(Feed.owner_id))
        q = apply_filters(request, q.where(col(Feed.public).is_(True)), search_filters(request))
        page = await fetch_page(request, s, q, col(Feed.id).desc())
        base = origin(request)
        return page.response(request, await ser.feeds(base, s, page.rows))


@routes.get("/api/v1/{id:\\d+}/", model=schema.Feed, name="feed-detail", public=True)
async def get_feed(request: web.Request) -> web.Response:
    """A feed the user may read (a public feed: anyone, even anonymous)."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        feed = await anonymous_or(user, fsvc.readable_feed(s, user, int_param(request, "id")))
        return model_response(await ser.feed(origin(request), s, feed))


@routes.put("/api/v1/{id:\\d+}/", model=schema.Feed, body=("name", "public"))
async def rename_feed(request: web.Request) -> web.Response:
    """Rename a feed (``name``) or make it public (``public``); owner only."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        feed = await fsvc.rename(s, user, int_param(request, "id"), data)
        await s.commit()
        return model_response(await ser.feed(origin(request), s, feed))


@routes.delete("/api/v1/{id:\\d+}/")
async def delete_feed(request: web.Request) -> web.Response:
    """Delete a feed: stop its instances, delete their jobs at the sites,
    then its files (storage and rows), its annotations and the feed.

    Owner or staff only (shared readers get 403, anyone else 404).
    """
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


@routes.get(
    "/api/v1/{id:\\d+}/plugininstances/", model=schema.PluginInstance, many=True, public=True
)
async def feed_instances(request: web.Request) -> web.Response:
    """The instances of a feed the user may read (public feeds: anyone)."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        feed = await anonymous_or(user, fsvc.readable_feed(s, user, int_param(request, "id")))
        q = select(PluginInstance).where(PluginInstance.feed_id == feed.id)
        return await _instance_page(request, s, q)


@routes.get("/api/v1/{id:\\d+}/files/", model=schema.PluginInstanceFile, many=True, public=True)
async def feed_files(request: web.Request) -> web.Response:
    """The output files of every instance of a feed (legacy v5 link; public feeds: anyone)."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        feed = await anonymous_or(user, fsvc.readable_feed(s, user, int_param(request, "id")))
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


@routes.post(
    "/api/v1/plugins/{id:\\d+}/instances/", model=schema.PluginInstance, body=INSTANCE_BODY
)
async def create_instance(request: web.Request) -> web.Response:
    """Run a plugin: the standard fields plus one key per parameter name."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        inst = await isvc.create_instance(s, user, int_param(request, "id"), data)
        await s.commit()
        body = await ser.instance(origin(request), s, inst)
    request.app[SCHEDULER].kick()
    await request.app[HUB].changed()
    return model_response(body, status=201)


@routes.get("/api/v1/plugins/{id:\\d+}/instances/", model=schema.PluginInstance, many=True)
async def plugin_instances(request: web.Request) -> web.Response:
    """The user's own instances of a plugin."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = select(PluginInstance).where(
            PluginInstance.plugin_id == int_param(request, "id"), PluginInstance.owner_id == user.id
        )
        return await _instance_page(request, s, q)


@routes.get(
    "/api/v1/plugins/instances/",
    model=schema.PluginInstance,
    many=True,
    name="plugininstance-list",
)
@routes.get(
    "/api/v1/plugins/instances/search/",
    model=schema.PluginInstance,
    many=True,
    filters=INSTANCE_FILTERS,
)
async def list_instances(request: web.Request) -> web.Response:
    """Instances of the feeds the user may read; ``search/`` takes the reference's filters."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = select(PluginInstance)
        if not user.is_staff:
            readable = select(Feed.id).where(fsvc.visible_condition(user))
            q = q.where(col(PluginInstance.feed_id).in_(readable))
        filters = search_filters(request)
        if any(request.query.get(f.name) for f in filters if f.name in JOINED_FILTERS):
            # joined only when filtered on: the joins cost a page of 100,000 instances
            q = (
                q.join(User, col(User.id) == col(PluginInstance.owner_id))
                .join(Plugin, col(Plugin.id) == col(PluginInstance.plugin_id))
                .join(PluginMeta, col(PluginMeta.id) == col(Plugin.meta_id))
            )
        q = apply_filters(request, q, filters)
        return await _instance_page(request, s, q)


@routes.get("/api/v1/plugins/instances/{id:\\d+}/", model=schema.PluginInstance, public=True)
async def get_instance(request: web.Request) -> web.Response:
    """An instance (of a public feed: anyone may read it). ``?wait=S&status=X``
    long-polls: it answers as soon as the status differs from ``X``, or after
    ``S`` seconds (at most 60)."""
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
            user = await current_user(request, s)
            inst = await anonymous_or(user, isvc.visible_instance(s, user, inst_id))
            remaining = deadline - time.monotonic()
            if not known or inst.status != known or remaining <= 0:
                return model_response(await ser.instance(origin(request), s, inst))
        # changes in this process wake us at once; re-read each second for other
        # workers. A wake-up reads the status alone (every change of any
        # instance wakes every long-poll); the whole answer, with the access
        # check again, once it differs or the time is up.
        while remaining > 0:
            await hub.wait(min(remaining, 1.0))
            remaining = deadline - time.monotonic()
            async with request.app[SESSIONS]() as s:
                status = await isvc.instance_status(s, inst_id)
            if status != known:
                break


@routes.put(
    "/api/v1/plugins/instances/{id:\\d+}/", model=schema.PluginInstance, body=("title", "status")
)
async def update_instance(request: web.Request) -> web.Response:
    """Change the title, or cancel with ``status: cancelled``; an empty body returns it."""
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


@routes.get(
    "/api/v1/plugins/instances/{id:\\d+}/descendants/",
    model=schema.PluginInstance,
    many=True,
    public=True,
)
async def descendants(request: web.Request) -> web.Response:
    """The instance and every instance below it."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        root = await anonymous_or(user, isvc.visible_instance(s, user, int_param(request, "id")))
        assert root.id is not None
        q = select(PluginInstance).where(_subtree(root.id))
        return await _instance_page(request, s, q)


@routes.get(
    "/api/v1/plugins/instances/{id:\\d+}/parameters/",
    model=schema.ParameterValue,
    many=True,
    public=True,
)
async def instance_parameters(request: web.Request) -> web.Response:
    """The parameter values an instance was given."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        inst = await anonymous_or(user, isvc.visible_instance(s, user, int_param(request, "id")))
        assert inst.id is not None
        pairs = await isvc.parameter_values(s, inst.id)
        page = list_page(request, pairs)
        base = origin(request)
        return page.response(request, [ser.parameter_value(base, v, p) for v, p in page.rows])


@routes.get(
    "/api/v1/plugins/{type:(string|integer|float|boolean|path|unextpath)}-parameter/{id:\\d+}/",
    model=schema.ParameterValue,
    public=True,
)
async def get_parameter_value(request: web.Request) -> web.Response:
    """One parameter value of an instance."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        value = await anonymous_or(user, get_or_404(s, ParameterValue, int_param(request, "id")))
        await anonymous_or(user, isvc.visible_instance(s, user, value.plugin_inst_id))
        for v, p in await isvc.parameter_values(s, value.plugin_inst_id):
            if v.id == value.id:
                return model_response(ser.parameter_value(origin(request), v, p))
        raise NotFound("Not found.")


@routes.get(
    "/api/v1/plugins/instances/{id:\\d+}/files/",
    model=schema.PluginInstanceFile,
    many=True,
    public=True,
)
async def instance_files(request: web.Request) -> web.Response:
    """The output files of an instance."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        inst = await anonymous_or(user, isvc.visible_instance(s, user, int_param(request, "id")))
        q = select(StoredFile).where(StoredFile.plugin_inst_id == inst.id)
        page = await fetch_page(request, s, q, col(StoredFile.id))
        base = origin(request)
        return page.response(request, [ser.instance_file(base, f, inst.feed_id) for f in page.rows])


@routes.get(
    "/api/v1/plugins/instances/{id:\\d+}/splits/",
    model=schema.PluginInstanceSplit,
    many=True,
    public=True,
)
async def instance_splits(request: web.Request) -> web.Response:
    """The splits of an instance (of a public feed: anyone may list them)."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        _, q = await anonymous_or(user, splits.splits_of(s, user, int_param(request, "id")))
        page = await fetch_page(request, s, q, col(PluginInstanceSplit.id))
        base = origin(request)
        return page.response(request, [ser.split(base, sp) for sp in page.rows])


@routes.post(
    "/api/v1/plugins/instances/{id:\\d+}/splits/",
    model=schema.PluginInstanceSplit,
    body=("filter", "compute_resource_name"),
)
async def create_split(request: web.Request) -> web.Response:
    """Split an instance: one ``pl-topologicalcopy`` child per comma-separated
    ``filter`` expression (the feed's owner)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        made = await splits.create_split(s, user, int_param(request, "id"), data)
        await s.commit()
        body = ser.split(origin(request), made)
    request.app[SCHEDULER].kick()
    await request.app[HUB].changed()
    return model_response(body, status=201)


@routes.get(
    "/api/v1/plugins/instances/splits/{id:\\d+}/", model=schema.PluginInstanceSplit, public=True
)
async def get_split(request: web.Request) -> web.Response:
    """One split (of a public feed's instance: anyone may read it)."""
    async with request.app[SESSIONS]() as s:
        user = await current_user(request, s)
        made = await anonymous_or(user, splits.visible_split(s, user, int_param(request, "id")))
        return model_response(ser.split(origin(request), made))


@routes.delete("/api/v1/plugins/instances/{id:\\d+}/")
async def delete_instance(request: web.Request) -> web.Response:
    """Delete a ds/ts instance with its descendants and their files (fs: delete
    the feed), and the jobs that their sites may still hold."""
    inst_id = int_param(request, "id")
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        jobs = await fsvc.delete_instance(s, request.app[STORAGE], user, inst_id)
        await s.commit()
    scheduler = request.app[SCHEDULER]
    # a worker here may be deleting one of those jobs: it stops, the site is told here
    scheduler.stop_instance([i for _, i in jobs])
    failed = await scheduler.delete_jobs(jobs)
    if failed:
        log.warning("instance %s: jobs of instances %s remain at their sites", inst_id, failed)
    await request.app[HUB].changed()
    return web.Response(status=204)


__all__ = ["InstanceStatus", "routes"]
