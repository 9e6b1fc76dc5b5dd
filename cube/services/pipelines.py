"""Pipelines: parse, validate, store and export trees of plugins (reference §6).

A pipeline is defined as in ChRIS: ``name``, ``authors``, ``category``,
``description``, ``locked`` and a ``plugin_tree``, a list of nodes (or that
list as a JSON string, as ChRIS clients send it), each with:

* ``title`` (unique in the pipeline) and ``previous`` (the title of its
  parent node; ``null`` for the one root), or, in ChRIS's format before May
  2023, ``previous_index`` (the parent's position in the list);
* the plugin: ``plugin_name`` and ``plugin_version``, or ``plugin: "<name>
  v<version>"`` (YAML source files), or ``plugin_id``;
* ``plugin_parameter_defaults``: ``[{"name": ..., "default": ...}]`` or a
  mapping of names to defaults;
* optional ``cpu_limit`` (``"1000m"`` or millicores), ``memory_limit``
  (``"1Gi"`` or MiB), ``number_of_workers`` and ``gpu_limit``.

Rules, each failing with its own message (:class:`~cube.errors.BadRequest`
on ``plugin_tree`` unless said otherwise): exactly one root; unique titles;
each ``previous`` names a node; the plugins exist with that name and
version; no fs plugin; every plugin parameter without a default in the
plugin gets one here, of the parameter's type; no unknown parameter; limits
within the plugin's min and max; a ts node's ``plugininstances`` is a
comma-separated list of node titles that includes its ``previous`` (and its
``filter`` has one expression per listed node, or none); no cycle through
``previous`` and ``plugininstances`` links. A name already taken is a
:class:`~cube.errors.Conflict`.

Instead of ``plugin_tree``, ``plugin_inst_id`` snapshots an existing
instance and its descendants (:func:`tree_of_instance`), as in ChRIS.

Stored, every parameter of every node gets a default (the plugin's when the
pipeline gives none), so the export (:func:`export_pipeline`, ChRIS's
``json/`` shape, nodes in breadth-first order) lists them all and can be
created again as the same pipeline.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from chris_sdk.descriptor import ParameterType, PluginType, parse_cpu_millicores, parse_memory_mib
from chris_sdk.topology import parse_filters
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import (
    Pipeline,
    PipelineSourceFile,
    PipingDefaultParameter,
    Plugin,
    PluginInstance,
    PluginMeta,
    PluginParameter,
    PluginPiping,
    User,
    Workflow,
    WorkflowInstance,
    utcnow,
)
from cube.errors import BadRequest, Conflict, NotFound, PermissionDenied
from cube.services.instances import ACTIVE, parameter_values, visible_instance
from cube.services.plugins import plugin_parameters
from cube.services.topology import TS_FILTER, TS_PLUGININSTANCES, children_of, ts_parent_ids
from cube.storage import Storage, check_storage_path

TREE = "plugin_tree"
#: Largest pipeline source file accepted (bytes).
MAX_SOURCE_BYTES = 1 << 20


class ParameterDefault(BaseModel):
    """One ``plugin_parameter_defaults`` entry."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    default: Any


class NodeSpec(BaseModel):
    """One node of a ``plugin_tree`` as written (before plugins are looked up)."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=100)
    previous: str | None = None
    plugin_id: int | None = None
    plugin_name: str | None = None
    plugin_version: str | None = None
    plugin: str | None = None
    plugin_parameter_defaults: list[ParameterDefault] = Field(default_factory=list)
    cpu_limit: int | str | None = None
    memory_limit: int | str | None = None
    number_of_workers: int | None = None
    gpu_limit: int | None = None

    @field_validator("plugin_parameter_defaults", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        # YAML source files write the defaults as a mapping
        if isinstance(value, dict):
            return [{"name": k, "default": v} for k, v in value.items()]
        return [] if value is None else value


class PipelineSpec(BaseModel):
    """A pipeline as posted or uploaded."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=100)
    authors: str = Field(default="", max_length=200)
    category: str = Field(default="", max_length=100)
    description: str = Field(default="", max_length=2000)
    locked: bool = True
    plugin_tree: list[NodeSpec]

    @field_validator("plugin_tree", mode="before")
    @classmethod
    def _json_string(cls, value: Any) -> Any:
        # ChRIS clients send the tree as a JSON string
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"plugin_tree is not valid JSON: {exc}") from exc
        return _from_previous_index(value)


