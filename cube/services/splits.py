"""Splits of a plugin instance's output (reference §1.3, ``.../splits/``).

A split posts ``filter`` (comma-separated regular expressions) on an
instance; CUBE makes one ``pl-topologicalcopy`` (ts) child of it per
expression, with ``plugininstances=<id>`` and ``filter=<expression>``, so each
child holds the files of the instance that its expression keeps. An empty
``filter`` makes one child that keeps every file, as in ChRIS. The split row
records the filter and the ids of the children it made.

Only the owner of the instance's feed (or staff) may split it: a split adds
instances to the feed. Every child is made in the caller's transaction, so a
bad expression or a rejected child leaves nothing behind.
"""

from __future__ import annotations

from typing import Any

from chris_sdk.descriptor import PluginType
from chris_sdk.topology import parse_filters
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import Plugin, PluginInstance, PluginInstanceSplit, PluginMeta, User
from cube.errors import BadRequest, NotFound
from cube.services import feeds
from cube.services import instances as isvc
from cube.services.topology import TS_FILTER, TS_PLUGININSTANCES

#: The ts plugin a split instantiates (ChRIS's name for it).
SPLIT_PLUGIN = "pl-topologicalcopy"
#: Most children one split may make (each is a job at a compute site).
MAX_SPLIT_CHILDREN = 100
#: Longest ``filter`` accepted (the split row's column).
MAX_FILTER_CHARS = 600


async def split_plugin(session: AsyncSession) -> Plugin:
    """The newest registered version of ``pl-topologicalcopy``.

    Raises:
        BadRequest: it is not registered, or not as a ts plugin.
    """
    found = (
        await session.exec(
            select(Plugin, PluginMeta)
            .join(PluginMeta, col(PluginMeta.id) == col(Plugin.meta_id))
            .where(PluginMeta.name == SPLIT_PLUGIN)
            .order_by(col(Plugin.id).desc())
        )
    ).first()
    if found is None:
        raise BadRequest(f"splits need the ts plugin {SPLIT_PLUGIN}; an admin must register it")
    plugin, meta = found
    if meta.type != PluginType.TS.value:
        raise BadRequest(f"{SPLIT_PLUGIN} is registered as a {meta.type} plugin, not ts")
    return plugin  # type: ignore[no-any-return]


def split_filters(raw: Any) -> list[str]:
    """The expressions of a split's ``filter``, each checked to compile.

    Raises:
        BadRequest: not a string, too long, too many expressions, or one that
            is not a regular expression.
    """
    if raw is None:
        raw = ""
    if not isinstance(raw, str):
        raise BadRequest.field("filter", "comma-separated regular expressions (a string)")
    if len(raw) > MAX_FILTER_CHARS:
        raise BadRequest.field("filter", f"at most {MAX_FILTER_CHARS} characters")
    # spaces around the commas are not part of an expression (ChRIS strips them too)
    parts = [part.strip() for part in raw.split(",")]
    if len(parts) > MAX_SPLIT_CHILDREN:
        raise BadRequest.field("filter", f"at most {MAX_SPLIT_CHILDREN} expressions")
    try:
        parse_filters(",".join(parts), len(parts))
    except ValueError as exc:
        raise BadRequest.field("filter", str(exc)) from exc
    return parts


async def create_split(
    session: AsyncSession, user: User, inst_id: int, data: dict[str, Any]
) -> PluginInstanceSplit:
    """Split instance ``inst_id``: one ts child per expression of ``data["filter"]``,
    on ``data["compute_resource_name"]`` when given. The caller commits and
    wakes the scheduler.

    Raises:
        NotFound: no such instance, or not visible to the user.
        PermissionDenied: visible (public or shared) but not the user's feed.
        BadRequest: a bad ``filter``, ``pl-topologicalcopy`` missing, or a
            child refused (e.g. an unknown compute resource).
    """
    inst = await isvc.visible_instance(session, user, inst_id)
    await feeds.owned_feed(session, user, inst.feed_id)
    expressions = split_filters(data.get("filter"))
    plugin = await split_plugin(session)
    assert plugin.id is not None and inst.id is not None
    common: dict[str, Any] = {"previous_id": inst.id, TS_PLUGININSTANCES: str(inst.id)}
    resource = data.get("compute_resource_name")
    if resource not in (None, ""):
        common["compute_resource_name"] = resource
    children: list[PluginInstance] = []
    for expression in expressions:
        children.append(
            await isvc.create_instance(session, user, plugin.id, {**common, TS_FILTER: expression})
        )
    split = PluginInstanceSplit(
        plugin_inst_id=inst.id,
        filter=",".join(expressions),
        created_plugin_inst_ids=",".join(str(c.id) for c in children),
    )
    session.add(split)
    await session.flush()
    return split


async def splits_of(
    session: AsyncSession, user: User | None, inst_id: int
) -> tuple[PluginInstance, Any]:
    """An instance the user may see, and the query of its splits.

    Raises:
        NotFound: no such instance, or not visible.
    """
    inst = await isvc.visible_instance(session, user, inst_id)
    return inst, select(PluginInstanceSplit).where(PluginInstanceSplit.plugin_inst_id == inst.id)


async def visible_split(
    session: AsyncSession, user: User | None, split_id: int
) -> PluginInstanceSplit:
    """A split of an instance the user may see.

    Raises:
        NotFound: no such split, or its instance not visible.
    """
    split = await session.get(PluginInstanceSplit, split_id)
    if split is None:
        raise NotFound("Not found.")
    await isvc.visible_instance(session, user, split.plugin_inst_id)
    return split
