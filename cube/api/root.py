"""The API root (the user's feed list with every resource link) and the ChRIS instance.

ChRIS clients find every resource through the root's links (python-chrisclient
``set_urls``, aiochris), so a link is offered only when a route of that name
is registered: a listed link never leads to a 404. Routes registered by other
modules join the root by using the names in :data:`ROOT_LINKS`.
"""

from __future__ import annotations

import uuid

from aiohttp import web
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from cube import schema
from cube.api import serialize as ser
from cube.api.common import (
    SESSIONS,
    SETTINGS,
    fetch_page,
    int_param,
    model_response,
    origin,
    require_user,
)
from cube.api.render import ApiRoutes
from cube.db.models import ChrisInstance, Feed, User
from cube.errors import NotFound
from cube.services import feeds as fsvc

routes = ApiRoutes()

#: Root link relation → name of the route it points to. ``pipelines``,
#: ``pipelinesourcefiles``, ``workflows`` and ``pipeline_instances`` appear once
#: the pipelines module registers routes named ``pipeline-list``,
#: ``pipelinesourcefile-list`` and ``workflow-list``.
ROOT_LINKS: dict[str, str] = {
    "chrisinstance": "chrisinstance-detail",
    "compute_resources": "computeresource-list",
    "plugin_metas": "pluginmeta-list",
    "plugins": "plugin-list",
    "plugin_instances": "plugininstance-list",
    "pipelines": "pipeline-list",
    "pipelinesourcefiles": "pipelinesourcefile-list",
    "workflows": "workflow-list",
    "tags": "tag-list",
    "userfiles": "userfile-list",
    "filebrowser": "chrisfolder-list",
    "pacs": "pacs-list",
    "pacsqueries": "pacsquery-list",
    "pacsseries": "pacsseries-list",
    "pacsfiles": "pacsfile-list",
    "download_tokens": "downloadtoken-list",
    "groups": "group-list",
    "user": "user-detail",
    "admin": "admin-plugin-list",
    # older links (CUBE ≤ v5) that clients still look up
    "files": "file-list",
    "public_feeds": "publicfeed-list",
    "pipeline_instances": "workflow-list",
    "servicefiles": "servicefile-list",
}
#: The one row of ``chris_instance``.
CHRIS_INSTANCE_ID = 1


def root_links(request: web.Request, user: User) -> dict[str, str]:
    """The resource links of the API root that this user may follow."""
    router = request.app.router
    named = router.named_resources()
    base = origin(request)
    links: dict[str, str] = {}
    for rel, name in ROOT_LINKS.items():
        if name not in named or (rel == "admin" and not user.is_staff):
            continue
        if rel == "user":
            path = named[name].url_for(id=str(user.id))
        elif rel == "chrisinstance":
            path = named[name].url_for(id=str(CHRIS_INSTANCE_ID))
        else:
            path = named[name].url_for()
        links[rel] = base + str(path)
    return links


@routes.get("/api/v1/", model=schema.Feed, many=True, name="feed-list")
async def list_feeds(request: web.Request) -> web.Response:
    """The API root: the user's own feeds, with a link to every resource."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        q = fsvc.visible_feeds(user).where(Feed.owner_id == user.id)
        page = await fetch_page(request, s, q, col(Feed.id).desc())
        base = origin(request)
        return page.response(
            request, await ser.feeds(base, s, page.rows), root_links(request, user)
        )


async def chris_instance(session: AsyncSession, job_id_prefix: str) -> ChrisInstance:
    """This CUBE's identity row, created (with a fresh uuid) on first use."""
    row = await session.get(ChrisInstance, CHRIS_INSTANCE_ID)
    if row is not None:
        return row
    row = ChrisInstance(id=CHRIS_INSTANCE_ID, uuid=str(uuid.uuid4()), job_id_prefix=job_id_prefix)
    session.add(row)
    try:
        await session.commit()
    except IntegrityError:
        # another request created it first
        await session.rollback()
        found = await session.get(ChrisInstance, CHRIS_INSTANCE_ID)
        assert found is not None
        return found
    return row


@routes.get(
    "/api/v1/chrisinstance/{id:\\d+}/",
    model=schema.ChrisInstance,
    name="chrisinstance-detail",
    public=True,
)
async def get_chris_instance(request: web.Request) -> web.Response:
    """This CUBE's name, uuid and job id prefix (readable without credentials)."""
    if int_param(request, "id") != CHRIS_INSTANCE_ID:
        raise NotFound("Not found.")
    async with request.app[SESSIONS]() as s:
        row = await chris_instance(s, request.app[SETTINGS].job_id_prefix)
        return model_response(ser.chris_instance(origin(request), row))
