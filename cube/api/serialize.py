"""Database rows → wire models (cube.schema), with absolute hyperlinks."""

from __future__ import annotations

from urllib.parse import quote

from chris_sdk.descriptor import ParameterType, PluginType
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube import schema
from cube.db import models as m
from cube.db.models import as_utc
from cube.services.instances import status_counts
from cube.services.workflows import status_counts as workflow_counts
from cube.services.workflows import workflow_of_instance


def user(base: str, u: m.User) -> schema.User:
    return schema.User(
        url=f"{base}/api/v1/users/{u.id}/",
        id=schema.UserId(u.id or 0),
        username=u.username,
        email=u.email,
        is_staff=u.is_staff,
    )


def compute_resource(base: str, r: m.ComputeResource) -> schema.ComputeResource:
    """A compute resource; only authenticated users reach this (ChRIS hides URLs from anonymous)."""
    return schema.ComputeResource(
        url=f"{base}/api/v1/computeresources/{r.id}/",
        id=schema.ComputeResourceId(r.id or 0),
        creation_date=as_utc(r.creation_date),  # type: ignore[arg-type]
        modification_date=as_utc(r.modification_date),  # type: ignore[arg-type]
        name=r.name,
        compute_url=r.compute_url,
        compute_auth_url=r.compute_auth_url,
        compute_innetwork=r.compute_innetwork,
        description=r.description,
        max_job_exec_seconds=r.max_job_exec_seconds,
        gpus=r.gpus,
        max_concurrent_jobs=r.max_concurrent_jobs,
    )


def plugin(base: str, p: m.Plugin, meta: m.PluginMeta) -> schema.Plugin:
    url = f"{base}/api/v1/plugins/{p.id}/"
    return schema.Plugin(
        url=url,
        id=schema.PluginId(p.id or 0),
        creation_date=as_utc(p.creation_date),  # type: ignore[arg-type]
        name=meta.name,
        version=p.version,
        dock_image=p.dock_image,
        public_repo=meta.public_repo,
        icon=meta.icon,
        type=PluginType(meta.type),
        stars=meta.stars,
        authors=meta.authors,
        title=meta.title,
        category=meta.category,
        description=p.description,
        documentation=meta.documentation,
        license=meta.license,
        execshell=p.execshell,
        selfpath=p.selfpath,
        selfexec=p.selfexec,
        min_number_of_workers=p.min_number_of_workers,
        max_number_of_workers=p.max_number_of_workers,
        min_cpu_limit=p.min_cpu_limit,
        max_cpu_limit=p.max_cpu_limit,
        min_memory_limit=p.min_memory_limit,
        max_memory_limit=p.max_memory_limit,
        min_gpu_limit=p.min_gpu_limit,
        max_gpu_limit=p.max_gpu_limit,
        meta=f"{base}/api/v1/plugins/metas/{meta.id}/",
        parameters=f"{url}parameters/",
        instances=f"{url}instances/",
        compute_resources=f"{url}computeresources/",
    )


def parameter(base: str, p: m.PluginParameter) -> schema.PluginParameter:
    return schema.PluginParameter(
        url=f"{base}/api/v1/plugins/parameters/{p.id}/",
        id=schema.ParameterId(p.id or 0),
        name=p.name,
        type=ParameterType(p.type).api_name,
        optional=p.optional,
        default=p.default,
        flag=p.flag,
        short_flag=p.short_flag,
        action=p.action,
        help=p.help,
        ui_exposed=p.ui_exposed,
        plugin=f"{base}/api/v1/plugins/{p.plugin_id}/",
    )


def parameter_value(base: str, v: m.ParameterValue, p: m.PluginParameter) -> schema.ParameterValue:
    api_type = ParameterType(p.type).api_name
    return schema.ParameterValue(
        url=f"{base}/api/v1/plugins/{api_type}-parameter/{v.id}/",
        id=v.id or 0,
        param_name=p.name,
        value=v.value,
        type=api_type,
        plugin_inst=f"{base}/api/v1/plugins/instances/{v.plugin_inst_id}/",
        plugin_param=f"{base}/api/v1/plugins/parameters/{p.id}/",
    )


async def feed(base: str, session: AsyncSession, f: m.Feed) -> schema.Feed:
    owner = await session.get(m.User, f.owner_id)
    counts = await status_counts(session, f.id or 0)
    url = f"{base}/api/v1/{f.id}/"
    return schema.Feed(
        url=url,
        id=schema.FeedId(f.id or 0),
        creation_date=as_utc(f.creation_date),  # type: ignore[arg-type]
        modification_date=as_utc(f.modification_date),  # type: ignore[arg-type]
        name=f.name,
        public=f.public,
        owner_username=owner.username if owner else "",
        folder_path=f"home/{owner.username if owner else ''}/feeds/feed_{f.id}",
        created_jobs=counts.get("created", 0),
        waiting_jobs=counts.get("waiting", 0),
        scheduled_jobs=counts.get("scheduled", 0),
        started_jobs=counts.get("started", 0),
        registering_jobs=counts.get("registeringFiles", 0),
        finished_jobs=counts.get("finishedSuccessfully", 0),
        errored_jobs=counts.get("finishedWithError", 0),
        cancelled_jobs=counts.get("cancelled", 0),
        plugin_instances=f"{url}plugininstances/",
        files=f"{url}files/",
    )


