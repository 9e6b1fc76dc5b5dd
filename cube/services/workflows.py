"""Workflows: a pipeline instantiated on an existing plugin instance (reference §6).

:func:`create_workflow` makes one plugin instance per pipeline node, parents
first, in one transaction: the root's ``previous`` is the instance the user
named, every other node's ``previous`` is the instance of its previous node,
and a ts node's ``plugininstances`` (node titles in the pipeline) becomes the
ids of those nodes' instances. Each instance goes through the same
validation and scheduling as one created by hand
(:func:`cube.services.instances.create_instance`), so the scheduler runs
them as their parents finish. ``nodes_info`` may override, per node (by
``piping_id``), the title, parameter defaults, limits and compute resource.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import (
    Pipeline,
    Plugin,
    PluginInstance,
    PluginMeta,
    User,
    Workflow,
    WorkflowInstance,
)
from cube.errors import BadRequest, NotFound, PermissionDenied
from cube.services import instances as isvc
from cube.services import pipelines as psvc
from cube.services.topology import TS_PLUGININSTANCES


class NodeInfo(BaseModel):
    """Per-node overrides of a workflow (``nodes_info`` entries)."""

    model_config = ConfigDict(extra="forbid")

    piping_id: int
    #: Sent by python-chrisclient (``compute_workflow_nodes_info``); the
    #: pipeline already fixes each node's previous node, so it is not used.
    previous_piping_id: int | None = None
    title: str | None = Field(default=None, max_length=100)
    compute_resource_name: str | None = None
    plugin_parameter_defaults: list[psvc.ParameterDefault] = Field(default_factory=list)
    cpu_limit: int | str | None = None
    memory_limit: int | str | None = None
    number_of_workers: int | None = None
    gpu_limit: int | None = None

    @field_validator("plugin_parameter_defaults", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return [{"name": k, "default": v} for k, v in value.items()]
        return [] if value is None else value


def _nodes_info(raw: Any) -> list[NodeInfo]:
    """``nodes_info`` as a list (ChRIS clients send it as a JSON string).

    Raises:
        BadRequest: not a list of node overrides.
    """
    if raw in (None, ""):
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadRequest.field("nodes_info", f"not valid JSON: {exc}") from exc
    if not isinstance(raw, list):
        raise BadRequest.field("nodes_info", "must be a list of node objects")
    try:
        return [NodeInfo.model_validate(item) for item in raw]
    except ValidationError as exc:
        messages = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        ]
        raise BadRequest("invalid nodes_info", fields={"nodes_info": messages}) from exc


async def create_workflow(
    session: AsyncSession, user: User, pipeline_id: int, data: dict[str, Any]
) -> tuple[Workflow, list[PluginInstance]]:
    """Instantiate a pipeline on ``previous_plugin_inst_id`` (see the module).

    Returns the workflow and its instances, parents first.

    Raises:
        NotFound: no such (visible) pipeline.
        BadRequest: a missing or unknown previous instance, bad ``nodes_info``,
            or a node whose instance is invalid (the message names the node).
        PermissionDenied: the previous instance is in another user's feed.
    """
    pipeline = await psvc.visible_pipeline(session, user, pipeline_id)
    prev_raw = data.get("previous_plugin_inst_id")
    if prev_raw in (None, ""):
        raise BadRequest.field("previous_plugin_inst_id", "This field is required.")
    try:
        previous = await isvc.visible_instance(session, user, int(prev_raw))
    except (TypeError, ValueError):
        raise BadRequest.field(
            "previous_plugin_inst_id", f"not an instance id: {prev_raw!r}"
        ) from None
    except NotFound:
        raise BadRequest.field(
            "previous_plugin_inst_id", f"no plugin instance {prev_raw}"
        ) from None
    if previous.owner_id != user.id and not user.is_staff:
        raise PermissionDenied("you may not add to another user's feed")
    title = str(data.get("title") or pipeline.name)
    if len(title) > 100:
        raise BadRequest.field("title", "at most 100 characters")

    nodes = await psvc.pipings(session, pipeline_id)
    infos = {i.piping_id: i for i in _nodes_info(data.get("nodes_info"))}
    if unknown := sorted(set(infos) - {n.id for n in nodes}):
        raise BadRequest.field("nodes_info", f"pipeline {pipeline.name!r} has no piping {unknown}")
    defaults: dict[int, dict[str, Any]] = {}
    for value, param, piping in await psvc.piping_defaults(session, pipeline_id):
        assert piping.id is not None
        defaults.setdefault(piping.id, {})[param.name] = value.value
    piping_of_title = {n.title: n for n in nodes}

    assert user.id is not None and pipeline.id is not None
    workflow = Workflow(title=title, pipeline_id=pipeline.id, owner_id=user.id)
    session.add(workflow)
    await session.flush()
    assert workflow.id is not None
    instance_of: dict[int, int] = {}  # piping id → instance id
    created: list[PluginInstance] = []
    for node in nodes:
        assert node.id is not None
        info = infos.get(node.id)
        params = dict(defaults.get(node.id, {}))
        if info is not None:
            params.update({d.name: d.default for d in info.plugin_parameter_defaults})
        meta_type = (
            await session.exec(
                select(PluginMeta.type)
                .join(Plugin, col(Plugin.meta_id) == col(PluginMeta.id))
                .where(Plugin.id == node.plugin_id)
            )
        ).one()
        if meta_type == "ts":
            titles = psvc.ts_titles(params)
            params[TS_PLUGININSTANCES] = ",".join(
                str(instance_of[piping_of_title[t].id or 0]) for t in titles
            )
        body: dict[str, Any] = {
            **params,
            "title": (info.title if info and info.title else node.title),
            "previous_id": (
                previous.id if node.previous_id is None else instance_of[node.previous_id]
            ),
            "cpu_limit": node.cpu_limit,
            "memory_limit": node.memory_limit,
            "number_of_workers": node.number_of_workers,
            "gpu_limit": node.gpu_limit,
        }
        if info is not None:
            for key in ("cpu_limit", "memory_limit", "number_of_workers", "gpu_limit"):
                if getattr(info, key) is not None:
                    body[key] = getattr(info, key)
            if info.compute_resource_name:
                body["compute_resource_name"] = info.compute_resource_name
        try:
            inst = await isvc.create_instance(session, user, node.plugin_id, body)
        except BadRequest as exc:
            raise BadRequest(
                f"node {node.title!r}: {exc.detail}",
                fields={f"{node.title}.{k}": v for k, v in exc.fields.items()} or None,
            ) from exc
        assert inst.id is not None
        instance_of[node.id] = inst.id
        session.add(
            WorkflowInstance(
                plugin_inst_id=inst.id, workflow_id=workflow.id, plugin_piping_id=node.id
            )
        )
        created.append(inst)
    await session.flush()
    return workflow, created


def can_see(user: User, workflow: Workflow) -> bool:
    """A workflow is its owner's (and staff's)."""
    return workflow.owner_id == user.id or user.is_staff


async def visible_workflow(session: AsyncSession, user: User, workflow_id: int) -> Workflow:
    """A workflow the user may see.

    Raises:
        NotFound: no such workflow, or not the user's.
    """
    workflow = await session.get(Workflow, workflow_id)
    if workflow is None or not can_see(user, workflow):
        raise NotFound("Not found.")
    return workflow


def instances_query(workflow_id: int) -> Any:
    """The plugin instances of a workflow (a query to page through)."""
    return select(PluginInstance).where(
        col(PluginInstance.id).in_(
            select(WorkflowInstance.plugin_inst_id).where(
                WorkflowInstance.workflow_id == workflow_id
            )
        )
    )


async def status_counts(session: AsyncSession, workflow_id: int) -> dict[str, int]:
    """Number of a workflow's instances in each status."""
    rows = await session.exec(
        select(PluginInstance.status, func.count())
        .join(WorkflowInstance, col(WorkflowInstance.plugin_inst_id) == col(PluginInstance.id))
        .where(WorkflowInstance.workflow_id == workflow_id)
        .group_by(PluginInstance.status)
    )
    return {status: count for status, count in rows.all()}


