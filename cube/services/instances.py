"""Plugin instances: creation, validation, status transitions, cancellation.

Every status change goes through :func:`transition`, an UPDATE guarded by the
expected current statuses, so the API (cancel) and any scheduler worker can
race without losing a change; each accepted change is recorded with its time
in ``status_change`` (ChRIS #605).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chris_sdk.descriptor import (
    ParameterType,
    PluginType,
    parse_cpu_millicores,
    parse_memory_mib,
)
from chris_sdk.topology import parse_filters, parse_instance_ids
from sqlalchemy import insert, update
from sqlmodel import col, func, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import (
    ComputeResource,
    Feed,
    ParameterValue,
    PluginInstance,
    PluginParameter,
    StatusChange,
    StoredFile,
    User,
    utcnow,
)
from cube.errors import BadRequest, NotFound, PermissionDenied
from cube.schema import TERMINAL_STATUSES, InstanceStatus
from cube.services import feeds, placement, topology
from cube.services.files import ensure_folder
from cube.services.plugins import get_plugin, plugin_parameters
from cube.storage import check_storage_path

S = InstanceStatus

#: Body keys of an instance POST that are not plugin parameters.
STANDARD_FIELDS = frozenset(
    {
        "title",
        "previous_id",
        "compute_resource_name",
        "cpu_limit",
        "memory_limit",
        "number_of_workers",
        "gpu_limit",
    }
)
ACTIVE = [s.value for s in S if s.is_active]


async def transition(
    session: AsyncSession,
    inst_id: int,
    from_statuses: Iterable[InstanceStatus],
    to: InstanceStatus,
    *,
    note: str = "",
    running: bool = False,
    **fields: Any,
) -> bool:
    """Move an instance to ``to`` if it is in one of ``from_statuses``.

    Sets ``end_date`` on entering a terminal status (unless given), and
    marks the job for deletion at the site if it may be there; the
    scheduler sets ``start_date`` when it sees the job running at the site,
    which may be after ``started`` (submitted) when the site queues it
    (ChRIS #408): ``running`` sets it to the time of this change.
    Returns whether the change happened.
    """
    now = utcnow()
    values: dict[str, Any] = {"status": to.value, **fields}
    if running:
        values["start_date"] = now
    if to in TERMINAL_STATUSES:
        values.setdefault("end_date", now)
        # a slot is taken just before submitting: from then on the site may
        # hold a job to delete, whoever ends the instance (a worker, a cancel)
        values["remote_cleanup_pending"] = col(PluginInstance.slot_reserved_at).is_not(None)
    stmt = (
        update(PluginInstance)
        .where(col(PluginInstance.id) == inst_id)
        .where(col(PluginInstance.status).in_([s.value for s in from_statuses]))
        .values(**values)
    )
    result = await session.exec(stmt)  # type: ignore[call-overload]
    if result.rowcount != 1:
        return False
    # a plain INSERT: no ORM object to track (four of these per instance)
    await session.exec(
        insert(StatusChange).values(
            plugin_inst_id=inst_id, status=to.value, timestamp=now, note=note
        )
    )
    return True


async def visible_instance(
    session: AsyncSession, user: User | None, inst_id: int
) -> PluginInstance:
    """An instance the user may see (owner, staff, public or shared feed;
    ``None``, an anonymous caller: public feeds only).

    Raises:
        NotFound: no such instance, or not visible.
    """
    inst = await session.get(PluginInstance, inst_id)
    if inst is None:
        raise NotFound("Not found.")
    own = user is not None and inst.owner_id == user.id
    if not own and not await feeds.can_read(session, user, inst.feed_id):
        raise NotFound("Not found.")
    return inst


async def instance_status(session: AsyncSession, inst_id: int) -> str | None:
    """An instance's status alone (None: no such instance); no access check."""
    return (
        await session.exec(select(PluginInstance.status).where(col(PluginInstance.id) == inst_id))
    ).first()


async def check_path_access(session: AsyncSession, user: User, raw: str) -> list[StoredFile]:
    """The stored files under a storage path the user may read.

    Raises:
        BadRequest: bad path, nothing there, or files the user may not read.
    """
    path = check_storage_path(raw)
    rows = (
        await session.exec(
            select(StoredFile).where(
                or_(StoredFile.fname == path, col(StoredFile.fname).startswith(path + "/"))
            )
        )
    ).all()
    if not rows:
        raise BadRequest(f"no file or folder at {path!r}")
    if not user.is_staff and any(f.owner_id != user.id and not f.public for f in rows):
        raise BadRequest(f"you may not read {path!r}")
    return list(rows)


def _limit(name: str, raw: Any, low: int, high: int, parse: Any, default: int) -> int:
    try:
        value = int(parse(raw, default)) if parse else (default if raw in (None, "") else int(raw))
    except (TypeError, ValueError) as exc:
        raise BadRequest.field(name, f"invalid value {raw!r}: {exc}") from None
    if not low <= value <= high:
        raise BadRequest.field(name, f"must be between {low} and {high}, got {value}")
    return value


async def create_instance(
    session: AsyncSession, user: User, plugin_id: int, data: dict[str, Any]
) -> PluginInstance:
    """Create an instance of a plugin from a POST body and make it runnable.

    ``data`` holds the standard fields (title, previous_id, limits,
    compute_resource_name) and one key per plugin parameter name. The
    compute resource is chosen by :func:`cube.services.placement.place`; a
    named one pins the instance there.

    Raises:
        NotFound: unknown plugin or previous instance.
        BadRequest: bad parameters, limits, paths or plugin type.
    """
    plugin, meta = await get_plugin(session, plugin_id)
    ptype = PluginType(meta.type)
    params = {p.name: p for p in await plugin_parameters(session, plugin_id)}
    errors: dict[str, list[str]] = {}

    unknown = sorted(k for k in data if k not in STANDARD_FIELDS and k not in params)
    for key in unknown:
        errors[key] = [f"unknown parameter of {meta.name}"]

    ts_parents: list[PluginInstance] = []
    ts_previous: PluginInstance | None = None
    if ptype is PluginType.TS:
        # before the parameters: this fills in and normalises ``plugininstances``
        ts_previous, ts_parents = await _ts_parents(session, user, data, errors)
    values: list[tuple[PluginParameter, Any]] = []
    for name, p in params.items():
        if name not in data or data[name] is None:
            if not p.optional:
                errors[name] = ["this parameter is required"]
            continue
        try:
            value = ParameterType(p.type).coerce(data[name])
        except ValueError as exc:
            errors[name] = [str(exc)]
            continue
        if p.type in (ParameterType.PATH, ParameterType.UNEXTPATH):
            paths = [s for s in str(value).split(",") if s.strip()]
            if not paths:
                errors[name] = ["at least one path is required"]
                continue
            try:
                for one in paths:
                    await check_path_access(session, user, one)
            except BadRequest as exc:
                errors[name] = [exc.detail]
                continue
        values.append((p, value))

    previous: PluginInstance | None = None
    prev_raw = data.get("previous_id")
    if ptype is PluginType.FS:
        if prev_raw not in (None, ""):
            errors["previous_id"] = ["fs plugins start a new feed and take no previous_id"]
    elif ptype is PluginType.DS:
        if prev_raw in (None, ""):
            errors["previous_id"] = ["ds plugins need a previous_id"]
        else:
            try:
                previous = await visible_instance(session, user, int(prev_raw))
            except (TypeError, ValueError):
                errors["previous_id"] = [f"not an instance id: {prev_raw!r}"]
            except NotFound:
                errors["previous_id"] = [f"no plugin instance {prev_raw}"]
            else:
                if previous.owner_id != user.id and not user.is_staff:
                    raise PermissionDenied("you may not add to another user's feed")
    else:
        previous = ts_previous

    limits: dict[str, int] = {}
    for name, parse, low, high, default in (
        (
            "cpu_limit",
            parse_cpu_millicores,
            plugin.min_cpu_limit,
            plugin.max_cpu_limit,
            plugin.min_cpu_limit,
        ),
        (
            "memory_limit",
            parse_memory_mib,
            plugin.min_memory_limit,
            plugin.max_memory_limit,
            plugin.min_memory_limit,
        ),
        (
            "number_of_workers",
            None,
            plugin.min_number_of_workers,
            plugin.max_number_of_workers,
            plugin.min_number_of_workers,
        ),
        ("gpu_limit", None, plugin.min_gpu_limit, plugin.max_gpu_limit, plugin.min_gpu_limit),
    ):
        try:
            limits[name] = _limit(name, data.get(name), low, high, parse, default)
        except BadRequest as exc:
            errors.update(exc.fields)

    resource: ComputeResource | None = None
    wanted = str(data.get("compute_resource_name") or "")
    if "gpu_limit" in limits:  # an invalid gpu_limit is reported already
        try:
            resource = await placement.place(
                session,
                plugin_id,
                gpu_limit=limits["gpu_limit"],
                wanted=wanted,
                plugin_name=meta.name,
            )
        except BadRequest as exc:
            errors.update(exc.fields)

    title = str(data.get("title") or "")
    if len(title) > 100:
        errors["title"] = ["at most 100 characters"]
    if errors:
        raise BadRequest("invalid plugin instance", fields=errors)
    assert resource is not None and resource.id is not None and user.id is not None

    if previous is None:
        feed = Feed(name=title or meta.name, owner_id=user.id)
        session.add(feed)
        await session.flush()
        assert feed.id is not None
        feed_id = feed.id
        base = f"home/{user.username}/feeds/feed_{feed_id}"
    else:
        feed_id = previous.feed_id
        base = previous.output_path.removesuffix("/data")
    assert plugin.id is not None

    inst = PluginInstance(
        title=title,
        status=S.CREATED.value,
        previous_id=previous.id if previous else None,
        plugin_id=plugin.id,
        feed_id=feed_id,
        owner_id=user.id,
        compute_resource_id=resource.id,
        compute_resource_pinned=bool(wanted),
        summary=default_summary(),
        cpu_limit=limits["cpu_limit"],
        memory_limit=limits["memory_limit"],
        number_of_workers=limits["number_of_workers"],
        gpu_limit=limits["gpu_limit"],
    )
    session.add(inst)
    # the row first, then its parents' status (see _enter_first_status)
    await session.flush()
    assert inst.id is not None
    inst.output_path = f"{base}/{meta.name}_{inst.id}/data"
    parent_ids = [t.id for t in ts_parents if t.id is not None]
    if not parent_ids and previous is not None and previous.id is not None:
        parent_ids_or_previous = [previous.id]
    else:
        parent_ids_or_previous = parent_ids
    await _enter_first_status(session, inst, parent_ids_or_previous)
    if values:
        await session.exec(
            insert(ParameterValue),
            params=[
                {"plugin_inst_id": inst.id, "plugin_param_id": p.id, "value": value}
                for p, value in values
            ],
        )
    if parent_ids:
        await topology.record_ts_parents(session, inst.id, parent_ids)
    # the output folder gets its file browser id now, so the instance's
    # ``output_folder`` link (ChRIS v6) is there from the start
    await ensure_folder(session, inst.output_path)
    if previous is None:
        # and a new feed's folder, for the feed's ``folder`` link
        await ensure_folder(session, base)
    return inst


async def _enter_first_status(
    session: AsyncSession, inst: PluginInstance, parent_ids: list[int]
) -> InstanceStatus:
    """Schedule, park or cancel a new instance according to its parents (its
    previous; every ``plugininstances`` parent of a ts instance), recording
    ``created`` and that status.

    The parents' status is read after the instance's row was written (the
    caller flushed it), with their rows locked (see :func:`topology.parents_of`):
    a parent ending meanwhile either committed before this read, and is seen
    ended, or settles its waiting children after this transaction commits, and
    sees this one (:func:`settle_waiting`). Reading it earlier left a child
    ``waiting`` forever when its parent ended in between.

    The status is set on the row itself, not through :func:`transition`: no
    one else sees the row before this transaction commits, so there is no
    change to race with; the caller's other changes to the row (its output
    path) go out in the same UPDATE.
    """
    assert inst.id is not None
    parents: list[PluginInstance] = []
    if parent_ids:
        # the row's pending changes wait for its status, to be one UPDATE
        with session.no_autoflush:
            parents = await topology.parents_of(session, inst, lock=True, ids=parent_ids)
    target, note = topology.readiness(parents)
    now = utcnow()
    inst.status = target.value
    if target is S.CANCELLED:
        inst.error_message = note
        inst.end_date = now
    await session.exec(
        insert(StatusChange),
        params=[
            {
                "plugin_inst_id": inst.id,
                "status": S.CREATED.value,
                "timestamp": inst.creation_date,
                "note": "",
            },
            {"plugin_inst_id": inst.id, "status": target.value, "timestamp": now, "note": note},
        ],
    )
    return target


async def _ts_parents(
    session: AsyncSession, user: User, data: dict[str, Any], errors: dict[str, list[str]]
) -> tuple[PluginInstance | None, list[PluginInstance]]:
    """The previous instance and the parents of a new ts instance (reference §2.3).

    ``plugininstances`` (comma-separated ids) defaults to ``previous_id`` and
    ``previous_id`` to its first id; the previous must be among them, all
    must be in the previous instance's feed, and ``filter`` must give one
    expression per parent (or none). Problems are added to ``errors``; the
    normalised list ("3, 5" → "3,5": the job's command line is canonical)
    is written back to ``data["plugininstances"]``.
    """
    raw_ids = str(data.get(topology.TS_PLUGININSTANCES) or "").strip()
    prev_raw = data.get("previous_id")
    if not raw_ids and prev_raw in (None, ""):
        errors["previous_id"] = ["ts plugins need a previous_id or plugininstances"]
        return None, []
    try:
        ids = parse_instance_ids(raw_ids or str(prev_raw))
    except ValueError as exc:
        errors[topology.TS_PLUGININSTANCES] = [str(exc)]
        return None, []
    try:
        parse_filters(str(data.get(topology.TS_FILTER) or ""), len(ids))
    except ValueError as exc:
        errors[topology.TS_FILTER] = [str(exc)]
        return None, []
    if prev_raw in (None, ""):
        prev_id = ids[0]
    else:
        try:
            prev_id = int(prev_raw)
        except (TypeError, ValueError):
            errors["previous_id"] = [f"not an instance id: {prev_raw!r}"]
            return None, []
    if prev_id not in ids:
        errors[topology.TS_PLUGININSTANCES] = [
            f"must include the previous instance {prev_id} (got {','.join(map(str, ids))})"
        ]
        return None, []
    ordered = [prev_id, *(i for i in ids if i != prev_id)]
    found: list[PluginInstance] = []
    for parent_id in ordered:
        try:
            found.append(await visible_instance(session, user, parent_id))
        except NotFound:
            errors[topology.TS_PLUGININSTANCES] = [f"no plugin instance {parent_id}"]
            return None, []
    previous = found[0]
    if previous.owner_id != user.id and not user.is_staff:
        raise PermissionDenied("you may not add to another user's feed")
    if other := [p.id for p in found if p.feed_id != previous.feed_id]:
        errors[topology.TS_PLUGININSTANCES] = [
            f"instances {other} are not in feed {previous.feed_id} of the previous instance"
        ]
        return None, []
    # the parents keep the order given: the filters follow it
    by_id = {p.id: p for p in found}
    data[topology.TS_PLUGININSTANCES] = ",".join(str(i) for i in ids)
    return previous, [by_id[i] for i in ids]


def default_summary() -> dict[str, Any]:
    """The ChRIS summary shape (pfioh-era vocabulary kept for clients)."""
    return {
        "pushPath": {"status": False},
        "pullPath": {"status": False},
        "compute": {
            "submit": {"status": False},
            "return": {"status": False, "job_status": "", "job_logs": ""},
        },
    }


async def finish(
    session: AsyncSession,
    inst_id: int,
    from_statuses: Iterable[InstanceStatus],
    to: InstanceStatus,
    *,
    note: str = "",
    **fields: Any,
) -> list[int]:
    """End an instance (a terminal ``to``) and settle its waiting children.

    Returns the ids of children that became ``scheduled`` (none when the
    instance was not in ``from_statuses``).
    """
    if not await transition(session, inst_id, from_statuses, to, note=note, **fields):
        return []
    # the children are found by id: the ended row itself need not be read again
    return await resolve_children(session, inst_id)


async def resolve_children(session: AsyncSession, parent_id: int) -> list[int]:
    """Schedule (all their parents succeeded) or cancel (a parent failed) the
    waiting children of an instance that just ended.

    Cancellation cascades down the whole waiting subtree. Returns the ids of
    instances that became ``scheduled``.
    """
    scheduled: list[int] = []
    for child_id in await topology.children_of(session, parent_id, status=S.WAITING.value):
        scheduled += await settle_waiting(session, child_id)
    return scheduled


async def settle_waiting(session: AsyncSession, inst_id: int) -> list[int]:
    """Schedule or cancel one waiting instance whose parents may have ended;
    returns ``[inst_id]`` when it became ``scheduled``.

    The instance's row is locked before its parents are read (PostgreSQL):
    two parents of a ts instance ending at once in two workers settle it one
    after the other, and the second sees the first's parent ended.
    """
    child = (
        await session.exec(
            select(PluginInstance)
            .where(PluginInstance.id == inst_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()
    if child is None or child.status != S.WAITING:
        return []
    target, note = topology.readiness(await topology.parents_of(session, child))
    if target is S.SCHEDULED:
        if await transition(session, inst_id, [S.WAITING], S.SCHEDULED):
            return [inst_id]
    elif target is S.CANCELLED:
        await cancel_subtree(session, inst_id, note=note, error_message=note)
    return []


async def cancel_subtree(
    session: AsyncSession, inst_id: int, *, note: str = "", error_message: str | None = None
) -> list[int]:
    """Cancel an instance and every active descendant (ts instances listing
    one of them included); returns the cancelled ids. ``error_message`` is
    set on the instance itself and, for its descendants, a mention of it."""
    cancelled: list[int] = []
    frontier = [inst_id]
    seen: set[int] = set()
    while frontier:
        current = frontier.pop()
        if current in seen:
            continue
        seen.add(current)
        extra: dict[str, Any] = {}
        if error_message is not None:
            extra["error_message"] = (
                error_message
                if current == inst_id
                else f"an ancestor was cancelled: {error_message}"
            )[:1000]
        if await transition(
            session, current, [s for s in S if s.is_active], S.CANCELLED, note=note, **extra
        ):
            cancelled.append(current)
        frontier.extend(await topology.children_of(session, current))
    return cancelled


async def update_instance(
    session: AsyncSession, user: User, inst_id: int, data: dict[str, Any]
) -> tuple[PluginInstance, list[int]]:
    """PUT: change the title, or cancel with ``{"status": "cancelled"}``.

    Returns the instance and the ids that were cancelled.

    Raises:
        BadRequest: any other status, or cancelling a finished instance.
        PermissionDenied: not the owner.
    """
    inst = await visible_instance(session, user, inst_id)
    if inst.owner_id != user.id and not user.is_staff:
        raise PermissionDenied("only the owner may change an instance")
    cancelled: list[int] = []
    if "title" in data:
        title = str(data["title"] or "")
        if len(title) > 100:
            raise BadRequest.field("title", "at most 100 characters")
        inst.title = title
        session.add(inst)
    if "status" in data and data["status"] != inst.status:
        if data["status"] != S.CANCELLED.value:
            raise BadRequest.field("status", "can only be changed to 'cancelled'")
        if not S(inst.status).is_active:
            raise BadRequest.field("status", f"cannot cancel an instance that is {inst.status}")
        cancelled = await cancel_subtree(session, inst_id, note=f"cancelled by {user.username}")
    await session.flush()
    await session.refresh(inst)
    return inst, cancelled


async def status_counts(session: AsyncSession, feed_id: int) -> dict[str, int]:
    """Number of instances of a feed in each status."""
    rows = await session.exec(
        select(PluginInstance.status, func.count())
        .where(PluginInstance.feed_id == feed_id)
        .group_by(PluginInstance.status)
    )
    return {status: count for status, count in rows.all()}


async def parameter_values(
    session: AsyncSession, inst_id: int
) -> list[tuple[ParameterValue, PluginParameter]]:
    """The parameter values given to an instance, with their definitions."""
    rows = await session.exec(
        select(ParameterValue, PluginParameter)
        .join(PluginParameter, col(PluginParameter.id) == col(ParameterValue.plugin_param_id))
        .where(ParameterValue.plugin_inst_id == inst_id)
        .order_by(col(PluginParameter.id))
    )
    return list(rows.all())
