"""The parents of plugin instances: readiness, inputs, and the join of ts instances.

A ds instance has one parent, its ``previous``. A ts instance (reference
§1.5, §1.8) has several, its ``plugininstances`` (stored, in order, in
``plugin_instance_parent``), one of which is its ``previous``. These are the
hooks the instance service and the scheduler call:

* :func:`readiness`: whether an instance may run now, must wait, or is
  cancelled because a parent failed or was cancelled (with the reason);
* :func:`children_of`: the instances that depend on one (for scheduling and
  cancellation cascades);
* :func:`instance_inputs`: the stored files sent to an instance's job: the
  previous instance's output for a ds plugin, nothing for fs and ts plugins
  (a ts job gets no input directory, §2.3);
* :func:`join_outputs`: after a ts job succeeded, CUBE puts the parents'
  filtered files into its output directory, as ChRIS does, following
  :mod:`chris_sdk.topology` (hard links where the storage allows: no data is
  copied).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chris_sdk.descriptor import PluginType
from chris_sdk.topology import join_plan, parse_filters
from sqlalchemy.orm import aliased
from sqlmodel import col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.engine import loaded_row
from cube.db.models import (
    ParameterValue,
    Plugin,
    PluginInstance,
    PluginInstanceParent,
    PluginMeta,
    PluginParameter,
    StoredFile,
)
from cube.errors import TsInputMissing
from cube.schema import InstanceStatus
from cube.storage import Storage

S = InstanceStatus

#: The parameters every ts plugin has (chrisapp adds them; so does chris_sdk).
TS_PLUGININSTANCES = "plugininstances"
TS_FILTER = "filter"
TS_GROUP_BY_INSTANCE = "groupByInstance"


async def plugin_type(session: AsyncSession, inst: PluginInstance) -> PluginType:
    """The type (fs, ds, ts) of an instance's plugin.

    Read from the session's rows when the plugin and its meta are loaded in
    it already (the scheduler building a job has them), else queried.
    """
    plugin = loaded_row(session, Plugin, inst.plugin_id)
    meta = loaded_row(session, PluginMeta, plugin.meta_id) if plugin is not None else None
    if meta is not None:
        return PluginType(meta.type)
    row = (
        await session.exec(
            select(PluginMeta.type)
            .join(Plugin, col(Plugin.meta_id) == col(PluginMeta.id))
            .where(Plugin.id == inst.plugin_id)
        )
    ).one()
    return PluginType(row)


async def ts_parent_ids(session: AsyncSession, inst_id: int) -> list[int]:
    """The parents of a ts instance, in the order of its ``plugininstances``."""
    rows = await session.exec(
        select(PluginInstanceParent.parent_id)
        .where(PluginInstanceParent.plugin_inst_id == inst_id)
        .order_by(col(PluginInstanceParent.position))
    )
    return list(rows.all())


async def record_ts_parents(session: AsyncSession, inst_id: int, parent_ids: Sequence[int]) -> None:
    """Store the parents of a new ts instance."""
    session.add_all(
        PluginInstanceParent(plugin_inst_id=inst_id, parent_id=p, position=n)
        for n, p in enumerate(parent_ids)
    )
    await session.flush()


async def parents_of(
    session: AsyncSession,
    inst: PluginInstance,
    *,
    lock: bool = False,
    ids: Sequence[int] | None = None,
) -> list[PluginInstance]:
    """Every instance ``inst`` waits for: its ts parents (in their order), else
    its previous (if any), with their current status.

    ``ids``: those parents' ids, when the caller knows them (a new instance
    has them at hand: no query for its ts parents).

    ``lock`` locks their rows (``FOR UPDATE``, PostgreSQL; SQLite's writer
    already holds the database lock), in id order so that two callers never
    wait on each other: a parent's end in flight is then waited for and seen.
    """
    assert inst.id is not None
    if ids is None:
        ids = await ts_parent_ids(session, inst.id)
        if not ids and inst.previous_id is not None:
            ids = [inst.previous_id]
    if not ids:
        return []
    q = (
        select(PluginInstance)
        .where(col(PluginInstance.id).in_(ids))
        .order_by(col(PluginInstance.id))
        # their status may have changed since they were loaded in this session
        .execution_options(populate_existing=True)
    )
    if lock:
        q = q.with_for_update()
    found = {p.id: p for p in (await session.exec(q)).all()}
    return [found[i] for i in ids if i in found]


def readiness(parents: Sequence[PluginInstance]) -> tuple[InstanceStatus, str]:
    """Whether an instance with these parents runs now (``scheduled``), waits
    (``waiting``), or never will (``cancelled``); and why, for the status note.

    ChRIS's rule (reference §1.5): a parent that ended in error or was
    cancelled cancels the child; it runs once all parents finished successfully.
    """
    failed = [p for p in parents if p.status in (S.FINISHED_WITH_ERROR, S.CANCELLED)]
    if failed:
        why = ", ".join(f"parent {p.id} is {p.status}" for p in failed)
        return S.CANCELLED, why
    pending = [p for p in parents if p.status != S.FINISHED_SUCCESSFULLY]
    if pending:
        ids = ", ".join(str(p.id) for p in pending)
        return S.WAITING, f"waiting for parent{'s' if len(pending) > 1 else ''} {ids}"
    return S.SCHEDULED, ""


async def children_of(
    session: AsyncSession, parent_id: int, *, status: str | None = None
) -> list[int]:
    """Instances depending on ``parent_id``: its ds children and the ts instances
    listing it, optionally only those in ``status``; ascending ids."""
    listed = select(PluginInstanceParent.plugin_inst_id).where(
        PluginInstanceParent.parent_id == parent_id
    )
    q = select(PluginInstance.id).where(
        or_(PluginInstance.previous_id == parent_id, col(PluginInstance.id).in_(listed))
    )
    if status is not None:
        q = q.where(PluginInstance.status == status)
    rows = await session.exec(q.order_by(col(PluginInstance.id)))
    return [i for i in rows.all() if i is not None]


async def waiting_with_parents_done(session: AsyncSession) -> list[int]:
    """Waiting instances none of whose parents is still active, in one query (a
    safety net for the scheduler's sweep: two parents ending at once in two
    workers may each miss that the other ended)."""
    active = [s.value for s in S if s.is_active]
    parent = aliased(PluginInstance)
    previous_active = (
        select(parent.id)
        .where(parent.id == PluginInstance.previous_id)
        .where(col(parent.status).in_(active))
        .exists()
    )
    ts_parent_active = (
        select(PluginInstanceParent.parent_id)
        .join(parent, col(parent.id) == col(PluginInstanceParent.parent_id))
        .where(PluginInstanceParent.plugin_inst_id == PluginInstance.id)
        .where(col(parent.status).in_(active))
        .exists()
    )
    rows = await session.exec(
        select(PluginInstance.id)
        .where(PluginInstance.status == S.WAITING.value)
        .where(~previous_active)
        .where(~ts_parent_active)
        .order_by(col(PluginInstance.id))
    )
    return [i for i in rows.all() if i is not None]


async def ts_options(session: AsyncSession, inst_id: int) -> dict[str, Any]:
    """The ts parameters given to an instance (``plugininstances``, ``filter``,
    ``groupByInstance``), with the defaults for those absent."""
    rows = await session.exec(
        select(PluginParameter.name, ParameterValue.value)
        .join(PluginParameter, col(PluginParameter.id) == col(ParameterValue.plugin_param_id))
        .where(ParameterValue.plugin_inst_id == inst_id)
    )
    given = dict(rows.all())
    return {
        TS_PLUGININSTANCES: str(given.get(TS_PLUGININSTANCES) or ""),
        TS_FILTER: str(given.get(TS_FILTER) or ""),
        TS_GROUP_BY_INSTANCE: given.get(TS_GROUP_BY_INSTANCE) is True,
    }


async def instance_inputs(session: AsyncSession, inst: PluginInstance) -> list[tuple[str, str]]:
    """The stored files an instance's job receives from its parents, as
    ``(fname, path in the job's input directory)``: the previous instance's
    output for a ds plugin, nothing for fs and ts plugins."""
    if inst.previous_id is None or await plugin_type(session, inst) is not PluginType.DS:
        return []
    # the files with their instance's output path: one query
    rows = await session.exec(
        select(StoredFile.fname, PluginInstance.output_path)
        .join(PluginInstance, col(PluginInstance.id) == col(StoredFile.plugin_inst_id))
        .where(StoredFile.plugin_inst_id == inst.previous_id)
    )
    return [(f, f.removeprefix(out + "/")) for f, out in rows.all()]


async def join_outputs(
    session: AsyncSession,
    storage: Storage,
    inst: PluginInstance,
    ptype: PluginType | None = None,
) -> list[tuple[str, int]]:
    """Join a succeeded ts instance's parent outputs into its output dir.

    Returns the joined files as ``(fname, size)`` (none for other plugin
    types; ``ptype``, the type of its plugin when the caller knows it, saves
    a query). Idempotent: a join redone after a crash replaces the same files.

    Raises:
        TsInputMissing: a parent instance or one of its files is gone (CODE05).
    """
    assert inst.id is not None
    if (ptype or await plugin_type(session, inst)) is not PluginType.TS:
        return []
    options = await ts_options(session, inst.id)
    ids = await ts_parent_ids(session, inst.id)
    filters = parse_filters(options[TS_FILTER], len(ids))  # checked when created
    parents: list[tuple[int, list[str]]] = []
    prefixes: dict[int, str] = {}
    for parent_id in ids:
        parent = await session.get(PluginInstance, parent_id)
        if parent is None:
            raise TsInputMissing(f"parent instance {parent_id} no longer exists")
        rows = await session.exec(
            select(StoredFile.fname).where(StoredFile.plugin_inst_id == parent_id)
        )
        prefixes[parent_id] = parent.output_path
        parents.append(
            (parent_id, sorted(f.removeprefix(parent.output_path + "/") for f in rows.all()))
        )
    plan = join_plan(parents, filters, options[TS_GROUP_BY_INSTANCE])
    pairs = [
        (f"{prefixes[pid]}/{rel}", f"{inst.output_path}/{dest}")
        for dest, (pid, rel) in plan.items()
    ]
    return await asyncio.to_thread(_place_all, storage, pairs)


def _place_all(storage: Storage, pairs: list[tuple[str, str]]) -> list[tuple[str, int]]:
    """Link (or copy) each stored source file to its target; blocking."""
    placed: list[tuple[str, int]] = []
    made: set[Path] = set()
    for source_name, fname in pairs:
        source, target = storage.local_path(source_name), storage.local_path(fname)
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        try:
            size = _place(source, target)
        except FileNotFoundError as exc:
            raise TsInputMissing(f"a parent's file is missing from storage: {exc}") from exc
        placed.append((fname, size))
    return placed


def _place(source: Path, target: Path) -> int:
    """Make ``target`` a hard link of ``source`` (a copy across file systems);
    returns the size. An existing ``target`` (a join redone after a crash, or
    a plugin output of that name) is replaced in one rename."""
    try:
        os.link(source, target)
        return source.stat().st_size
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise
    except OSError:
        pass  # another file system, or no links there: the slow path copies
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.part"
    try:
        try:
            os.link(source, tmp)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target.stat().st_size
