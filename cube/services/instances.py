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
from sqlalchemy import update
from sqlmodel import col, func, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from cube.db.models import (
    ComputeResource,
    Feed,
    ParameterValue,
    Plugin,
    PluginInstance,
    PluginMeta,
    PluginParameter,
    StatusChange,
    StoredFile,
    User,
    utcnow,
)
from cube.errors import BadRequest, NotFound, PermissionDenied
from cube.schema import TERMINAL_STATUSES, InstanceStatus
from cube.services import placement
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
    **fields: Any,
) -> bool:
    """Move an instance to ``to`` if it is in one of ``from_statuses``.

    Sets ``end_date`` on entering a terminal status (unless given), and
    marks the job for deletion at the site if it may be there; the
    scheduler sets ``start_date`` when it sees the job running at the site,
    which may be after ``started`` (submitted) when the site queues it
    (ChRIS #408). Returns whether the change happened.
    """
    now = utcnow()
    values: dict[str, Any] = {"status": to.value, **fields}
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
    session.add(StatusChange(plugin_inst_id=inst_id, status=to.value, timestamp=now, note=note))
    await session.flush()
    return True


async def visible_instance(session: AsyncSession, user: User, inst_id: int) -> PluginInstance:
    """An instance the user may see (owner, staff, or public feed).

    Raises:
        NotFound: no such instance, or not visible.
    """
    inst = await session.get(PluginInstance, inst_id)
    if inst is None:
        raise NotFound("Not found.")
    if inst.owner_id != user.id and not user.is_staff:
        feed = await session.get(Feed, inst.feed_id)
        if feed is None or not feed.public:
            raise NotFound("Not found.")
    return inst


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
        errors["plugin"] = ["ts plugins are not supported yet"]

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
    else:
        feed_row = await session.get(Feed, previous.feed_id)
        assert feed_row is not None
        feed = feed_row
    assert feed.id is not None and plugin.id is not None

    inst = PluginInstance(
        title=title,
        status=S.CREATED.value,
        previous_id=previous.id if previous else None,
        plugin_id=plugin.id,
        feed_id=feed.id,
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
    await session.flush()
    assert inst.id is not None
    session.add(StatusChange(plugin_inst_id=inst.id, status=S.CREATED.value))
    if previous is None:
        owner = await session.get(User, feed.owner_id)
        assert owner is not None
        base = f"home/{owner.username}/feeds/feed_{feed.id}"
    else:
        base = previous.output_path.removesuffix("/data")
    inst.output_path = f"{base}/{meta.name}_{inst.id}/data"
    for p, value in values:
        assert p.id is not None
        session.add(ParameterValue(plugin_inst_id=inst.id, plugin_param_id=p.id, value=value))
    await session.flush()
    await run_if_ready(session, inst, previous)
    await session.refresh(inst)
    return inst


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


async def run_if_ready(
    session: AsyncSession, inst: PluginInstance, previous: PluginInstance | None
) -> InstanceStatus:
    """Schedule, park or cancel a ``created`` instance according to its parent.

    The parent's status is read again here, after the instance's row was
    written, and locked (PostgreSQL; on SQLite the write already holds the
    database lock): a parent ending meanwhile either committed before this
    read, and is seen ended, or settles its waiting children after this
    transaction commits, and sees this one. Reading it earlier left a child
    ``waiting`` forever when its parent ended in between.
    """
    assert inst.id is not None
    status = S.FINISHED_SUCCESSFULLY.value
    if previous is not None:
        status = (
            await session.exec(
                select(PluginInstance.status)
                .where(PluginInstance.id == previous.id)
                .with_for_update()
            )
        ).one()
    if status == S.FINISHED_SUCCESSFULLY:
        target = S.SCHEDULED
    elif S(status).is_active:
        target = S.WAITING
    else:
        target = S.CANCELLED
    note = f"parent {previous.id} is {status}" if previous else ""
    await transition(session, inst.id, [S.CREATED], target, note=note)
    return target


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
    inst = await session.get(PluginInstance, inst_id)
    assert inst is not None
    await session.refresh(inst)
    return await resolve_children(session, inst)


async def resolve_children(session: AsyncSession, parent: PluginInstance) -> list[int]:
    """Schedule (parent succeeded) or cancel (parent failed) its waiting children.

    Cancellation cascades down the whole waiting subtree. Returns the ids of
    instances that became ``scheduled``.
    """
    assert parent.id is not None
    success = parent.status == S.FINISHED_SUCCESSFULLY
    children = (
        await session.exec(
            select(PluginInstance.id).where(
                PluginInstance.previous_id == parent.id, PluginInstance.status == S.WAITING.value
            )
        )
    ).all()
    scheduled: list[int] = []
    for child_id in children:
        assert child_id is not None
        if success:
            if await transition(session, child_id, [S.WAITING], S.SCHEDULED):
                scheduled.append(child_id)
        else:
            await cancel_subtree(session, child_id, note=f"parent {parent.id} is {parent.status}")
    return scheduled


async def cancel_subtree(session: AsyncSession, inst_id: int, *, note: str = "") -> list[int]:
    """Cancel an instance and every active descendant; returns the cancelled ids."""
    cancelled: list[int] = []
    frontier = [inst_id]
    while frontier:
        current = frontier.pop()
        if await transition(
            session, current, [s for s in S if s.is_active], S.CANCELLED, note=note
        ):
            cancelled.append(current)
        kids = (
            await session.exec(
                select(PluginInstance.id).where(PluginInstance.previous_id == current)
            )
        ).all()
        frontier.extend(k for k in kids if k is not None)
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


async def instance_context(
    session: AsyncSession, inst: PluginInstance
) -> tuple[Plugin, PluginMeta, ComputeResource, User]:
    """The plugin, meta, compute resource and owner of an instance."""
    plugin, meta = await get_plugin(session, inst.plugin_id)
    resource = await session.get(ComputeResource, inst.compute_resource_id)
    owner = await session.get(User, inst.owner_id)
    assert resource is not None and owner is not None
    return plugin, meta, resource, owner


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