async def instance(base: str, session: AsyncSession, i: m.PluginInstance) -> schema.PluginInstance:
    p = await session.get(m.Plugin, i.plugin_id)
    assert p is not None
    meta = await session.get(m.PluginMeta, p.meta_id)
    resource = await session.get(m.ComputeResource, i.compute_resource_id)
    owner = await session.get(m.User, i.owner_id)
    assert meta is not None and resource is not None and owner is not None
    history = (
        await session.exec(
            select(m.StatusChange)
            .where(m.StatusChange.plugin_inst_id == i.id)
            .order_by(m.StatusChange.id)  # type: ignore[arg-type]
        )
    ).all()
    url = f"{base}/api/v1/plugins/instances/{i.id}/"
    status = schema.InstanceStatus(i.status)
    in_workflow = await workflow_of_instance(session, i.id or 0)
    return schema.PluginInstance(
        url=url,
        id=schema.PluginInstanceId(i.id or 0),
        title=i.title,
        previous_id=schema.PluginInstanceId(i.previous_id) if i.previous_id else None,
        compute_resource_name=resource.name,
        plugin_id=schema.PluginId(p.id or 0),
        plugin_name=meta.name,
        plugin_version=p.version,
        plugin_type=PluginType(meta.type),
        feed_id=schema.FeedId(i.feed_id),
        start_date=as_utc(i.start_date),
        end_date=as_utc(i.end_date),
        output_path=i.output_path,
        status=status,
        active=status.is_active,
        pipeline_id=in_workflow[1].id if in_workflow else None,
        pipeline_name=in_workflow[1].name if in_workflow else "",
        workflow_id=in_workflow[0].id if in_workflow else None,
        summary=i.summary,
        raw=i.raw,
        owner_username=owner.username,
        cpu_limit=i.cpu_limit,
        memory_limit=i.memory_limit,
        number_of_workers=i.number_of_workers,
        gpu_limit=i.gpu_limit,
        size=i.size,
        error_code=i.error_code,
        error_message=i.error_message,
        status_history=[
            schema.StatusChange(
                status=schema.InstanceStatus(h.status),
                timestamp=as_utc(h.timestamp),  # type: ignore[arg-type]
                note=h.note,
            )
            for h in history
        ],
        previous=f"{base}/api/v1/plugins/instances/{i.previous_id}/" if i.previous_id else None,
        feed=f"{base}/api/v1/{i.feed_id}/",
        plugin=f"{base}/api/v1/plugins/{p.id}/",
        descendants=f"{url}descendants/",
        files=f"{url}files/",
        parameters=f"{url}parameters/",
        compute_resource=f"{base}/api/v1/computeresources/{resource.id}/",
    )


def _basename(fname: str) -> str:
    return quote(fname.rsplit("/", 1)[-1])


def user_file(base: str, f: m.StoredFile, owner_username: str) -> schema.UserFile:
    url = f"{base}/api/v1/userfiles/{f.id}/"
    return schema.UserFile(
        url=url,
        id=schema.FileId(f.id or 0),
        creation_date=as_utc(f.creation_date),  # type: ignore[arg-type]
        fname=f.fname,
        fsize=f.fsize,
        public=f.public,
        owner_username=owner_username,
        file_resource=f"{url}{_basename(f.fname)}",
    )


def instance_file(base: str, f: m.StoredFile, feed_id: int) -> schema.PluginInstanceFile:
    return schema.PluginInstanceFile(
        url=f"{base}/api/v1/files/{f.id}/",
        id=schema.FileId(f.id or 0),
        creation_date=as_utc(f.creation_date),  # type: ignore[arg-type]
        fname=f.fname,
        fsize=f.fsize,
        feed_id=schema.FeedId(feed_id),
        plugin_inst_id=schema.PluginInstanceId(f.plugin_inst_id or 0),
        file_resource=f"{base}/api/v1/files/{f.id}/{_basename(f.fname)}",
        plugin_inst=f"{base}/api/v1/plugins/instances/{f.plugin_inst_id}/",
    )


# -- pipelines and workflows -------------------------------------------------------


