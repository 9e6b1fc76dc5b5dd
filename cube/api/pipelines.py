"""Handlers: pipelines, their nodes and defaults, source files and workflows (ChRIS paths).

Resources (``reference/chris.md`` §1.3, §6), each described once by its
serialiser in :mod:`cube.api.serialize`:

* ``pipelines/`` (GET, POST), ``pipelines/search/``, ``pipelines/<id>/`` (GET, PUT, DELETE),
  ``pipelines/<id>/json/`` (the export), ``.../plugins/``, ``.../pipings/``,
  ``.../parameters/`` (also ``.../defaultparameters/``), ``.../workflows/`` (GET, POST);
* ``pipelines/pipings/<id>/``, ``pipelines/<type>-parameter/<id>/``;
* ``pipelines/sourcefiles/`` (GET, multipart POST ``fname`` + ``type``),
  ``pipelines/sourcefiles/search/``, ``pipelines/sourcefiles/<id>/`` and its file;
* ``pipelines/workflows/``, ``pipelines/workflows/search/``,
  ``pipelines/workflows/<id>/`` (GET, PUT title), ``.../plugininstances/``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from sqlmodel import col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube import schema
from cube.api import serialize as ser
from cube.api.common import (
    HUB,
    SCHEDULER,
    SESSIONS,
    STORAGE,
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
    Pipeline,
    PipelineSourceFile,
    PipingDefaultParameter,
    PluginInstance,
    PluginPiping,
    User,
    Workflow,
)
from cube.errors import BadRequest, NotFound
from cube.services import pipelines as psvc
from cube.services import workflows as wsvc

routes = ApiRoutes()

P = "/api/v1/pipelines"


def _owned_by(owner_col: Any) -> Any:
    """A filter condition builder: the row's owner has this username."""
    return lambda username: col(owner_col).in_(select(User.id).where(User.username == username))


PIPELINE_FILTERS = (
    Filter("id", Pipeline.id, int),
    Filter("name", Pipeline.name, op="icontains"),
    Filter("name_exact", Pipeline.name),
    Filter("category", Pipeline.category),
    Filter("owner_username", where=_owned_by(Pipeline.owner_id)),
)
PIPELINE_POST = (
    "name",
    "authors",
    "category",
    "description",
    "locked",
    "plugin_tree",
    "plugin_inst_id",
)
PIPELINE_PUT = ("name", "authors", "category", "description", "locked")

WORKFLOW_FILTERS = (
    Filter("id", Workflow.id, int),
    Filter("title", Workflow.title, op="icontains"),
    Filter("pipeline_id", Workflow.pipeline_id, int),
    Filter(
        "pipeline_name",
        where=lambda name: col(Workflow.pipeline_id).in_(
            select(Pipeline.id).where(col(Pipeline.name).ilike(f"%{name}%"))
        ),
    ),
    Filter("owner_username", where=_owned_by(Workflow.owner_id)),
)
WORKFLOW_POST = ("previous_plugin_inst_id", "title", "nodes_info")

SOURCE_FILTERS = (
    Filter("id", PipelineSourceFile.id, int),
    Filter("fname", PipelineSourceFile.fname, op="icontains"),
    Filter("type", PipelineSourceFile.type),
    Filter("pipeline_id", PipelineSourceFile.pipeline_id, int),
)


def _visible_pipelines(user: User) -> Any:
    q = select(Pipeline)
    if not user.is_staff:
        q = q.where(or_(col(Pipeline.locked).is_(True), Pipeline.owner_id == user.id))
    return q