def _from_previous_index(tree: Any) -> Any:
    """Nodes in ChRIS's format before May 2023 name their parent by its position
    in the list (``previous_index``); give them the parent's ``previous`` title."""
    if not isinstance(tree, list) or not any(
        isinstance(n, dict) and "previous_index" in n for n in tree
    ):
        return tree
    converted = []
    for n, node in enumerate(tree):
        if not isinstance(node, dict) or "previous_index" not in node:
            converted.append(node)
            continue
        node = dict(node)
        index = node.pop("previous_index")
        if index is None:
            node.setdefault("previous", None)
        elif isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(tree):
            parent = tree[index]
            node.setdefault("previous", parent.get("title") if isinstance(parent, dict) else None)
        else:
            raise ValueError(f"node {n}: previous_index {index!r} is not the index of a node")
        converted.append(node)
    return converted


def parse_spec(data: dict[str, Any]) -> PipelineSpec:
    """Validate the shape of a pipeline definition.

    Raises:
        BadRequest: missing or malformed fields, one message per field.
    """
    if isinstance(data.get("locked"), str):
        data = {**data, "locked": data["locked"].strip().lower() in ("true", "1", "yes")}
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        fields: dict[str, list[str]] = {}
        for e in exc.errors():
            loc = [str(p) for p in e["loc"]]
            key = loc[0] if loc else "pipeline"
            where = ".".join(loc[1:])
            fields.setdefault(key, []).append(f"{where}: {e['msg']}" if where else e["msg"])
        raise BadRequest("invalid pipeline", fields=fields) from exc


