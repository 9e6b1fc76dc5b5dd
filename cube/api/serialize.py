"""Database rows → wire models (cube.schema), with absolute hyperlinks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import quote

from chris_sdk.descriptor import ParameterType, PluginType
from pydantic import BaseModel
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube import schema
from cube.db import models as m
from cube.db.engine import loaded_row
from cube.db.models import as_utc
from cube.services.workflows import status_counts as workflow_counts

T = TypeVar("T")


def user(base: str, u: m.User) -> schema.User:
    return schema.User(
        url=f"{base}/api/v1/users/{u.id}/",
        id=schema.UserId(u.id or 0),
        username=u.username,
        email=u.email,
        is_staff=u.is_staff,
        groups=f"{base}/api/v1/users/{u.id}/groups/",
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
    """One feed (see :func:`feeds` for a page of them)."""
    return (await feeds(base, session, [f]))[0]


async def feeds(base: str, session: AsyncSession, rows: Sequence[m.Feed]) -> list[schema.Feed]:
    """Feeds with their owners and job counts, loaded in two queries for the page."""
    ids = [f.id for f in rows]
    owners = await _by_id(session, m.User, {f.owner_id for f in rows})
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    if ids:
        found = await session.exec(
            select(m.PluginInstance.feed_id, m.PluginInstance.status, func.count())
            .where(col(m.PluginInstance.feed_id).in_(ids))
            .group_by(col(m.PluginInstance.feed_id), col(m.PluginInstance.status))
        )
        for feed_id, status, n in found.all():
            counts[feed_id][status] = n
    paths = {f.id: _feed_folder(f, owners.get(f.owner_id)) for f in rows}
    folders: dict[str, int] = {}
    if paths:
        found_folders = await session.exec(
            select(m.Folder.path, m.Folder.id).where(col(m.Folder.path).in_(paths.values()))
        )
        folders = {path: fid for path, fid in found_folders.all() if fid is not None}
    return [
        _feed(base, f, owners.get(f.owner_id), counts[f.id or 0], folders.get(paths[f.id]))
        for f in rows
    ]


def _feed_folder(f: m.Feed, owner: m.User | None) -> str:
    """The storage path of a feed's folder (CUBE v6 layout)."""
    return f"home/{owner.username if owner else ''}/feeds/feed_{f.id}"


#: The ``*_jobs`` fields of feeds and workflows, and the instance status each counts.
_JOB_COUNT_FIELDS = {
    "created_jobs": "created",
    "waiting_jobs": "waiting",
    "scheduled_jobs": "scheduled",
    "started_jobs": "started",
    "registering_jobs": "registeringFiles",
    "finished_jobs": "finishedSuccessfully",
    "errored_jobs": "finishedWithError",
    "cancelled_jobs": "cancelled",
}


def _job_counts(counts: dict[str, int]) -> dict[str, Any]:
    """The ``*_jobs`` fields from instance counts by status (absent statuses count 0)."""
    return {name: counts.get(status, 0) for name, status in _JOB_COUNT_FIELDS.items()}


def _feed(
    base: str, f: m.Feed, owner: m.User | None, counts: dict[str, int], folder_id: int | None
) -> schema.Feed:
    url = f"{base}/api/v1/{f.id}/"
    return schema.Feed(
        url=url,
        id=schema.FeedId(f.id or 0),
        creation_date=as_utc(f.creation_date),  # type: ignore[arg-type]
        modification_date=as_utc(f.modification_date),  # type: ignore[arg-type]
        name=f.name,
        public=f.public,
        owner_username=owner.username if owner else "",
        folder_path=_feed_folder(f, owner),
        folder=f"{base}/api/v1/filebrowser/{folder_id}/" if folder_id else None,
        **_job_counts(counts),
        plugin_instances=f"{url}plugininstances/",
        files=f"{url}files/",
        note=f"{base}/api/v1/note{f.id}/",
        comments=f"{url}comments/",
        tags=f"{url}tags/",
        taggings=f"{url}taggings/",
        user_permissions=f"{url}userpermissions/",
        group_permissions=f"{url}grouppermissions/",
        owner=f"{base}/api/v1/users/{f.owner_id}/",
    )


