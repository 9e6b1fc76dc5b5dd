"""Database rows → wire models (cube.schema), with absolute hyperlinks."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

from chris_sdk.descriptor import ParameterType, PluginType
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube import schema
from cube.db import models as m
from cube.db.models import as_utc
from cube.services.instances import status_counts


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


async def feeds(base: str, session: AsyncSession, rows: Sequence[m.Feed]) -> list[schema.Feed]:
    """A page of feeds: their instances counted by status in one query, and
    each owner loaded once (see :func:`instances`)."""
    owners = {ident: await session.get(m.User, ident) for ident in {f.owner_id for f in rows}}
    counts: dict[int, dict[str, int]] = {f.id: {} for f in rows if f.id is not None}
    if counts:
        grouped = await session.exec(
            select(m.PluginInstance.feed_id, m.PluginInstance.status, func.count())
            .where(col(m.PluginInstance.feed_id).in_(list(counts)))
            .group_by(col(m.PluginInstance.feed_id), col(m.PluginInstance.status))
        )
        for feed_id, status, n in grouped.all():
            counts[feed_id][status] = n
    out = [await feed(base, session, f, counts.get(f.id or 0, {})) for f in rows]
    del owners
    return out


async def feed(
    base: str, session: AsyncSession, f: m.Feed, counts: dict[str, int] | None = None
) -> schema.Feed:
    """One feed; ``counts`` (its instances per status) are read when not given."""
    owner = await session.get(m.User, f.owner_id)
    if counts is None:
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


async def instances(
    base: str, session: AsyncSession, rows: Sequence[m.PluginInstance]
) -> list[schema.PluginInstance]:
    """A page of instances: the plugins, metas, resources and owners they
    share are read once, and their status histories in one query, not per row."""
    plugins = {k: await session.get(m.Plugin, k) for k in {i.plugin_id for i in rows}}
    metas = {p.meta_id: await session.get(m.PluginMeta, p.meta_id) for p in plugins.values() if p}
    resources = {
        k: await session.get(m.ComputeResource, k) for k in {i.compute_resource_id for i in rows}
    }
    owners = {k: await session.get(m.User, k) for k in {i.owner_id for i in rows}}
    histories: dict[int, list[m.StatusChange]] = {i.id: [] for i in rows if i.id is not None}
    if histories:
        changes = await session.exec(
            select(m.StatusChange)
            .where(col(m.StatusChange.plugin_inst_id).in_(list(histories)))
            .order_by(col(m.StatusChange.id))
        )
        for h in changes.all():
            histories[h.plugin_inst_id].append(h)
    out = []
    for i in rows:
        plugin = plugins[i.plugin_id]
        assert plugin is not None
        related = (
            plugin,
            metas[plugin.meta_id],
            resources[i.compute_resource_id],
            owners[i.owner_id],
        )
        out.append(_instance(base, i, related, histories.get(i.id or 0, [])))
    return out


async def instance(base: str, session: AsyncSession, i: m.PluginInstance) -> schema.PluginInstance:
    """One instance, with its status history."""
    p = await session.get(m.Plugin, i.plugin_id)
    assert p is not None
    meta = await session.get(m.PluginMeta, p.meta_id)
    resource = await session.get(m.ComputeResource, i.compute_resource_id)
    owner = await session.get(m.User, i.owner_id)
    history = (
        await session.exec(
            select(m.StatusChange)
            .where(m.StatusChange.plugin_inst_id == i.id)
            .order_by(col(m.StatusChange.id))
        )
    ).all()
    return _instance(base, i, (p, meta, resource, owner), history)


def _instance(
    base: str,
    i: m.PluginInstance,
    related: tuple[m.Plugin, m.PluginMeta | None, m.ComputeResource | None, m.User | None],
    history: Sequence[m.StatusChange],
) -> schema.PluginInstance:
    p, meta, resource, owner = related
    assert meta is not None and resource is not None and owner is not None
    url = f"{base}/api/v1/plugins/instances/{i.id}/"
    status = schema.InstanceStatus(i.status)
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