@routes.get(f"{P}/", model=schema.Pipeline, many=True, name="pipeline-list")
@routes.get(f"{P}/search/", model=schema.Pipeline, many=True, filters=PIPELINE_FILTERS)
async def list_pipelines(request: web.Request) -> web.Response:
    """Pipelines the user may see; ``search/`` filters by ``id``, ``name``
    (contains), ``name_exact``, ``category``, ``owner_username``."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        query = apply_filters(request, _visible_pipelines(user), search_filters(request))
        page = await fetch_page(request, s, query, col(Pipeline.id))
        base = origin(request)
        return page.response(request, [await ser.pipeline(base, s, p) for p in page.rows])


@routes.post(f"{P}/", model=schema.Pipeline, body=PIPELINE_POST)
async def create_pipeline(request: web.Request) -> web.Response:
    """Create a pipeline: ``name``, ``authors``, ``category``, ``description``,
    ``locked`` and ``plugin_tree`` (a list, or the list as a JSON string)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        pipeline = await psvc.create_pipeline(s, user, data)
        await s.commit()
        return model_response(await ser.pipeline(origin(request), s, pipeline), status=201)


@routes.get(f"{P}/{{id:\\d+}}/", model=schema.Pipeline, name="pipeline-detail")
async def get_pipeline(request: web.Request) -> web.Response:
    """One pipeline (locked ones are everybody's, unlocked ones their owner's)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        pipeline = await psvc.visible_pipeline(s, user, int_param(request, "id"))
        return model_response(await ser.pipeline(origin(request), s, pipeline))


@routes.put(f"{P}/{{id:\\d+}}/", model=schema.Pipeline, body=PIPELINE_PUT)
async def update_pipeline(request: web.Request) -> web.Response:
    """Change a pipeline's name, authors, category, description or lock (its owner)."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        pipeline = await psvc.update_pipeline(s, user, int_param(request, "id"), data)
        await s.commit()
        return model_response(await ser.pipeline(origin(request), s, pipeline))


@routes.delete(f"{P}/{{id:\\d+}}/")
async def delete_pipeline(request: web.Request) -> web.Response:
    """Delete a pipeline with its nodes, source file and workflows (its owner or
    staff); refused (409) while one of its workflows runs."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        await psvc.delete_pipeline(s, request.app[STORAGE], user, int_param(request, "id"))
        await s.commit()
    return web.Response(status=204)


@routes.get(f"{P}/{{id:\\d+}}/json/", model=schema.PipelineExport)
async def export_pipeline(request: web.Request) -> web.Response:
    """The pipeline as ChRIS exports it, ready to be posted again (under another name)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        pipeline = await psvc.visible_pipeline(s, user, int_param(request, "id"))
        body = await psvc.export_pipeline(s, pipeline)
    url = f"{origin(request)}{P}/{pipeline.id}/json/"
    return model_response(schema.PipelineExport(url=url, **body))


@routes.get(f"{P}/{{id:\\d+}}/plugins/", model=schema.Plugin, many=True)
async def pipeline_plugins(request: web.Request) -> web.Response:
    """The plugins a pipeline's nodes run."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        pipeline = await psvc.visible_pipeline(s, user, int_param(request, "id"))
        assert pipeline.id is not None
        page = list_page(request, await psvc.pipeline_plugins(s, pipeline.id))
        base = origin(request)
        return page.response(request, [ser.plugin(base, p, m) for p, m in page.rows])


@routes.get(f"{P}/{{id:\\d+}}/pipings/", model=schema.PluginPiping, many=True)
async def pipeline_pipings(request: web.Request) -> web.Response:
    """A pipeline's nodes."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        pipeline = await psvc.visible_pipeline(s, user, int_param(request, "id"))
        assert pipeline.id is not None
        page = list_page(request, await psvc.pipings(s, pipeline.id))
        base = origin(request)
        return page.response(request, [await ser.piping(base, s, n) for n in page.rows])


@routes.get(f"{P}/{{id:\\d+}}/parameters/", model=schema.PipingDefaultParameter, many=True)
@routes.get(f"{P}/{{id:\\d+}}/defaultparameters/", model=schema.PipingDefaultParameter, many=True)
async def pipeline_defaults(request: web.Request) -> web.Response:
    """The parameter defaults of a pipeline's nodes."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        pipeline = await psvc.visible_pipeline(s, user, int_param(request, "id"))
        assert pipeline.id is not None
        page = list_page(request, await psvc.piping_defaults(s, pipeline.id))
        base = origin(request)
        return page.response(
            request, [await ser.piping_default(base, s, d, p, n) for d, p, n in page.rows]
        )


@routes.get(f"{P}/pipings/{{id:\\d+}}/", model=schema.PluginPiping)
async def get_piping(request: web.Request) -> web.Response:
    """One pipeline node."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        node = await get_or_404(s, PluginPiping, int_param(request, "id"))
        await psvc.visible_pipeline(s, user, node.pipeline_id)
        return model_response(await ser.piping(origin(request), s, node))