async def _by_id(session: AsyncSession, model: type[T], ids: set[int]) -> dict[int, T]:
    """Rows of ``model`` with these primary keys, in one query: those the
    session holds already (the requester, the plugin of an instance just
    created) are taken from it, only the others are read."""
    found: dict[int, T] = {}
    for i in ids:
        row = loaded_row(session, model, i)
        if row is not None:
            found[i] = row
    missing = ids - found.keys()
    if missing:
        rows = await session.exec(select(model).where(col(model.id).in_(missing)))  # type: ignore[attr-defined]
        found.update((r.id, r) for r in rows.all())  # type: ignore[attr-defined]
    return found


async def instance(base: str, session: AsyncSession, i: m.PluginInstance) -> schema.PluginInstance:
    """One plugin instance (see :func:`instances` for a page of them)."""
    return (await instances(base, session, [i]))[0]


async def instances(
    base: str, session: AsyncSession, rows: Sequence[m.PluginInstance]
) -> list[schema.PluginInstance]:
    """Plugin instances with their plugins, sites, owners and status histories.

    The related rows of the whole page are loaded in three queries, not six
    per instance (a page of 100 was 500 round trips): the plugin, its meta,
    the site, the output folder and the workflow joined to each instance;
    the status histories; the owners not loaded already (usually the
    requester, who is).
    """
    related: dict[int, tuple[Any, ...]] = {}
    history: dict[int, list[m.StatusChange]] = defaultdict(list)
    if rows:
        ids = [i.id for i in rows]
        found_related = await session.exec(
            select(  # type: ignore[call-overload]
                m.PluginInstance.id,
                m.Plugin,
                m.PluginMeta,
                m.ComputeResource,
                m.Folder.id,
                m.Workflow,
                m.Pipeline,
            )
            .join(m.Plugin, col(m.Plugin.id) == col(m.PluginInstance.plugin_id))
            .join(m.PluginMeta, col(m.PluginMeta.id) == col(m.Plugin.meta_id))
            .join(
                m.ComputeResource,
                col(m.ComputeResource.id) == col(m.PluginInstance.compute_resource_id),
            )
            .outerjoin(m.Folder, col(m.Folder.path) == col(m.PluginInstance.output_path))
            .outerjoin(
                m.WorkflowInstance,
                col(m.WorkflowInstance.plugin_inst_id) == col(m.PluginInstance.id),
            )
            .outerjoin(m.Workflow, col(m.Workflow.id) == col(m.WorkflowInstance.workflow_id))
            .outerjoin(m.Pipeline, col(m.Pipeline.id) == col(m.Workflow.pipeline_id))
            .where(col(m.PluginInstance.id).in_(ids))
        )
        related = {row[0]: row[1:] for row in found_related.all()}
        found = await session.exec(
            select(m.StatusChange)
            .where(col(m.StatusChange.plugin_inst_id).in_(ids))
            .order_by(m.StatusChange.id)  # type: ignore[arg-type]
        )
        for h in found.all():
            history[h.plugin_inst_id].append(h)
    owners = await _by_id(session, m.User, {i.owner_id for i in rows})
    out = []
    for i in rows:
        p, meta, resource, folder_id, workflow, pipeline = related[i.id or 0]
        out.append(
            _instance(
                base,
                i,
                p,
                meta,
                resource,
                owners[i.owner_id],
                history[i.id or 0],
                (workflow, pipeline) if workflow is not None else None,
                folder_id,
            )
        )
    return out


def _instance(
    base: str,
    i: m.PluginInstance,
    p: m.Plugin,
    meta: m.PluginMeta,
    resource: m.ComputeResource,
    owner: m.User,
    history: Sequence[m.StatusChange],
    in_workflow: tuple[m.Workflow, m.Pipeline] | None,
    folder_id: int | None,
) -> schema.PluginInstance:
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
        output_folder=f"{base}/api/v1/filebrowser/{folder_id}/" if folder_id else None,
        feed=f"{base}/api/v1/{i.feed_id}/",
        plugin=f"{base}/api/v1/plugins/{p.id}/",
        workflow=(
            f"{base}/api/v1/pipelines/workflows/{in_workflow[0].id}/" if in_workflow else None
        ),
        descendants=f"{url}descendants/",
        files=f"{url}files/",
        parameters=f"{url}parameters/",
        compute_resource=f"{base}/api/v1/computeresources/{resource.id}/",
        splits=f"{url}splits/",
    )


