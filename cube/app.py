"""CUBE's app factory: database, storage, scheduler and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from cube.api import (
    feeds,
    filegrants,
    files,
    openapi,
    pacs,
    pipelines,
    plugins,
    root,
    social,
    users,
)
from cube.api.common import (
    HUB,
    REGISTRY,
    SCHEDULER,
    SESSIONS,
    SETTINGS,
    STORAGE,
    error_middleware,
)
from cube.api.render import negotiation_middleware
from cube.db.engine import create_schema, make_engine, make_sessionmaker
from cube.registry import RegistryClient
from cube.scheduler import Scheduler, StatusHub
from cube.services.users import ensure_admin
from cube.settings import CubeSettings
from cube.storage import FilesystemStorage

log = logging.getLogger(__name__)


def create_app(settings: CubeSettings | None = None) -> web.Application:
    """Build CUBE's aiohttp application; resources start in ``cleanup_ctx``."""
    settings = settings or CubeSettings()
    app = web.Application(
        middlewares=[error_middleware, negotiation_middleware], client_max_size=1 << 20
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    app.cleanup_ctx.append(_registry)
    # root first: its routes (e.g. the feed list at /api/v1/) are the most general
    for table in (
        root.routes,
        users.routes,
        plugins.routes,
        feeds.routes,
        pipelines.routes,
        social.routes,
        files.routes,
        filegrants.routes,
        pacs.routes,
        openapi.routes,
    ):
        app.router.add_routes(table)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url())
    await create_schema(engine)
    sessions = make_sessionmaker(engine)
    async with sessions() as s:
        await ensure_admin(
            s,
            settings.admin_username,
            settings.admin_password.get_secret_value(),
            settings.admin_email,
        )
        await s.commit()
    storage = FilesystemStorage(settings.resolved_storage_dir())
    hub = StatusHub()
    scheduler = Scheduler(settings, sessions, storage, hub)
    app[SESSIONS] = sessions
    app[STORAGE] = storage
    app[HUB] = hub
    app[SCHEDULER] = scheduler
    task = asyncio.create_task(scheduler.run()) if settings.run_scheduler else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await scheduler.close()  # a feed deletion may have opened site clients
        await engine.dispose()


async def _registry(app: web.Application) -> AsyncIterator[None]:
    """The registry client (plugin registration by image reference) and its session."""
    settings = app[SETTINGS]
    async with RegistryClient(
        credentials=settings.registry_credentials,
        insecure=settings.registry_insecure,
        timeout=settings.registry_timeout_seconds,
    ) as registry:
        app[REGISTRY] = registry
        yield