@routes.get(
    f"{P}/{{type:(string|integer|float|boolean|path|unextpath)}}-parameter/{{id:\\d+}}/",
    model=schema.PipingDefaultParameter,
)
async def get_piping_default(request: web.Request) -> web.Response:
    """One parameter default of a pipeline node."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        default = await get_or_404(s, PipingDefaultParameter, int_param(request, "id"))
        node = await get_or_404(s, PluginPiping, default.plugin_piping_id)
        await psvc.visible_pipeline(s, user, node.pipeline_id)
        for d, p, n in await psvc.piping_defaults(s, node.pipeline_id):
            if d.id == default.id:
                return model_response(await ser.piping_default(origin(request), s, d, p, n))
    raise NotFound("Not found.")


# -- workflows ---------------------------------------------------------------------


async def _workflow_page(request: web.Request, s: AsyncSession, query: Any) -> web.Response:
    page = await fetch_page(request, s, query, col(Workflow.id).desc())
    base = origin(request)
    return page.response(request, [await ser.workflow(base, s, w) for w in page.rows])


@routes.get(f"{P}/{{id:\\d+}}/workflows/", model=schema.Workflow, many=True)
async def pipeline_workflows(request: web.Request) -> web.Response:
    """The user's workflows of a pipeline (all of them for staff)."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        pipeline = await psvc.visible_pipeline(s, user, int_param(request, "id"))
        query = select(Workflow).where(Workflow.pipeline_id == pipeline.id)
        if not user.is_staff:
            query = query.where(Workflow.owner_id == user.id)
        return await _workflow_page(request, s, query)


@routes.post(f"{P}/{{id:\\d+}}/workflows/", model=schema.Workflow, body=WORKFLOW_POST)
async def create_workflow(request: web.Request) -> web.Response:
    """Run a pipeline: ``previous_plugin_inst_id``, optional ``title`` and ``nodes_info``."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        workflow, _instances = await wsvc.create_workflow(s, user, int_param(request, "id"), data)
        await s.commit()
        body = await ser.workflow(origin(request), s, workflow)
    request.app[SCHEDULER].kick()
    await request.app[HUB].changed()
    return model_response(body, status=201)


@routes.get(f"{P}/workflows/", model=schema.Workflow, many=True, name="workflow-list")
@routes.get(f"{P}/workflows/search/", model=schema.Workflow, many=True, filters=WORKFLOW_FILTERS)
async def list_workflows(request: web.Request) -> web.Response:
    """The user's workflows; ``search/`` filters by ``id``, ``title`` (contains),
    ``pipeline_id``, ``pipeline_name`` (contains) and ``owner_username``."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        query = select(Workflow)
        if not user.is_staff:
            query = query.where(Workflow.owner_id == user.id)
        query = apply_filters(request, query, search_filters(request))
        return await _workflow_page(request, s, query)


@routes.get(f"{P}/workflows/{{id:\\d+}}/", model=schema.Workflow, name="workflow-detail")
async def get_workflow(request: web.Request) -> web.Response:
    """One workflow with its instances' status counts."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        workflow = await wsvc.visible_workflow(s, user, int_param(request, "id"))
        return model_response(await ser.workflow(origin(request), s, workflow))


@routes.put(f"{P}/workflows/{{id:\\d+}}/", model=schema.Workflow, body=("title",))
async def update_workflow(request: web.Request) -> web.Response:
    """Change a workflow's ``title``."""
    data = await read_body(request)
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        workflow = await wsvc.visible_workflow(s, user, int_param(request, "id"))
        if "title" in data:
            title = str(data["title"] or "")
            if len(title) > 100:
                raise BadRequest.field("title", "at most 100 characters")
            workflow.title = title
            s.add(workflow)
            await s.commit()
        return model_response(await ser.workflow(origin(request), s, workflow))