def parse_source(text: bytes, kind: str) -> dict[str, Any]:
    """A pipeline source file (``yaml`` or ``json``) as a dict.

    Raises:
        BadRequest: an unknown type, or text that does not parse to a mapping.
    """
    try:
        if kind == "json":
            data = json.loads(text)
        elif kind == "yaml":
            data = yaml.safe_load(text)
        else:
            raise BadRequest.field("type", f"must be 'yaml' or 'json', got {kind!r}")
    except (json.JSONDecodeError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BadRequest.field("fname", f"not a valid {kind} file: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest.field("fname", f"a {kind} pipeline file holds a mapping at its top")
    return data


@dataclass
class _Node:
    """A node being validated: its spec, plugin and resolved defaults and limits."""

    spec: NodeSpec
    plugin: Plugin
    meta: PluginMeta
    params: list[PluginParameter]
    defaults: dict[str, Any]
    limits: dict[str, int]


def _tree_error(message: str) -> BadRequest:
    return BadRequest.field(TREE, message)


async def _resolve_plugin(session: AsyncSession, node: NodeSpec) -> tuple[Plugin, PluginMeta]:
    where = f"node {node.title!r}"
    name, version = node.plugin_name, node.plugin_version
    if node.plugin:
        parts = node.plugin.strip().rsplit(" ", 1)
        if len(parts) != 2 or not parts[1].startswith("v"):
            raise _tree_error(f"{where}: plugin must read '<name> v<version>', got {node.plugin!r}")
        name, version = parts[0].strip(), parts[1][1:]
    if name:
        if not version:
            raise _tree_error(f"{where}: plugin_version is required with plugin_name")
        row = (
            await session.exec(
                select(Plugin, PluginMeta)
                .join(PluginMeta, col(PluginMeta.id) == col(Plugin.meta_id))
                .where(PluginMeta.name == name, Plugin.version == version)
            )
        ).first()
        if row is None:
            raise _tree_error(f"{where}: no plugin {name} version {version} is registered")
        return row[0], row[1]
    if node.plugin_id is not None:
        plugin = await session.get(Plugin, node.plugin_id)
        if plugin is None:
            raise _tree_error(f"{where}: no plugin with id {node.plugin_id}")
        meta = await session.get(PluginMeta, plugin.meta_id)
        assert meta is not None
        return plugin, meta
    raise _tree_error(f"{where}: name the plugin (plugin_name and plugin_version)")


def _node_limits(node: NodeSpec, plugin: Plugin) -> dict[str, int]:
    where = f"node {node.title!r}"
    limits: dict[str, int] = {}
    for name, raw, parse, low, high in (
        (
            "cpu_limit",
            node.cpu_limit,
            parse_cpu_millicores,
            plugin.min_cpu_limit,
            plugin.max_cpu_limit,
        ),
        (
            "memory_limit",
            node.memory_limit,
            parse_memory_mib,
            plugin.min_memory_limit,
            plugin.max_memory_limit,
        ),
        (
            "number_of_workers",
            node.number_of_workers,
            None,
            plugin.min_number_of_workers,
            plugin.max_number_of_workers,
        ),
        ("gpu_limit", node.gpu_limit, None, plugin.min_gpu_limit, plugin.max_gpu_limit),
    ):
        try:
            value = low if raw is None else (parse(raw, low) if parse else int(raw))
        except ValueError as exc:
            raise _tree_error(f"{where}: {name}: {exc}") from None
        if not low <= value <= high:
            raise _tree_error(f"{where}: {name} must be between {low} and {high}, got {value}")
        limits[name] = value
    return limits


def _node_defaults(
    node: NodeSpec, meta: PluginMeta, params: list[PluginParameter]
) -> dict[str, Any]:
    where = f"node {node.title!r}"
    by_name = {p.name: p for p in params}
    given: dict[str, Any] = {}
    for entry in node.plugin_parameter_defaults:
        param = by_name.get(entry.name)
        if param is None:
            raise _tree_error(f"{where}: {meta.name} has no parameter {entry.name!r}")
        if entry.name in given:
            raise _tree_error(f"{where}: parameter {entry.name!r} is given twice")
        if entry.default is None:
            raise _tree_error(f"{where}: parameter {entry.name!r} has a null default")
        value = entry.default
        if param.type == ParameterType.STR and isinstance(value, int | float):
            # YAML reads ``prefix: 007`` as a number; the parameter wants its text
            value = str(value) if not isinstance(value, bool) else value
        try:
            given[entry.name] = ParameterType(param.type).coerce(value)
        except ValueError as exc:
            raise _tree_error(f"{where}: parameter {entry.name!r}: {exc}") from None
    defaults: dict[str, Any] = {}
    for param in params:
        if param.name in given:
            defaults[param.name] = given[param.name]
        elif param.default is not None:
            defaults[param.name] = param.default
        else:
            raise _tree_error(
                f"{where}: parameter {param.name!r} of {meta.name} has no default in the "
                "plugin; give one in plugin_parameter_defaults"
            )
    return defaults


def ts_titles(defaults: dict[str, Any]) -> list[str]:
    """The node titles a ts node's ``plugininstances`` default lists."""
    return [t.strip() for t in str(defaults.get(TS_PLUGININSTANCES) or "").split(",") if t.strip()]


def order_nodes(specs: Sequence[NodeSpec], ts_parents: dict[str, list[str]]) -> list[str]:
    """Check the links of a tree and order its titles so that every node comes
    after all its parents (breadth-first from the root where links allow).

    Raises:
        BadRequest: not exactly one root, duplicate titles, unknown
            ``previous`` or ``plugininstances`` titles, or a cycle.
    """
    titles = [n.title for n in specs]
    if dupes := sorted({t for t in titles if titles.count(t) > 1}):
        raise _tree_error(f"node titles must be unique; repeated: {', '.join(dupes)}")
    roots = [n.title for n in specs if n.previous is None]
    if len(roots) != 1:
        found = ", ".join(repr(r) for r in roots) or "none"
        raise _tree_error(
            f"a pipeline has exactly one root (a node whose previous is null); found {found}"
        )
    known = set(titles)
    parents: dict[str, list[str]] = {}
    for n in specs:
        if n.previous is not None and n.previous not in known:
            raise _tree_error(f"node {n.title!r}: previous {n.previous!r} is not a node title")
        extra = ts_parents.get(n.title, [])
        if unknown := [t for t in extra if t not in known]:
            raise _tree_error(
                f"node {n.title!r}: plugininstances names unknown node(s) "
                + ", ".join(repr(t) for t in unknown)
            )
        parents[n.title] = list(dict.fromkeys([*([n.previous] if n.previous else []), *extra]))
    # Kahn's algorithm; a node left over sits on a cycle
    children: dict[str, list[str]] = {t: [] for t in titles}
    pending = {t: len(ps) for t, ps in parents.items()}
    for t, ps in parents.items():
        for p in ps:
            children[p].append(t)
    queue = deque(t for t in titles if pending[t] == 0)
    order: list[str] = []
    while queue:
        t = queue.popleft()
        order.append(t)
        for c in children[t]:
            pending[c] -= 1
            if pending[c] == 0:
                queue.append(c)
    if len(order) != len(titles):
        stuck = [t for t in titles if t not in order]
        raise _tree_error(
            "the links of plugin_tree form a cycle through " + ", ".join(repr(t) for t in stuck)
        )
    return order


async def validate(session: AsyncSession, spec: PipelineSpec) -> list[_Node]:
    """Check a pipeline against the registered plugins; nodes in creation order.

    Raises:
        BadRequest: a broken rule (see the module), with a message naming the node.
    """
    if not spec.plugin_tree:
        raise _tree_error("plugin_tree has no node")
    nodes: dict[str, _Node] = {}
    ts_parents: dict[str, list[str]] = {}
    for n in spec.plugin_tree:
        plugin, meta = await _resolve_plugin(session, n)
        if meta.type == PluginType.FS:
            raise _tree_error(f"node {n.title!r}: {meta.name} is an fs plugin; pipelines take none")
        assert plugin.id is not None
        params = await plugin_parameters(session, plugin.id)
        defaults = _node_defaults(n, meta, params)
        if meta.type == PluginType.TS:
            listed = ts_titles(defaults)
            if n.previous is None:
                raise _tree_error(f"node {n.title!r}: a ts node cannot be the root")
            if n.previous not in listed:
                raise _tree_error(
                    f"node {n.title!r}: plugininstances must list its previous {n.previous!r}"
                    f" (got {defaults.get(TS_PLUGININSTANCES)!r})"
                )
            try:
                parse_filters(str(defaults.get(TS_FILTER) or ""), len(listed))
            except ValueError as exc:
                raise _tree_error(f"node {n.title!r}: {exc}") from None
            ts_parents[n.title] = listed
        nodes[n.title] = _Node(n, plugin, meta, params, defaults, _node_limits(n, plugin))
    order = order_nodes(spec.plugin_tree, ts_parents)
    return [nodes[t] for t in order]


async def create_pipeline(session: AsyncSession, user: User, data: dict[str, Any]) -> Pipeline:
    """Create a pipeline from a definition (see the module).

    Raises:
        BadRequest: the definition breaks a rule.
        Conflict: a pipeline of that name exists.
    """
    if data.get("plugin_inst_id") not in (None, "") and not data.get(TREE):
        data = {**data, TREE: await tree_of_instance(session, user, data["plugin_inst_id"])}
    spec = parse_spec(data)
    nodes = await validate(session, spec)
    taken = (await session.exec(select(Pipeline.id).where(Pipeline.name == spec.name))).first()
    if taken is not None:
        raise Conflict(f"pipeline {spec.name!r} exists", fields={"name": ["already exists"]})
    assert user.id is not None
    pipeline = Pipeline(
        name=spec.name,
        locked=spec.locked,
        authors=spec.authors,
        category=spec.category,
        description=spec.description,
        owner_id=user.id,
    )
    session.add(pipeline)
    await session.flush()
    assert pipeline.id is not None
    ids: dict[str, int] = {}
    for position, node in enumerate(nodes):
        assert node.plugin.id is not None
        piping = PluginPiping(
            pipeline_id=pipeline.id,
            plugin_id=node.plugin.id,
            title=node.spec.title,
            previous_id=ids[node.spec.previous] if node.spec.previous else None,
            position=position,
            **node.limits,
        )
        session.add(piping)
        await session.flush()
        assert piping.id is not None
        ids[node.spec.title] = piping.id
        for param in node.params:
            assert param.id is not None
            session.add(
                PipingDefaultParameter(
                    plugin_piping_id=piping.id,
                    plugin_param_id=param.id,
                    value=node.defaults[param.name],
                )
            )
    await session.flush()
    return pipeline


async def tree_of_instance(session: AsyncSession, user: User, raw_id: Any) -> list[dict[str, Any]]:
    """The ``plugin_tree`` of an existing instance and its descendants (ChRIS's
    ``plugin_inst_id``): each node gets the instance's parameters as defaults and
    its limits; titles are the instances' (``<plugin>_<id>`` when empty or taken).

    Raises:
        BadRequest: not an instance the user may read, or a ts descendant with
            a parent outside the subtree.
    """
    try:
        root = await visible_instance(session, user, int(raw_id))
    except (TypeError, ValueError):
        raise BadRequest.field("plugin_inst_id", f"not an instance id: {raw_id!r}") from None
    except NotFound:
        raise BadRequest.field("plugin_inst_id", f"no plugin instance {raw_id}") from None
    order: list[PluginInstance] = []
    frontier = [root]
    seen: set[int] = set()
    while frontier:  # breadth-first: parents before children along previous links
        inst = frontier.pop(0)
        assert inst.id is not None
        if inst.id in seen:
            continue
        seen.add(inst.id)
        order.append(inst)
        for child_id in await children_of(session, inst.id):
            child = await session.get(PluginInstance, child_id)
            if child is not None and child.previous_id == inst.id:
                frontier.append(child)
    titles: dict[int, str] = {}
    for inst in order:
        assert inst.id is not None
        plugin = await session.get(Plugin, inst.plugin_id)
        assert plugin is not None
        meta = await session.get(PluginMeta, plugin.meta_id)
        assert meta is not None
        title = inst.title or f"{meta.name}_{inst.id}"
        titles[inst.id] = title if title not in titles.values() else f"{title}_{inst.id}"
    tree: list[dict[str, Any]] = []
    for inst in order:
        assert inst.id is not None
        plugin = await session.get(Plugin, inst.plugin_id)
        assert plugin is not None
        meta = await session.get(PluginMeta, plugin.meta_id)
        assert meta is not None
        defaults = {p.name: v.value for v, p in await parameter_values(session, inst.id)}
        if parents := await ts_parent_ids(session, inst.id):
            if outside := [p for p in parents if p not in titles]:
                raise BadRequest.field(
                    "plugin_inst_id",
                    f"instance {inst.id} joins instances {outside}, outside the subtree",
                )
            defaults[TS_PLUGININSTANCES] = ",".join(titles[p] for p in parents)
        tree.append(
            {
                "title": titles[inst.id],
                "previous": None if inst is root else titles[inst.previous_id or 0],
                "plugin_name": meta.name,
                "plugin_version": plugin.version,
                "plugin_parameter_defaults": [
                    {"name": k, "default": v} for k, v in defaults.items()
                ],
                "cpu_limit": inst.cpu_limit,
                "memory_limit": inst.memory_limit,
                "number_of_workers": inst.number_of_workers,
                "gpu_limit": inst.gpu_limit,
            }
        )
    return tree


def can_see(user: User, pipeline: Pipeline) -> bool:
    """Locked pipelines are everyone's; unlocked ones their owner's (and staff's)."""
    return pipeline.locked or pipeline.owner_id == user.id or user.is_staff


async def visible_pipeline(session: AsyncSession, user: User, pipeline_id: int) -> Pipeline:
    """A pipeline the user may see.

    Raises:
        NotFound: no such pipeline, or not visible.
    """
    pipeline = await session.get(Pipeline, pipeline_id)
    if pipeline is None or not can_see(user, pipeline):
        raise NotFound("Not found.")
    return pipeline


async def update_pipeline(
    session: AsyncSession, user: User, pipeline_id: int, data: dict[str, Any]
) -> Pipeline:
    """PUT: change ``name``, ``authors``, ``category``, ``description`` or ``locked``.

    Raises:
        PermissionDenied: not the owner (or staff).
        BadRequest: a bad value. Conflict: the new name is taken.
    """
    pipeline = await visible_pipeline(session, user, pipeline_id)
    if pipeline.owner_id != user.id and not user.is_staff:
        raise PermissionDenied("only the owner may change a pipeline")
    current = PipelineSpec(
        name=pipeline.name,
        authors=pipeline.authors,
        category=pipeline.category,
        description=pipeline.description,
        locked=pipeline.locked,
        plugin_tree=[],
    ).model_dump(exclude={"plugin_tree"})
    changes = {k: data[k] for k in current if k in data}
    spec = parse_spec({**current, **changes, TREE: []})
    if spec.name != pipeline.name:
        taken = (await session.exec(select(Pipeline.id).where(Pipeline.name == spec.name))).first()
        if taken is not None:
            raise Conflict(f"pipeline {spec.name!r} exists", fields={"name": ["already exists"]})
    for key in current:
        setattr(pipeline, key, getattr(spec, key))
    pipeline.modification_date = utcnow()
    session.add(pipeline)
    await session.flush()
    return pipeline


async def delete_pipeline(
    session: AsyncSession, storage: Storage, user: User, pipeline_id: int
) -> None:
    """DELETE a pipeline (its owner or staff), with its nodes, their defaults,
    its source file and its workflows.

    The plugin instances its workflows made stay (in their feeds); they only
    lose the link to the workflow. A pipeline with a workflow still running is
    refused: the scheduler reads the workflow while it starts each instance
    (``CHRIS_WORKFLOW_*`` environment), so the run would lose it half way.

    Raises:
        NotFound: no such pipeline, or not visible to the user.
        PermissionDenied: visible (locked) but not the user's.
        Conflict: a workflow of the pipeline has an active instance.
    """
    pipeline = await visible_pipeline(session, user, pipeline_id)
    if pipeline.owner_id != user.id and not user.is_staff:
        raise PermissionDenied("only the owner may delete a pipeline")
    running = (
        await session.exec(
            select(Workflow.id)
            .join(WorkflowInstance, col(WorkflowInstance.workflow_id) == col(Workflow.id))
            .join(PluginInstance, col(PluginInstance.id) == col(WorkflowInstance.plugin_inst_id))
            .where(Workflow.pipeline_id == pipeline_id)
            .where(col(PluginInstance.status).in_(ACTIVE))
        )
    ).first()
    if running is not None:
        raise Conflict(
            f"pipeline {pipeline.name!r} has a running workflow ({running}); "
            "cancel it or wait for it to finish"
        )
    sources = (
        await session.exec(
            select(PipelineSourceFile.fname).where(PipelineSourceFile.pipeline_id == pipeline_id)
        )
    ).all()
    # workflows first: their instance rows name the pipeline's nodes
    await session.exec(delete(Workflow).where(col(Workflow.pipeline_id) == pipeline_id))
    # nodes, their defaults and source file rows go by ON DELETE CASCADE
    await session.delete(pipeline)
    await session.flush()
    for fname in sources:
        storage.local_path(fname).unlink(missing_ok=True)


async def pipings(session: AsyncSession, pipeline_id: int) -> list[PluginPiping]:
    """A pipeline's nodes in creation order (the root first)."""
    rows = await session.exec(
        select(PluginPiping)
        .where(PluginPiping.pipeline_id == pipeline_id)
        .order_by(col(PluginPiping.position))
    )
    return list(rows.all())


async def piping_defaults(
    session: AsyncSession, pipeline_id: int
) -> list[tuple[PipingDefaultParameter, PluginParameter, PluginPiping]]:
    """Every default parameter of a pipeline, node by node in parameter order."""
    rows = await session.exec(
        select(PipingDefaultParameter, PluginParameter, PluginPiping)
        .join(
            PluginParameter, col(PluginParameter.id) == col(PipingDefaultParameter.plugin_param_id)
        )
        .join(PluginPiping, col(PluginPiping.id) == col(PipingDefaultParameter.plugin_piping_id))
        .where(PluginPiping.pipeline_id == pipeline_id)
        .order_by(col(PluginPiping.position), col(PluginParameter.id))
    )
    return list(rows.all())


async def pipeline_plugins(
    session: AsyncSession, pipeline_id: int
) -> list[tuple[Plugin, PluginMeta]]:
    """The distinct plugins a pipeline uses, by id."""
    rows = await session.exec(
        select(Plugin, PluginMeta)
        .join(PluginMeta, col(PluginMeta.id) == col(Plugin.meta_id))
        .where(
            col(Plugin.id).in_(
                select(PluginPiping.plugin_id).where(PluginPiping.pipeline_id == pipeline_id)
            )
        )
        .order_by(col(Plugin.id))
    )
    return list(rows.all())


async def export_tree(session: AsyncSession, pipeline_id: int) -> list[dict[str, Any]]:
    """The ``plugin_tree`` of a pipeline, nodes in creation order (the root first)."""
    nodes = await pipings(session, pipeline_id)
    by_id = {n.id: n for n in nodes}
    defaults: dict[int, list[dict[str, Any]]] = {}
    for value, param, piping in await piping_defaults(session, pipeline_id):
        assert piping.id is not None
        defaults.setdefault(piping.id, []).append({"name": param.name, "default": value.value})
    tree: list[dict[str, Any]] = []
    for n in nodes:
        plugin = await session.get(Plugin, n.plugin_id)
        assert plugin is not None and n.id is not None
        meta = await session.get(PluginMeta, plugin.meta_id)
        assert meta is not None
        previous = by_id.get(n.previous_id) if n.previous_id is not None else None
        tree.append(
            {
                "title": n.title,
                "previous": previous.title if previous else None,
                "plugin_id": n.plugin_id,
                "plugin_name": meta.name,
                "plugin_version": plugin.version,
                "plugin_parameter_defaults": defaults.get(n.id, []),
                "cpu_limit": n.cpu_limit,
                "memory_limit": n.memory_limit,
                "number_of_workers": n.number_of_workers,
                "gpu_limit": n.gpu_limit,
            }
        )
    return tree


async def export_pipeline(session: AsyncSession, pipeline: Pipeline) -> dict[str, Any]:
    """A pipeline as ChRIS's ``json/`` endpoint gives it: ``plugin_tree`` as a
    JSON string, ready to be posted to ``pipelines/`` again (under another name)."""
    assert pipeline.id is not None
    return {
        "name": pipeline.name,
        "locked": pipeline.locked,
        "authors": pipeline.authors,
        "category": pipeline.category,
        "description": pipeline.description,
        TREE: json.dumps(await export_tree(session, pipeline.id)),
    }


#: Source file types, and the file name endings that imply them.
SOURCE_TYPES = {".yml": "yaml", ".yaml": "yaml", ".json": "json"}


def source_type(filename: str, given: str | None) -> str:
    """A source file's type: ``given`` (``yaml`` or ``json``), else from its name.

    Raises:
        BadRequest: an unknown type, or none given for a name that implies none.
    """
    if given:
        kind = given.strip().lower()
        if kind not in ("yaml", "json"):
            raise BadRequest.field("type", f"must be 'yaml' or 'json', got {given!r}")
        return kind
    for suffix, kind in SOURCE_TYPES.items():
        if filename.lower().endswith(suffix):
            return kind
    raise BadRequest.field("type", "give the type (yaml or json) of a file not named .yml/.json")


async def create_from_source(
    session: AsyncSession,
    storage: Storage,
    user: User,
    filename: str,
    content: bytes,
    kind: str | None,
) -> PipelineSourceFile:
    """Create a pipeline from an uploaded source file, kept at ``PIPELINES/<user>/<name>``.

    Raises:
        BadRequest: a bad name or type, text that does not parse, a pipeline
            that breaks a rule, or a source file of that name exists.
        Conflict: a pipeline of that name exists.
    """
    name = filename.rsplit("/", 1)[-1].strip()
    if not name or name in (".", "..") or "\\" in name or len(name) > 200:
        raise BadRequest.field("fname", f"invalid file name {filename!r}")
    fname = check_storage_path(f"PIPELINES/{user.username}/{name}", what="fname")
    taken = (
        await session.exec(select(PipelineSourceFile.id).where(PipelineSourceFile.fname == fname))
    ).first()
    if taken is not None:
        raise BadRequest.field("fname", f"a pipeline source file exists at {fname!r}")
    kind = source_type(name, kind)
    pipeline = await create_pipeline(session, user, parse_source(content, kind))
    size = await asyncio.to_thread(storage.write_fileobj, fname, io.BytesIO(content))
    assert user.id is not None and pipeline.id is not None
    row = PipelineSourceFile(
        fname=fname, fsize=size, type=kind, owner_id=user.id, pipeline_id=pipeline.id
    )
    session.add(row)
    await session.flush()
    return row