async def workflow_of_instance(
    session: AsyncSession, inst_id: int
) -> tuple[Workflow, Pipeline] | None:
    """The workflow (and its pipeline) an instance belongs to, if any."""
    row = (
        await session.exec(
            select(Workflow, Pipeline)
            .join(WorkflowInstance, col(WorkflowInstance.workflow_id) == col(Workflow.id))
            .join(Pipeline, col(Pipeline.id) == col(Workflow.pipeline_id))
            .where(WorkflowInstance.plugin_inst_id == inst_id)
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def job_env(session: AsyncSession, inst_id: int) -> list[str]:
    """The environment ChRIS gives the job of a workflow's instance (reference §1.7):
    ``CHRIS_WORKFLOW_ID``, ``CHRIS_PIPELINE_ID`` and ``CHRIS_WORKFLOW_PLG_INSTANCES``
    (``title:id`` of every instance of the workflow); none outside a workflow."""
    found = await workflow_of_instance(session, inst_id)
    if found is None:
        return []
    workflow, pipeline = found
    assert workflow.id is not None and pipeline.id is not None
    return await workflow_job_env(session, workflow.id, pipeline.id)


async def workflow_job_env(session: AsyncSession, workflow_id: int, pipeline_id: int) -> list[str]:
    """:func:`job_env` of an instance of workflow ``workflow_id`` (of pipeline ``pipeline_id``)."""
    rows = await session.exec(instances_query(workflow_id).order_by(col(PluginInstance.id)))
    members = ",".join(f"{i.title}:{i.id}" for i in rows.all())
    return [
        f"CHRIS_WORKFLOW_ID={workflow_id}",
        f"CHRIS_PIPELINE_ID={pipeline_id}",
        f"CHRIS_WORKFLOW_PLG_INSTANCES={members}",
    ]