@routes.get(f"{P}/workflows/{{id:\\d+}}/plugininstances/", model=schema.PluginInstance, many=True)
async def workflow_instances(request: web.Request) -> web.Response:
    """The plugin instances of a workflow."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        workflow = await wsvc.visible_workflow(s, user, int_param(request, "id"))
        assert workflow.id is not None
        page = await fetch_page(
            request, s, wsvc.instances_query(workflow.id), col(PluginInstance.id)
        )
        return page.response(request, await ser.instances(origin(request), s, page.rows))


# -- pipeline source files ------------------------------------------------------------


def _visible_sources(user: User) -> Any:
    q = select(PipelineSourceFile)
    if not user.is_staff:
        q = q.where(PipelineSourceFile.owner_id == user.id)
    return q


@routes.get(
    f"{P}/sourcefiles/",
    model=schema.PipelineSourceFile,
    many=True,
    name="pipelinesourcefile-list",
)
@routes.get(
    f"{P}/sourcefiles/search/",
    model=schema.PipelineSourceFile,
    many=True,
    filters=SOURCE_FILTERS,
)
async def list_sources(request: web.Request) -> web.Response:
    """The user's pipeline source files; ``search/`` filters by ``id``, ``fname``
    (contains), ``type`` and ``pipeline_id``."""
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        query = apply_filters(request, _visible_sources(user), search_filters(request))
        page = await fetch_page(request, s, query, col(PipelineSourceFile.id))
        base = origin(request)
        return page.response(
            request, [await ser.pipeline_source_file(base, s, f) for f in page.rows]
        )


@routes.post(f"{P}/sourcefiles/", model=schema.PipelineSourceFile, body=("fname", "type"))
async def upload_source(request: web.Request) -> web.Response:
    """Multipart: ``fname`` (the YAML or JSON file, at most 1 MiB) and ``type``
    (``yaml`` or ``json``; by default from the file name). The file becomes a pipeline."""
    if request.content_type != "multipart/form-data":
        raise BadRequest("use multipart/form-data with 'fname' and 'type'")
    filename: str | None = None
    content = bytearray()
    kind: str | None = None
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "type":
            kind = await part.text()
        elif part.name == "fname":
            if filename is not None:
                raise BadRequest.field("fname", "only one file per upload")
            filename = part.filename or ""
            while chunk := await part.read_chunk(64 * 1024):
                content += chunk
                if len(content) > psvc.MAX_SOURCE_BYTES:
                    raise BadRequest.field("fname", "a pipeline file is at most 1 MiB")
    if filename is None:
        raise BadRequest.field("fname", "No file was submitted.")
    async with request.app[SESSIONS]() as s:
        user = await require_user(request, s)
        row = await psvc.create_from_source(
            s, request.app[STORAGE], user, filename, bytes(content), kind
        )
        await s.commit()
        return model_response(await ser.pipeline_source_file(origin(request), s, row), status=201)


async def _source(request: web.Request, s: AsyncSession) -> PipelineSourceFile:
    user = await require_user(request, s)
    row = (
        await s.exec(
            _visible_sources(user).where(PipelineSourceFile.id == int_param(request, "id"))
        )
    ).first()
    if row is None:
        raise NotFound("Not found.")
    return row  # type: ignore[no-any-return]


@routes.get(f"{P}/sourcefiles/{{id:\\d+}}/", model=schema.PipelineSourceFile)
async def get_source(request: web.Request) -> web.Response:
    """One pipeline source file."""
    async with request.app[SESSIONS]() as s:
        row = await _source(request, s)
        return model_response(await ser.pipeline_source_file(origin(request), s, row))


@routes.get(f"{P}/sourcefiles/{{id:\\d+}}/{{name}}")
async def download_source(request: web.Request) -> web.StreamResponse:
    """The source file's bytes (its ``file_resource`` link)."""
    async with request.app[SESSIONS]() as s:
        row = await _source(request, s)
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