async def pipeline(base: str, session: AsyncSession, p: m.Pipeline) -> schema.Pipeline:
    owner = await session.get(m.User, p.owner_id)
    url = f"{base}/api/v1/pipelines/{p.id}/"
    return schema.Pipeline(
        url=url,
        id=schema.PipelineId(p.id or 0),
        name=p.name,
        locked=p.locked,
        authors=p.authors,
        category=p.category,
        description=p.description,
        owner_username=owner.username if owner else "",
        creation_date=as_utc(p.creation_date),  # type: ignore[arg-type]
        modification_date=as_utc(p.modification_date),  # type: ignore[arg-type]
        plugins=f"{url}plugins/",
        plugin_pipings=f"{url}pipings/",
        default_parameters=f"{url}parameters/",
        workflows=f"{url}workflows/",
        json_repr=f"{url}json/",
    )


async def piping(base: str, session: AsyncSession, n: m.PluginPiping) -> schema.PluginPiping:
    p = await session.get(m.Plugin, n.plugin_id)
    assert p is not None
    meta = await session.get(m.PluginMeta, p.meta_id)
    assert meta is not None
    return schema.PluginPiping(
        url=f"{base}/api/v1/pipelines/pipings/{n.id}/",
        id=schema.PipingId(n.id or 0),
        title=n.title,
        previous_id=schema.PipingId(n.previous_id) if n.previous_id else None,
        plugin_id=schema.PluginId(n.plugin_id),
        plugin_name=meta.name,
        plugin_version=p.version,
        pipeline_id=schema.PipelineId(n.pipeline_id),
        cpu_limit=n.cpu_limit,
        memory_limit=n.memory_limit,
        number_of_workers=n.number_of_workers,
        gpu_limit=n.gpu_limit,
        previous=f"{base}/api/v1/pipelines/pipings/{n.previous_id}/" if n.previous_id else None,
        plugin=f"{base}/api/v1/plugins/{n.plugin_id}/",
        pipeline=f"{base}/api/v1/pipelines/{n.pipeline_id}/",
    )


async def piping_default(
    base: str,
    session: AsyncSession,
    d: m.PipingDefaultParameter,
    param: m.PluginParameter,
    n: m.PluginPiping,
) -> schema.PipingDefaultParameter:
    p = await session.get(m.Plugin, n.plugin_id)
    assert p is not None
    meta = await session.get(m.PluginMeta, p.meta_id)
    assert meta is not None
    api_type = ParameterType(param.type).api_name
    return schema.PipingDefaultParameter(
        url=f"{base}/api/v1/pipelines/{api_type}-parameter/{d.id}/",
        id=d.id or 0,
        value=d.value,
        type=api_type,
        plugin_piping_id=schema.PipingId(n.id or 0),
        plugin_piping_title=n.title,
        param_name=param.name,
        param_id=schema.ParameterId(param.id or 0),
        plugin_name=meta.name,
        plugin_version=p.version,
        plugin_piping=f"{base}/api/v1/pipelines/pipings/{n.id}/",
        plugin_param=f"{base}/api/v1/plugins/parameters/{param.id}/",
    )


async def workflow(base: str, session: AsyncSession, w: m.Workflow) -> schema.Workflow:
    owner = await session.get(m.User, w.owner_id)
    pipe = await session.get(m.Pipeline, w.pipeline_id)
    counts = await workflow_counts(session, w.id or 0)
    url = f"{base}/api/v1/pipelines/workflows/{w.id}/"
    return schema.Workflow(
        url=url,
        id=schema.WorkflowId(w.id or 0),
        creation_date=as_utc(w.creation_date),  # type: ignore[arg-type]
        title=w.title,
        pipeline_id=schema.PipelineId(w.pipeline_id),
        pipeline_name=pipe.name if pipe else "",
        owner_username=owner.username if owner else "",
        created_jobs=counts.get("created", 0),
        waiting_jobs=counts.get("waiting", 0),
        scheduled_jobs=counts.get("scheduled", 0),
        started_jobs=counts.get("started", 0),
        registering_jobs=counts.get("registeringFiles", 0),
        finished_jobs=counts.get("finishedSuccessfully", 0),
        errored_jobs=counts.get("finishedWithError", 0),
        cancelled_jobs=counts.get("cancelled", 0),
        pipeline=f"{base}/api/v1/pipelines/{w.pipeline_id}/",
        plugin_instances=f"{url}plugininstances/",
    )


async def pipeline_source_file(
    base: str, session: AsyncSession, f: m.PipelineSourceFile
) -> schema.PipelineSourceFile:
    owner = await session.get(m.User, f.owner_id)
    pipe = await session.get(m.Pipeline, f.pipeline_id)
    url = f"{base}/api/v1/pipelines/sourcefiles/{f.id}/"
    return schema.PipelineSourceFile(
        url=url,
        id=f.id or 0,
        creation_date=as_utc(f.creation_date),  # type: ignore[arg-type]
        fname=f.fname,
        fsize=f.fsize,
        type=f.type,
        owner_username=owner.username if owner else "",
        pipeline_id=schema.PipelineId(f.pipeline_id),
        pipeline_name=pipe.name if pipe else "",
        file_resource=f"{url}{_basename(f.fname)}",
        pipeline=f"{base}/api/v1/pipelines/{f.pipeline_id}/",
    )
