"""Handlers: auth token, compute resources, plugins, plugin metas and the admin API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import BodyPartReader, web
from sqlmodel import col, select

from cube import schema
from cube.api import serialize as ser
from cube.api.common import (
    REGISTRY,
    SESSIONS,
    fetch_page,
    get_or_404,
    int_param,
    list_page,
    model_response,
    origin,
    read_body,
    require_staff,
    require_user,
)
from cube.api.render import ApiRoutes, Filter, apply_filters, search_filters
from cube.db.models import ComputeResource, Plugin, PluginMeta, PluginParameter
from cube.errors import BadRequest
from cube.schema import AuthToken
from cube.services import plugins as psvc
from cube.services import users as usvc
from cube.services.plugin_images import descriptor_from_image

routes = ApiRoutes()

#: A descriptor is small JSON; anything larger is refused while reading.
MAX_DESCRIPTOR_BYTES = 1 << 20
#: Longest image reference accepted (a 255-character name, a tag and a digest fit).
MAX_IMAGE_REFERENCE = 512


@routes.get("/api/v1/health/", public=True)
async def health(request: web.Request) -> web.Response:
    """Liveness: the process serves requests (no database round trip)."""
    return web.json_response({"health": "OK"})


@routes.post(
    "/api/v1/auth-token/",
    model=AuthToken,
    body=("username", "password"),
    name="auth-token",
    public=True,
)
async def auth_token(request: web.Request) -> web.Response:
    """Exchange a username and password for the user's API token (always JSON)."""
    data = await read_body(request)
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise BadRequest(
            "username and password are required",
            fields={
                k: ["This field is required."] for k in ("username", "password") if not data.get(k)
            },
        )
    async with request.app[SESSIONS]() as s:
        user = await usvc.authenticate(s, username, password)
        token = await usvc.get_or_create_token(s, user)
        await s.commit()
    # always JSON, whatever the Accept header: DRF's obtain_auth_token has only
    # the JSON renderer, and clients (python-chrisclient, curl scripts) rely on it
    return web.json_response(AuthToken(token=token).model_dump())


COMPUTE_FILTERS = (
    Filter("id", ComputeResource.id, int),
    Filter("name", ComputeResource.name, op="icontains"),
    Filter("name_exact", ComputeResource.name),
    Filter("description", ComputeResource.description, op="icontains"),
)


@routes.get(
    "/api/v1/computeresources/",
    model=schema.ComputeResource,
    many=True,
    name="computeresource-list",
)
@routes.get(
    "/api/v1/computeresources/search/",
    model=schema.ComputeResource,
    many=True,
    filters=COMPUTE_FILTERS,
)
async def list_compute(request: web.Request) -> web.Response:
    """Compute resources plugins can run on."""
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        q = apply_filters(request, select(ComputeResource), search_filters(request))
        page = await fetch_page(request, s, q, col(ComputeResource.id))
        base = origin(request)
        return page.response(request, [ser.compute_resource(base, r) for r in page.rows])


@routes.get("/api/v1/computeresources/{id:\\d+}/", model=schema.ComputeResource)
async def get_compute(request: web.Request) -> web.Response:
    """One compute resource."""
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        r = await get_or_404(s, ComputeResource, int_param(request, "id"))
        return model_response(ser.compute_resource(origin(request), r))