def split(base: str, sp: m.PluginInstanceSplit) -> schema.PluginInstanceSplit:
    """A split of an instance (``plugins/instances/splits/<id>/``)."""
    return schema.PluginInstanceSplit(
        url=f"{base}/api/v1/plugins/instances/splits/{sp.id}/",
        id=sp.id or 0,
        creation_date=as_utc(sp.creation_date),  # type: ignore[arg-type]
        filter=sp.filter,
        plugin_inst_id=schema.PluginInstanceId(sp.plugin_inst_id),
        created_plugin_inst_ids=sp.created_plugin_inst_ids,
        plugin_inst=f"{base}/api/v1/plugins/instances/{sp.plugin_inst_id}/",
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
        owner=f"{base}/api/v1/users/{f.owner_id}/",
        # the grants of an upload are those of its file browser file
        group_permissions=f"{base}/api/v1/filebrowser/files/{f.id}/grouppermissions/",
        user_permissions=f"{base}/api/v1/filebrowser/files/{f.id}/userpermissions/",
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


def group(base: str, g: m.Group) -> schema.Group:
    url = f"{base}/api/v1/groups/{g.id}/"
    return schema.Group(url=url, id=schema.GroupId(g.id or 0), name=g.name, users=f"{url}users/")


def group_user(base: str, gm: m.GroupMember, g: m.Group, u: m.User) -> schema.GroupUser:
    return schema.GroupUser(
        url=f"{base}/api/v1/groups/users/{gm.id}/",
        id=gm.id or 0,
        group_id=schema.GroupId(g.id or 0),
        group_name=g.name,
        user_id=schema.UserId(u.id or 0),
        username=u.username,
        group=f"{base}/api/v1/groups/{g.id}/",
        user=f"{base}/api/v1/users/{u.id}/",
    )


def chris_instance(base: str, c: m.ChrisInstance) -> schema.ChrisInstance:
    return schema.ChrisInstance(
        url=f"{base}/api/v1/chrisinstance/{c.id}/",
        id=c.id or 0,
        creation_date=as_utc(c.creation_date),  # type: ignore[arg-type]
        name=c.name,
        uuid=c.uuid,
        job_id_prefix=c.job_id_prefix,
        description=c.description,
    )


def plugin_meta(base: str, meta: m.PluginMeta) -> schema.PluginMeta:
    url = f"{base}/api/v1/plugins/metas/{meta.id}/"
    return schema.PluginMeta(
        url=url,
        id=meta.id or 0,
        creation_date=as_utc(meta.creation_date),  # type: ignore[arg-type]
        name=meta.name,
        title=meta.title,
        stars=meta.stars,
        public_repo=meta.public_repo,
        license=meta.license,
        type=PluginType(meta.type),
        icon=meta.icon,
        category=meta.category,
        authors=meta.authors,
        documentation=meta.documentation,
        plugins=f"{url}plugins/",
    )


def user_permission(
    base: str, p: m.FeedUserPermission, f: m.Feed, u: m.User
) -> schema.FeedUserPermission:
    return schema.FeedUserPermission(
        url=f"{base}/api/v1/userpermissions/{p.id}/",
        id=p.id or 0,
        feed_id=schema.FeedId(f.id or 0),
        feed_name=f.name,
        user_id=schema.UserId(u.id or 0),
        user_username=u.username,
        feed=f"{base}/api/v1/{f.id}/",
        user=f"{base}/api/v1/users/{u.id}/",
    )


def group_permission(
    base: str, p: m.FeedGroupPermission, f: m.Feed, g: m.Group
) -> schema.FeedGroupPermission:
    return schema.FeedGroupPermission(
        url=f"{base}/api/v1/grouppermissions/{p.id}/",
        id=p.id or 0,
        feed_id=schema.FeedId(f.id or 0),
        feed_name=f.name,
        group_id=schema.GroupId(g.id or 0),
        group_name=g.name,
        feed=f"{base}/api/v1/{f.id}/",
        group=f"{base}/api/v1/groups/{g.id}/",
    )


def note(base: str, n: m.Note) -> schema.Note:
    return schema.Note(
        url=f"{base}/api/v1/note{n.feed_id}/",
        id=n.id or 0,
        title=n.title,
        content=n.content,
        feed=f"{base}/api/v1/{n.feed_id}/",
    )


def comment(base: str, c: m.Comment, owner_username: str) -> schema.Comment:
    return schema.Comment(
        url=f"{base}/api/v1/comments/{c.id}/",
        id=c.id or 0,
        creation_date=as_utc(c.creation_date),  # type: ignore[arg-type]
        title=c.title,
        owner_username=owner_username,
        content=c.content,
        feed=f"{base}/api/v1/{c.feed_id}/",
    )


def tag(base: str, t: m.Tag, owner_username: str) -> schema.Tag:
    url = f"{base}/api/v1/tags/{t.id}/"
    return schema.Tag(
        url=url,
        id=t.id or 0,
        name=t.name,
        owner_username=owner_username,
        color=t.color,
        feeds=f"{url}feeds/",
        taggings=f"{url}taggings/",
    )


def tagging(base: str, t: m.Tagging) -> schema.Tagging:
    return schema.Tagging(
        url=f"{base}/api/v1/taggings/{t.id}/",
        id=t.id or 0,
        tag_id=t.tag_id,
        feed_id=schema.FeedId(t.feed_id),
        tag=f"{base}/api/v1/tags/{t.tag_id}/",
        feed=f"{base}/api/v1/{t.feed_id}/",
    )


def download_token(base: str, t: m.DownloadToken, owner_username: str) -> schema.DownloadToken:
    return schema.DownloadToken(
        url=f"{base}/api/v1/downloadtokens/{t.id}/",
        id=t.id or 0,
        creation_date=as_utc(t.creation_date),  # type: ignore[arg-type]
        token=t.token,
        owner_username=owner_username,
        owner=f"{base}/api/v1/users/{t.owner_id}/",
    )


def folder(base: str, f: m.Folder, parent_id: int | None) -> schema.Folder:
    url = f"{base}/api/v1/filebrowser/{f.id}/"
    return schema.Folder(
        url=url,
        id=schema.FolderId(f.id or 0),
        creation_date=as_utc(f.creation_date),  # type: ignore[arg-type]
        path=f.path,
        parent=f"{base}/api/v1/filebrowser/{parent_id}/" if parent_id else None,
        children=f"{url}children/",
        files=f"{url}files/",
        link_files=f"{url}linkfiles/",
        group_permissions=f"{url}grouppermissions/",
        user_permissions=f"{url}userpermissions/",
    )


def folder_file(
    base: str, f: m.StoredFile, owner_username: str, folder_id: int
) -> schema.FolderFile:
    url = f"{base}/api/v1/filebrowser/files/{f.id}/"
    return schema.FolderFile(
        url=url,
        id=schema.FileId(f.id or 0),
        creation_date=as_utc(f.creation_date),  # type: ignore[arg-type]
        fname=f.fname,
        fsize=f.fsize,
        public=f.public,
        owner_username=owner_username,
        file_resource=f"{url}{_basename(f.fname)}",
        parent_folder=f"{base}/api/v1/filebrowser/{folder_id}/",
        group_permissions=f"{url}grouppermissions/",
        user_permissions=f"{url}userpermissions/",
    )


def link_file(
    base: str, f: m.StoredFile, target: str, owner_username: str, folder_id: int
) -> schema.LinkFile:
    url = f"{base}/api/v1/filebrowser/linkfiles/{f.id}/"
    return schema.LinkFile(
        url=url,
        id=schema.FileId(f.id or 0),
        creation_date=as_utc(f.creation_date),  # type: ignore[arg-type]
        path=target,
        fname=f.fname,
        fsize=f.fsize,
        public=f.public,
        owner_username=owner_username,
        file_resource=f"{url}{_basename(f.fname)}",
        parent_folder=f"{base}/api/v1/filebrowser/{folder_id}/",
        group_permissions=f"{url}grouppermissions/",
        user_permissions=f"{url}userpermissions/",
    )


def pacs(base: str, p: m.PacsService) -> schema.Pacs:
    url = f"{base}/api/v1/pacs/{p.id}/"
    return schema.Pacs(
        url=url,
        id=p.id or 0,
        identifier=p.identifier,
        active=p.active,
        folder_path=f"SERVICES/PACS/{p.identifier}",
        query_list=f"{url}queries/",
        series_list=f"{url}series/",
    )


def pacs_query(
    base: str, q: m.PacsQuery, p: m.PacsService, owner_username: str
) -> schema.PacsQuery:
    return schema.PacsQuery(
        url=f"{base}/api/v1/pacs/queries/{q.id}/",
        id=q.id or 0,
        creation_date=as_utc(q.creation_date),  # type: ignore[arg-type]
        title=q.title,
        query=q.query,
        description=q.description,
        status=q.status,
        result=q.result,
        execute=q.execute,
        owner_username=owner_username,
        pacs_id=p.id or 0,
        pacs_identifier=p.identifier,
        pacs=f"{base}/api/v1/pacs/{p.id}/",
    )


def pacs_series(base: str, s: m.PacsSeries, p: m.PacsService) -> schema.PacsSeries:
    url = f"{base}/api/v1/pacs/series/{s.id}/"
    return schema.PacsSeries(
        url=url,
        id=s.id or 0,
        creation_date=as_utc(s.creation_date),  # type: ignore[arg-type]
        PatientID=s.PatientID,
        PatientName=s.PatientName,
        PatientBirthDate=s.PatientBirthDate,
        PatientAge=s.PatientAge,
        PatientSex=s.PatientSex,
        StudyDate=s.StudyDate,
        AccessionNumber=s.AccessionNumber,
        Modality=s.Modality,
        ProtocolName=s.ProtocolName,
        StudyInstanceUID=s.StudyInstanceUID,
        StudyDescription=s.StudyDescription,
        SeriesInstanceUID=s.SeriesInstanceUID,
        SeriesDescription=s.SeriesDescription,
        pacs_identifier=p.identifier,
        folder_path=s.folder_path,
        pacs=f"{base}/api/v1/pacs/{p.id}/",
        files=f"{base}/api/v1/pacs/files/search/?series_id={s.id}",
    )


def pacs_file(
    base: str, pf: m.PacsFile, f: m.StoredFile, s: m.PacsSeries, p: m.PacsService, owner: str
) -> schema.PacsFile:
    url = f"{base}/api/v1/pacs/files/{pf.id}/"
    return schema.PacsFile(
        url=url,
        id=schema.FileId(pf.id or 0),
        creation_date=as_utc(f.creation_date),  # type: ignore[arg-type]
        fname=f.fname,
        fsize=f.fsize,
        public=f.public,
        owner_username=owner,
        PatientID=s.PatientID,
        StudyInstanceUID=s.StudyInstanceUID,
        SeriesInstanceUID=s.SeriesInstanceUID,
        pacs_identifier=p.identifier,
        file_resource=f"{url}{_basename(f.fname)}",
        series=f"{base}/api/v1/pacs/series/{s.id}/",
        pacs=f"{base}/api/v1/pacs/{p.id}/",
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
        previous_plugin_piping_id=schema.PipingId(n.previous_id) if n.previous_id else None,
        plugin_piping_cpu_limit=n.cpu_limit,
        plugin_piping_memory_limit=n.memory_limit,
        plugin_piping_number_of_workers=n.number_of_workers,
        plugin_piping_gpu_limit=n.gpu_limit,
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
        **_job_counts(counts),
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


#: The file browser grant wire models, by (target kind, "user" or "group").
_GRANT_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("folder", "user"): schema.FolderUserPermission,
    ("folder", "group"): schema.FolderGroupPermission,
    ("file", "user"): schema.FileUserPermission,
    ("file", "group"): schema.FileGroupPermission,
    ("linkfile", "user"): schema.LinkFileUserPermission,
    ("linkfile", "group"): schema.LinkFileGroupPermission,
}

#: (URL segment, field prefix, path field suffix) of each target kind.
_GRANT_TARGETS = {
    "folder": ("filebrowser/", "folder", "path"),
    "file": ("filebrowser/files/", "file", "fname"),
    "linkfile": ("filebrowser/linkfiles/", "link_file", "fname"),
}


def file_grant(
    base: str, kind: str, grant: Any, target_path: str, subject: m.User | m.Group
) -> BaseModel:
    """A folder, file or link file grant to a user or a group, as ChRIS shapes it
    (``folder_id``/``folder_path``, ``file_id``/``file_fname``,
    ``link_file_id``/``link_file_fname``, then the user's or group's fields)."""
    segment, prefix, path_field = _GRANT_TARGETS[kind]
    target_id = grant.folder_id if kind == "folder" else grant.file_id
    who = "user" if isinstance(subject, m.User) else "group"
    fields: dict[str, Any] = {
        "url": f"{base}/api/v1/{segment}{who}permissions/{grant.id}/",
        "id": grant.id or 0,
        "permission": grant.permission,
        f"{prefix}_id": target_id,
        f"{prefix}_{path_field}": target_path,
        prefix: f"{base}/api/v1/{segment}{target_id}/",
    }
    if isinstance(subject, m.User):
        fields |= {
            "user_id": subject.id or 0,
            "user_username": subject.username,
            "user": f"{base}/api/v1/users/{subject.id}/",
        }
    else:
        fields |= {
            "group_id": subject.id or 0,
            "group_name": subject.name,
            "group": f"{base}/api/v1/groups/{subject.id}/",
        }
    return _GRANT_MODELS[(kind, who)](**fields)
