"""Handlers: auth token, users, compute resources, plugins and the admin API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web
from sqlmodel import col, select

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
from cube.db.models import ComputeResource, Plugin, PluginMeta, PluginParameter, User
from cube.errors import BadRequest, NotFound
from cube.schema import AuthToken
from cube.services import plugins as psvc
from cube.services import users as usvc
from cube.services.plugin_images import descriptor_from_image

routes = web.RouteTableDef()

#: A descriptor is small JSON; anything larger is refused while reading.
MAX_DESCRIPTOR_BYTES = 1 << 20
#: Longest image reference accepted (a 255-character name, a tag and a digest fit).
MAX_IMAGE_REFERENCE = 512


@routes.get("/api/v1/health/")
async def health(request: web.Request) -> web.Response:
    """Liveness: the process serves requests (no database round trip)."""
    return web.json_response({"health": "OK"})


@routes.post("/api/v1/auth-token/")
async def auth_token(request: web.Request) -> web.Response:
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
    return model_response(AuthToken(token=token))


@routes.post("/api/v1/users/")
async def create_user(request: web.Request) -> web.Response:
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await usvc.create_user(
            s,
            str(data.get("username", "")),
            str(data.get("password", "")),
            str(data.get("email", "")),
        )
        await s.commit()
    return model_response(ser.user(origin(request), user), status=201)


@routes.get("/api/v1/users/{id:\\d+}/")
async def get_user(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        me = await require_user(request, s)
        target = await s.get(User, int_param(request, "id"))
        if target is None or (target.id != me.id and not me.is_staff):
            raise NotFound("Not found.")
        return model_response(ser.user(origin(request), target))


@routes.get("/api/v1/computeresources/")
async def list_compute(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        page = await fetch_page(request, s, select(ComputeResource), col(ComputeResource.id))
        base = origin(request)
        return page.response(request, [ser.compute_resource(base, r) for r in page.rows])


@routes.get("/api/v1/computeresources/{id:\\d+}/")
async def get_compute(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        r = await get_or_404(s, ComputeResource, int_param(request, "id"))
        return model_response(ser.compute_resource(origin(request), r))


@routes.post("/chris-admin/api/v1/computeresources/")
async def admin_create_compute(request: web.Request) -> web.Response:
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


@routes.post("/chris-admin/api/v1/")
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


@routes.get("/api/v1/plugins/")
@routes.get("/api/v1/plugins/search/")
async def list_plugins(request: web.Request) -> web.Response:
    """Plugins; ``search/`` filters by ``name``, ``name_exact``, ``version``, ``type``."""
    q = _plugin_query()
    if request.path.endswith("/search/"):
        if v := request.query.get("name_exact"):
            q = q.where(PluginMeta.name == v)
        if v := request.query.get("name"):
            q = q.where(col(PluginMeta.name).contains(v))
        if v := request.query.get("version"):
            q = q.where(Plugin.version == v)
        if v := request.query.get("type"):
            q = q.where(PluginMeta.type == v)
        if v := request.query.get("id"):
            q = q.where(Plugin.id == int(v) if v.isdigit() else False)
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        page = await fetch_page(request, s, q, col(Plugin.id))
        base = origin(request)
        return page.response(request, [ser.plugin(base, p, m) for p, m in page.rows])


@routes.get("/api/v1/plugins/{id:\\d+}/")
async def get_plugin(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        p, meta = await psvc.get_plugin(s, int_param(request, "id"))
        return model_response(ser.plugin(origin(request), p, meta))


@routes.get("/api/v1/plugins/{id:\\d+}/parameters/")
async def plugin_parameters(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        await psvc.get_plugin(s, int_param(request, "id"))
        params = await psvc.plugin_parameters(s, int_param(request, "id"))
        page = list_page(request, params)
        base = origin(request)
        return page.response(request, [ser.parameter(base, p) for p in page.rows])


@routes.get("/api/v1/plugins/parameters/{id:\\d+}/")
async def get_parameter(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        p = await get_or_404(s, PluginParameter, int_param(request, "id"))
        return model_response(ser.parameter(origin(request), p))


@routes.get("/api/v1/plugins/{id:\\d+}/computeresources/")
async def plugin_compute(request: web.Request) -> web.Response:
    async with request.app[SESSIONS]() as s:
        await require_user(request, s)
        await psvc.get_plugin(s, int_param(request, "id"))
        rows = await psvc.plugin_resources(s, int_param(request, "id"))
        page = list_page(request, rows)
        base = origin(request)
        return page.response(request, [ser.compute_resource(base, r) for r in page.rows])