@routes.post(
    "/chris-admin/api/v1/computeresources/",
    model=schema.ComputeResource,
    body=(
        "name",
        "compute_url",
        "compute_auth_url",
        "compute_user",
        "compute_password",
        "description",
        "max_job_exec_seconds",
    ),
)
async def admin_create_compute(request: web.Request) -> web.Response:
    """Add a compute resource (staff)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        await require_staff(request, s)
        try:
            max_exec = int(data.get("max_job_exec_seconds", -1))
        except (TypeError, ValueError) as exc:
            raise BadRequest.field("max_job_exec_seconds", "must be an integer") from exc
        r = await psvc.create_compute_resource(
            s,
            name=str(data.get("name", "")),
            compute_url=str(data.get("compute_url", "")),
            compute_user=str(data.get("compute_user", "")),
            compute_password=str(data.get("compute_password", "")),
            compute_auth_url=str(data.get("compute_auth_url", "")),
            description=str(data.get("description", "")),
            max_job_exec_seconds=max_exec,
            gpus=data.get("gpus"),
            max_concurrent_jobs=data.get("max_concurrent_jobs"),
        )
        await s.commit()
        return model_response(ser.compute_resource(origin(request), r), status=201)


@dataclass(frozen=True, slots=True)
class PluginForm:
    """What an admin sent to register a plugin: a descriptor or an image reference."""

    descriptor: bytes | str | dict[str, object] | None
    image: str | None
    compute_names: list[str]


async def read_plugin_form(request: web.Request) -> PluginForm:
    """Parse a plugin registration: multipart (``fname``, ``image``, ``compute_names``)
    or JSON (``descriptor``, ``image``, ``compute_names`` as a string or a list).

    Raises:
        BadRequest: neither or both of a descriptor and an image, or oversized fields.
    """
    descriptor: bytes | str | dict[str, object] | None = None
    image: str | None = None
    compute_names = ""
    if request.content_type == "multipart/form-data":
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "fname":
                raw = bytearray()
                while chunk := await part.read_chunk(64 * 1024):
                    raw += chunk
                    if len(raw) > MAX_DESCRIPTOR_BYTES:
                        raise BadRequest.field("fname", "a descriptor is at most 1 MiB")
                descriptor = bytes(raw)
            elif part.name == "image":
                image = await part.text()
            elif part.name == "compute_names":
                compute_names = await part.text()
    else:
        data = await read_body(request)
        raw_desc = data.get("descriptor")
        # a string is descriptor JSON text; the parser reports what is wrong with it
        descriptor = raw_desc if isinstance(raw_desc, dict | str) else None
        raw_image = data.get("image")
        if raw_image is not None and not isinstance(raw_image, str):
            raise BadRequest.field("image", "an image reference is a string")
        image = raw_image
        names = data.get("compute_names", "")
        compute_names = ",".join(names) if isinstance(names, list) else str(names)
    if image is not None:
        image = image.strip()
        if len(image) > MAX_IMAGE_REFERENCE:
            raise BadRequest.field("image", f"at most {MAX_IMAGE_REFERENCE} characters")
        if descriptor is not None:
            raise BadRequest("give a descriptor (fname) or an image reference, not both")
    elif descriptor is None:
        raise BadRequest.field(
            "fname", "a plugin descriptor JSON file (or an image reference) is required"
        )
    names_list = [n.strip() for n in compute_names.split(",") if n.strip()]
    return PluginForm(descriptor, image, names_list)


@routes.post("/chris-admin/api/v1/", model=schema.Plugin, body=("fname", "image", "compute_names"))
async def admin_register_plugin(request: web.Request) -> web.Response:
    """Register a plugin: multipart ``fname`` (descriptor file) + ``compute_names``,
    or JSON ``{"descriptor": {...}, "compute_names": "a,b"}``; instead of a
    descriptor, an ``image`` reference (multipart field or JSON key) whose
    ``org.chrisproject.descriptor`` label is read from its registry."""
    form = await read_plugin_form(request)
    descriptor = form.descriptor
    if form.image is not None:
        # staff first: this makes CUBE contact a registry of the caller's choosing
        async with request.app[SESSIONS]() as s:
            await require_staff(request, s)
        if not form.compute_names:
            raise BadRequest.field("compute_names", "at least one compute resource is required")
        descriptor = await descriptor_from_image(request.app[REGISTRY], form.image)
    assert descriptor is not None
    async with request.app[SESSIONS]() as s:
        await require_staff(request, s)
        plugin = await psvc.register_plugin(s, descriptor, form.compute_names)
        await s.commit()
        meta = await s.get(PluginMeta, plugin.meta_id)
        assert meta is not None
        return model_response(ser.plugin(origin(request), plugin, meta), status=201)


def _plugin_query() -> Any:
    return select(Plugin, PluginMeta).join(PluginMeta, col(PluginMeta.id) == col(Plugin.meta_id))


PLUGIN_FILTERS = (
    Filter("id", Plugin.id, int),
    Filter("name", PluginMeta.name, op="icontains"),
    Filter("name_exact", PluginMeta.name),
    Filter("version", Plugin.version),
    Filter("dock_image", Plugin.dock_image),
    Filter("type", PluginMeta.type),
    Filter("category", PluginMeta.category, op="icontains"),
    Filter("title", PluginMeta.title, op="icontains"),
    Filter("description", Plugin.description, op="icontains"),
    Filter("min_creation_date", Plugin.creation_date, datetime, "gte"),
    Filter("max_creation_date", Plugin.creation_date, datetime, "lte"),
)


@routes.get("/api/v1/plugins/", model=schema.Plugin, many=True, name="plugin-list")
@routes.get("/api/v1/plugins/search/", model=schema.Plugin, many=True, filters=PLUGIN_FILTERS)
@routes.get("/chris-admin/api/v1/", model=schema.Plugin, many=True, name="admin-plugin-list")
async def list_plugins(request: web.Request) -> web.Response:
    """Registered plugins (the admin URL lists them to staff only)."""
    q = apply_filters(request, _plugin_query(), search_filters(request))
    async with request.app[SESSIONS]() as s:
        if request.path.startswith("/chris-admin/"):
            await require_staff(request, s)
        else:
            await require_user(request, s)
        page = await fetch_page(request, s, q, col(Plugin.id))
        base = origin(request)
        return page.response(request, [ser.plugin(base, p, m) for p, m in page.rows])


META_FILTERS = (
    Filter("id", PluginMeta.id, int),
    Filter("name", PluginMeta.name, op="icontains"),
    Filter("name_exact", PluginMeta.name),
    Filter("type", PluginMeta.type),
    Filter("category", PluginMeta.category, op="icontains"),
    Filter("title", PluginMeta.title, op="icontains"),
    Filter("authors", PluginMeta.authors, op="icontains"),
)


@routes.get("/api/v1/plugins/metas/", model=schema.PluginMeta, many=True, name="pluginmeta-list")
@routes.get(
    "/api/v1/plugins/metas/search/", model=schema.PluginMeta, many=True, filters=META_FILTERS
)
async def list_metas(request: web.Request) -> web.Response:
    """Plugin metas: what all versions of a plugin share."""
    q = apply_filters(request, select(PluginMeta), search_filters(request))
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        page = await fetch_page(request, s, q, col(PluginMeta.id))
        base = origin(request)
        return page.response(request, [ser.plugin_meta(base, m) for m in page.rows])


@routes.get("/api/v1/plugins/metas/{id:\\d+}/", model=schema.PluginMeta)
async def get_meta(request: web.Request) -> web.Response:
    """One plugin meta."""
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        meta = await get_or_404(s, PluginMeta, int_param(request, "id"))
        return model_response(ser.plugin_meta(origin(request), meta))


@routes.get("/api/v1/plugins/metas/{id:\\d+}/plugins/", model=schema.Plugin, many=True)
async def meta_plugins(request: web.Request) -> web.Response:
    """Every version of the plugin of a meta."""
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        meta = await get_or_404(s, PluginMeta, int_param(request, "id"))
        q = _plugin_query().where(Plugin.meta_id == meta.id)
        page = await fetch_page(request, s, q, col(Plugin.id))
        base = origin(request)
        return page.response(request, [ser.plugin(base, p, m) for p, m in page.rows])


@routes.get("/api/v1/plugins/{id:\\d+}/", model=schema.Plugin)
async def get_plugin(request: web.Request) -> web.Response:
    """One plugin."""
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        p, meta = await psvc.get_plugin(s, int_param(request, "id"))
        return model_response(ser.plugin(origin(request), p, meta))


@routes.get("/api/v1/plugins/{id:\\d+}/parameters/", model=schema.PluginParameter, many=True)
async def plugin_parameters(request: web.Request) -> web.Response:
    """The parameters of a plugin."""
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        await psvc.get_plugin(s, int_param(request, "id"))
        params = await psvc.plugin_parameters(s, int_param(request, "id"))
        page = list_page(request, params)
        base = origin(request)
        return page.response(request, [ser.parameter(base, p) for p in page.rows])


@routes.get("/api/v1/plugins/parameters/{id:\\d+}/", model=schema.PluginParameter)
async def get_parameter(request: web.Request) -> web.Response:
    """One plugin parameter."""
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        p = await get_or_404(s, PluginParameter, int_param(request, "id"))
        return model_response(ser.parameter(origin(request), p))


@routes.get("/api/v1/plugins/{id:\\d+}/computeresources/", model=schema.ComputeResource, many=True)
async def plugin_compute(request: web.Request) -> web.Response:
    """The compute resources a plugin may run on."""
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        await psvc.get_plugin(s, int_param(request, "id"))
        rows = await psvc.plugin_resources(s, int_param(request, "id"))
        page = list_page(request, rows)
        base = origin(request)
        return page.response(request, [ser.compute_resource(base, r) for r in page.rows])


@routes.get("/chris-admin/api/v1/{id:\\d+}/", model=schema.Plugin)
async def admin_get_plugin(request: web.Request) -> web.Response:
    """One plugin (staff)."""
    async with request.app[SESSIONS]() as s:
        await require_staff(request, s)
        p, meta = await psvc.get_plugin(s, int_param(request, "id"))
        return model_response(ser.plugin(origin(request), p, meta))


@routes.put("/chris-admin/api/v1/{id:\\d+}/", model=schema.Plugin, body=("compute_names",))
async def admin_add_compute(request: web.Request) -> web.Response:
    """Make a plugin runnable on more compute resources (``compute_names``, comma-separated)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        await require_staff(request, s)
        raw = data.get("compute_names", "")
        names = raw if isinstance(raw, list) else str(raw).split(",")
        p, meta = await psvc.add_compute_resources(
            s, int_param(request, "id"), [str(n).strip() for n in names if str(n).strip()]
        )
        await s.commit()
        return model_response(ser.plugin(origin(request), p, meta))


@routes.get("/chris-admin/api/v1/computeresources/", model=schema.ComputeResource, many=True)
async def admin_list_compute(request: web.Request) -> web.Response:
    """Compute resources (staff)."""
    async with request.app[SESSIONS]() as s:
        await require_staff(request, s)
        page = await fetch_page(request, s, select(ComputeResource), col(ComputeResource.id))
        base = origin(request)
        return page.response(request, [ser.compute_resource(base, r) for r in page.rows])


@routes.get("/chris-admin/api/v1/computeresources/{id:\\d+}/", model=schema.ComputeResource)
async def admin_get_compute(request: web.Request) -> web.Response:
    """One compute resource (staff)."""
    async with request.app[SESSIONS]() as s:
        await require_staff(request, s)
        r = await get_or_404(s, ComputeResource, int_param(request, "id"))
        return model_response(ser.compute_resource(origin(request), r))
